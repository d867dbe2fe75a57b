"""Arrays of the CPU backend: numpy views onto blocks of the backend's memory pool (`GPUArrayModule` of the contract).

Every array has the interface of `PuzzleLib.Backend.gpuarray.GPUArray` (SPEC section 2), the same as the CUDA
backend's, so module code runs unchanged on both.
"""

import math
import operator

import numpy as np

from PuzzleLib.Backend import DLPack, gpuarray
from PuzzleLib.Backend.MemoryPool import MemoryPool, NumpyAllocator

memoryPool = MemoryPool(NumpyAllocator())


class GPUArray(gpuarray.GPUArray):
    """C-contiguous array in the CPU backend's pool memory (a numpy view onto a pool block).

    ``GPUArray(ndarray, block, ptr=None)``: `block` is what keeps the memory of `ndarray` alive, and every view shares
    it: a pool `Block`, or, for an array imported with ``from_dlpack``, the `ForeignHostMemory` holding the producer's
    tensor; `ptr` is the address of the first element when the caller knows it (else numpy is asked, which costs
    microseconds).
    """

    __array_priority__ = -1

    def __init__(self, ndarray, block, ptr=None):
        self._ndarray = ndarray
        self._block = block
        self._ptr = ndarray.ctypes.data if ptr is None else ptr

    # NOTE: the CPU `Backend`, set by the package `PuzzleLib.Backend.Cpu` once it has bundled this module with its
    # primitives (a class attribute: the front modules read it on every call)
    backend = None

    # NOTE: the numpy view's attributes through C getters (no Python frame per read: the front modules read shapes and
    # dtypes many times a call)
    shape = property(operator.attrgetter("_ndarray.shape"), doc="tuple of int")
    dtype = property(operator.attrgetter("_ndarray.dtype"), doc="numpy.dtype")
    size = property(operator.attrgetter("_ndarray.size"), doc="elements")
    nbytes = property(operator.attrgetter("_ndarray.nbytes"), doc="bytes")
    ndim = property(operator.attrgetter("_ndarray.ndim"), doc="dimensions")
    strides = property(operator.attrgetter("_ndarray.strides"), doc="bytes per step along each axis")

    ptr = property(operator.attrgetter("_ptr"), doc="address of the first element, fixed for the array's life")

    def get(self, out=None):
        """Returns a new host ndarray with the contents, or copies them into `out` (a C-contiguous host ndarray of this
        shape and dtype, such as one from `hostBuffer`) and returns it.

        Raises:
            ValueError: `out` of another shape or dtype, or not C-contiguous.
        """
        if out is None:
            return self._ndarray.copy()
        gpuarray.checkHostOut(self, out)
        np.copyto(out, self._ndarray)
        return out

    def fill(self, value):
        """Sets every element to `value`; returns self."""
        self._ndarray.fill(value)
        return self

    def copy(self):
        """Returns a new array (a new pool block) with the same contents."""
        # NOTE: this array's shape and dtype need no checks
        out = poolArray(self._ndarray.shape, self._ndarray.dtype, self._ndarray.nbytes)
        np.copyto(out._ndarray, self._ndarray)
        return out

    def __dlpack_device__(self):
        """``(DLDeviceType.kDLCPU, 0)``: the array is host memory (the DLPack protocol of the Python array API
        standard)."""
        return (DLPack.DLDeviceType.kDLCPU, 0)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """A DLPack capsule sharing this array's memory, for ``torch.from_dlpack``, ``np.from_dlpack`` and any other
        consumer of the Python array API standard's protocol (the structures are dlpack.h v1.0's).

        The capsule is ``"dltensor_versioned"`` when `max_version` is at least (1, 0), else ``"dltensor"``; it keeps
        this array, and so its pool block, alive until the consumer's tensor is gone. Any shape (0-d and empty too);
        dtypes bool, int8..64, uint8..64, float16/32/64, complex64/128.

        Args:
            stream: must be None: host memory has no streams.
            max_version (tuple or None): the highest DLPack version the consumer supports.
            dl_device (tuple or None): must be ``(kDLCPU, 0)`` when given.
            copy (bool or None): True exports a copy; False and None share the memory (never a copy).

        Raises:
            ValueError: a `stream` other than None, a malformed `max_version` or `dl_device`.
            BufferError: `dl_device` names another device, or the dtype has no DLPack code (long double).
        """
        if stream is not None:
            raise ValueError("a CPU GPUArray's __dlpack__ expects stream None (host memory has no streams); got %r"
                             % (stream,))
        return DLPack.export(self, self.__dlpack_device__(), max_version=max_version, dl_device=dl_device, copy=copy)

    def reshape(self, *shape):
        """Returns a view of another shape (one dimension may be -1); see `PuzzleLib.Backend.gpuarray.GPUArray.reshape`,
        which raises the errors."""
        # NOTE: the common case, non-negative Python ints that keep the size, is one numpy call
        dims = shape[0] if len(shape) == 1 and type(shape[0]) is tuple else shape
        for dim in dims:
            if type(dim) is not int or dim < 0:
                break
        else:
            ndarray = self._ndarray
            if math.prod(dims) == ndarray.size:
                return GPUArray(ndarray.reshape(dims), self._block, self._ptr)
        return super().reshape(*shape)

    def _view(self, shape, offset):
        count = gpuarray.elementCount(shape)
        if offset == 0 and count == self._ndarray.size:
            # NOTE: a reshape of the whole array, the common case, is one numpy call
            return GPUArray(self._ndarray.reshape(shape), self._block, self._ptr)
        start = offset // self.dtype.itemsize
        flat = self._ndarray.reshape(-1)[start : start + count]
        return GPUArray(flat.reshape(shape), self._block, self._ptr + offset)

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
    return poolArray(*gpuarray.checkedAllocation(shape, dtype))


def emptyLike(ary):
    """`Contract.GPUArrayModule.emptyLike`: an uninitialized array of the shape and dtype of `ary` (a CPU GPUArray)."""
    ndarray = ary._ndarray
    block = memoryPool.allocate(ndarray.nbytes)
    return GPUArray(np.ndarray(ndarray.shape, ndarray.dtype, block.raw), block, block.ptr)


def poolArray(shape, dtype, nbytes):
    """A new array in a pool block, of a checked `shape` (tuple of ints) and `dtype` (numpy dtype) of `nbytes`."""
    block = memoryPool.allocate(nbytes)
    # NOTE: the array starts the block's buffer, which is at least nbytes long (its size class)
    return GPUArray(np.ndarray(shape, dtype, block.raw), block, block.ptr)


def hostBuffer(shape, dtype=np.float32):
    """A host ndarray for transfers with `GPUArray.get(out=...)`; plain numpy memory here, as the arrays are host
    memory already (the CUDA backend's is page-locked)."""
    return np.empty(shape, dtype)


class Backup:
    """`Contract.GPUArrayModule.Backup`: plain numpy copies, outside the pool (host memory either way, and a snapshot's
    copies live for one call, where a pool block costs more Python than the copies themselves)."""

    def __init__(self, arrays):
        self.saved = [(ary, ary._ndarray.copy()) for ary in arrays]

    def restore(self):
        for ary, saved in self.saved:
            np.copyto(ary._ndarray, saved)


class HostMirror:
    """`Contract.GPUArrayModule.HostMirror`: the array's memory is host memory, so its mirror is the array itself,
    always up to date (a view, no copy), and a kernel needs no `target`."""

    target = None

    def __init__(self, ary):
        self.view = hostView(ary)

    def refresh(self):
        pass

    def latest(self):
        return self.view


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


class ForeignHostMemory:
    """Host memory another library owns, as numpy sees it: numpy makes this object the base of the ndarray it builds
    from ``__array_interface__``, so every numpy view of an imported array keeps `owner` (and the producer's memory)
    alive."""

    def __init__(self, ptr, shape, dtype, owner):
        self.owner = owner
        self.__array_interface__ = {
            "version": 3, "shape": shape, "typestr": dtype.str, "data": (ptr, False), "strides": None,
        }


def foreignArray(ptr, shape, dtype, owner):
    """A GPUArray of `shape` and `dtype` over C-contiguous host memory at `ptr` that `owner` keeps alive (an imported
    array: it holds no pool block; it and its views keep `owner` instead)."""
    memory = ForeignHostMemory(ptr, shape, np.dtype(dtype), owner)
    return GPUArray(np.asarray(memory), memory)


def from_dlpack(obj):
    """A CPU GPUArray sharing the host memory of `obj` (see `PuzzleLib.Backend.gpuarray.from_dlpack`).

    Raises:
        BufferError: the memory of `obj` is not host memory; and the errors of ``gpuarray.from_dlpack``.
    """
    return DLPack.fromDLPack(obj, "cpu")
