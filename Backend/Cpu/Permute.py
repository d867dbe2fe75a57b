"""Axis permutation (generalized transpose) on the CPU backend, over numpy. Twin of `Backend.Cuda.Permute`.

Used only by `Backend.Dnn` for batch normalization over axes whose kept axes are not adjacent (the one case the
``(outer, maps, inner)`` view cannot express without moving data).
"""

import numpy as np

from PuzzleLib.Backend.Cpu.GPUArray import empty, hostView


def permutedShape(shape, perm):
    return tuple(shape[axis] for axis in perm)


def permute(src, perm, out=None):
    """Returns ``numpy.transpose(src, perm)`` as a new C-contiguous array (from the pool) or writes it into `out`.

    Args:
        src (GPUArray): any dtype.
        perm (tuple of int): a permutation of ``range(src.ndim)``; output axis i is source axis ``perm[i]``.
        out (GPUArray or None): destination of the permuted shape and src's dtype; must not overlap `src`.

    Raises:
        ValueError: when `perm` is not a permutation of the source's axes or `out` does not fit.
    """
    perm = tuple(int(axis) for axis in perm)
    if sorted(perm) != list(range(src.ndim)):
        raise ValueError("perm must be a permutation of range(%d); got %s" % (src.ndim, perm))

    shape = permutedShape(src.shape, perm)
    if out is None:
        out = empty(shape, src.dtype)
    elif out.shape != shape or out.dtype != src.dtype:
        raise ValueError(
            "out must have shape %s and dtype %s; got shape %s and dtype %s" % (shape, src.dtype, out.shape, out.dtype)
        )

    np.copyto(hostView(out), np.transpose(hostView(src), perm))
    return out
