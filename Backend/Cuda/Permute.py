"""Axis permutation of the CUDA backend (kernels in ``Kernels/Permute.cu``). Twin of `Backend.Cpu.Permute`;
`Backend.Permute` checks the arguments and allocates the output.

One thread per output element gathers from the source, so the output is written coalesced; this path is the fallback
of `Backend.Dnn` for axes whose kept axes are not adjacent, not a tuned transpose.
"""

import struct

import numpy as np

from PuzzleLib.Backend.Cuda.GPUArray import GPUArray
from PuzzleLib.Backend.Cuda.SourceModule import Kernels

MAX_DIMS = 8
BLOCK_SIZE = 256
MAX_BLOCKS = 65535

kernels = Kernels("Permute.cu", defines={"PERMUTE_MAX_DIMS": MAX_DIMS, "PERMUTE_BLOCK_SIZE": BLOCK_SIZE})

# src, dst, size, then struct PermuteShape by value: ndim, outDims[MAX_DIMS], srcStrides[MAX_DIMS] (all int64)
argTypes = "PPq" + "q" * (1 + 2 * MAX_DIMS)
assert struct.calcsize(argTypes) == 8 * (3 + 1 + 2 * MAX_DIMS)


def collapse(shape, perm):
    """Merges output axes that read consecutive source axes in order, and drops axes of size 1, so that more than
    `MAX_DIMS` axes rarely reach the kernel. Returns (outDims, srcStrides) in elements."""
    strides = [1] * len(shape)
    for axis in range(len(shape) - 2, -1, -1):
        strides[axis] = strides[axis + 1] * shape[axis + 1]

    dims, srcStrides = [], []
    for axis in perm:
        dim, stride = shape[axis], strides[axis]
        if dim == 1:
            continue
        if dims and srcStrides[-1] == stride * dim:
            dims[-1] *= dim
            srcStrides[-1] = stride
        else:
            dims.append(dim)
            srcStrides.append(stride)
    return dims or [1], srcStrides or [1]


def permute(src, perm, out):
    """out = numpy.transpose(src, perm), for a valid permutation, a non-empty `src` and an `out` of the permuted shape
    and src's dtype.

    Raises:
        TypeError: `src` is not a CUDA GPUArray, or its element size is not 2, 4 or 8.
        ValueError: more than `MAX_DIMS` axes remain after merging.
    """
    if not isinstance(src, GPUArray):
        raise TypeError("expected a CUDA GPUArray; got %s" % type(src).__name__)
    itemsize = np.dtype(src.dtype).itemsize
    if itemsize not in (2, 4, 8):
        raise TypeError("permute supports elements of 2, 4 or 8 bytes; got %s" % src.dtype)

    size = int(src.size)
    dims, srcStrides = collapse(src.shape, perm)
    if len(dims) > MAX_DIMS:
        raise ValueError("permute supports at most %d non-trivial axes after merging; got %d" % (MAX_DIMS, len(dims)))
    pad = [1] * (MAX_DIMS - len(dims))

    grid = (max(1, min(-(-size // BLOCK_SIZE), MAX_BLOCKS)), 1, 1)
    func = kernels.get("permute_b%d" % itemsize, argTypes)
    func.prepared_call(grid, (BLOCK_SIZE, 1, 1), src.ptr, out.ptr, size, len(dims), *(dims + pad), *(srcStrides + pad))
    return out
