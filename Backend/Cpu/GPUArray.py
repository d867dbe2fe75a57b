"""Arrays of the CPU backend: numpy views onto blocks of the backend's memory pool (`GPUArrayModule` of the contract).

Every array has the interface of `PuzzleLib.Backend.gpuarray.GPUArray` (SPEC section 2), the same as the CUDA
backend's, so module code runs unchanged on both.
"""

import numpy as np

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Backend.MemoryPool import MemoryPool, NumpyAllocator

memoryPool = MemoryPool(NumpyAllocator())


class GPUArray(gpuarray.GPUArray):
    """C-contiguous array in the CPU backend's pool memory (a numpy view onto a pool block)."""

    __array_priority__ = -1

    def __init__(self, ndarray, block):
        self._ndarray = ndarray
        self._block = block

    # NOTE: the CPU `Backend`, set by the package `PuzzleLib.Backend.Cpu` once it has bundled this module with its
    # primitives (a class attribute: the front modules read it on every call)
    backend = None

    @property
    def shape(self):
        return self._ndarray.shape

    @property
    def dtype(self):
        return self._ndarray.dtype

    @property
    def size(self):
        return self._ndarray.size

    @property
    def nbytes(self):
        return self._ndarray.nbytes

    @property
    def ndim(self):
        return self._ndarray.ndim

    @property
    def strides(self):
        return self._ndarray.strides

    @property
    def ptr(self):
        return self._ndarray.ctypes.data

    def get(self):
        """Returns a new host ndarray with the contents."""
        return self._ndarray.copy()

    def fill(self, value):
        """Sets every element to `value`; returns self."""
        self._ndarray.fill(value)
        return self

    def copy(self):
        """Returns a new array (a new pool block) with the same contents."""
        out = empty(self.shape, self.dtype)
        np.copyto(out._ndarray, self._ndarray)
        return out

    def _view(self, shape, offset):
        start = offset // self.dtype.itemsize
        flat = self._ndarray.reshape(-1)[start : start + gpuarray.elementCount(shape)]
        return GPUArray(flat.reshape(shape), self._block)

    def _copyFrom(self, other):
        np.copyto(self._ndarray, other._ndarray)

    def _setFromHost(self, ary):
        np.copyto(self._ndarray, ary)


def hostView(ary):
    """Backend-internal: the numpy view of a CPU GPUArray, for the CPU primitives. Not part of the public interface."""
    assert isinstance(ary, GPUArray), type(ary)
    return ary._ndarray


def empty(shape, dtype=np.float32):
    """Returns an uninitialized array of `shape` and `dtype` from the memory pool.

    Raises:
        TypeError, ValueError, MemoryError: as `PuzzleLib.Backend.gpuarray.checkedAllocation`; MemoryError also when the
            pool cannot serve the bytes.
    """
    shape, dtype, nbytes = gpuarray.checkedAllocation(shape, dtype)
    block = memoryPool.allocate(nbytes)
    return GPUArray(block.raw[:nbytes].view(dtype).reshape(shape), block)


def zeros(shape, dtype=np.float32):
    """Returns an array of zeros of `shape` and `dtype` from the memory pool."""
    return empty(shape, dtype).fill(0)


def to_gpu(ary):
    """Copies a host array (any layout) into a new C-contiguous GPUArray of the same shape and dtype.

    Raises:
        TypeError: as `PuzzleLib.Backend.gpuarray.hostArray` (a GPUArray, or a host array that is not numeric).
    """
    ary = gpuarray.hostArray(ary)
    out = empty(ary.shape, ary.dtype)
    np.copyto(out._ndarray, ary)
    return out
