"""Axis permutation (a generalized transpose into new memory), on the backend of the array it is given.

Used by `Backend.Dnn` only for batch normalization over axes whose kept axes are not adjacent, the one case the
``(outer, maps, inner)`` view cannot express without moving data. This file checks the arguments and allocates the
output once for both backends; `Backend.Cpu.Permute` and `Backend.Cuda.Permute` only move the data.
"""

import numpy as np

from PuzzleLib.Backend.Checks import checkArray, commonBackend


def permutedShape(shape, perm):
    return tuple(shape[axis] for axis in perm)


def permute(src, perm, out=None):
    """Returns ``numpy.transpose(src, perm)`` as a new C-contiguous array (from the pool), or writes it into `out`.

    Args:
        src (GPUArray): any dtype on the CPU backend; elements of 2, 4 or 8 bytes on CUDA.
        perm (tuple of int): a permutation of ``range(src.ndim)``; output axis i is source axis ``perm[i]``.
        out (GPUArray or None): destination of the permuted shape and src's dtype; must not overlap `src`.

    Raises:
        TypeError: `src` or `out` is not a GPUArray, or they live on two backends.
        ValueError: `perm` is not a permutation of the source's axes, `out` has another shape or dtype, or (CUDA) the
            elements are not of 2, 4 or 8 bytes.
    """
    backend = commonBackend(src=src, out=out)
    itemSizes = backend.permute.itemSizes
    if itemSizes is not None and src.dtype.itemsize not in itemSizes:
        raise ValueError(
            "permute on the %s backend moves elements of %s bytes; got %s (%d bytes)"
            % (backend.name, ", ".join(map(str, itemSizes)), src.dtype, src.dtype.itemsize)
        )
    perm = tuple(int(axis) for axis in perm)
    if sorted(perm) != list(range(src.ndim)):
        raise ValueError("perm must be a permutation of range(%d); got %s" % (src.ndim, perm))

    shape = permutedShape(src.shape, perm)
    if out is None:
        out = backend.gpuarray.empty(shape, src.dtype)
    else:
        checkArray("out", out, dtypes=(np.dtype(src.dtype),), shape=shape)

    if src.size > 0:
        backend.permute.permute(src, perm, out)
    return out
