"""Axis permutation of the CUDA backend (`PermutePrimitives` of `Backend.Contract`), with the kernels of
``Kernels/Permute.cu``. Twin of `Backend.Cpu.Permute`; `Backend.Permute` checks the arguments and allocates the output.

One thread per output element gathers from the source, so the output is written coalesced; this path is the fallback
of batch normalization for axes whose kept axes are not adjacent, not a tuned transpose.
"""

from PuzzleLib.Backend.Cuda.Launch import KernelSource, grid1d
from PuzzleLib.Kernels import Permute as declared

itemSizes = declared.itemSizes

kernels = KernelSource(declared)


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
    """Raises ValueError when more than ``MAX_DIMS`` axes remain after merging (the kernel's fixed shape)."""
    dims, srcStrides = collapse(src.shape, perm)
    if len(dims) > declared.MAX_DIMS:
        raise ValueError(
            "permute supports at most %d non-trivial axes after merging; got %d" % (declared.MAX_DIMS, len(dims))
        )
    pad = [1] * (declared.MAX_DIMS - len(dims))

    size = int(src.size)
    grid, block = grid1d(size, declared.BLOCK_SIZE)
    shape = {"ndim": len(dims), "outDims": dims + pad, "srcStrides": srcStrides + pad}
    kernels.launch(declared.permute, grid, block, {"itemsize": src.dtype.itemsize}, src=src, dst=out, size=size,
                   shape=shape)
