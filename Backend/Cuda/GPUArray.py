"""Arrays of the CUDA backend (`GPUArrayModule` of the contract): `pycuda.gpuarray.GPUArray` whose memory comes from
the project's memory pool.

Every allocation, including those pycuda makes on its own (``copy()``, arithmetic results), goes through
`memoryPool`: the array's ``allocator`` wraps each pool `Block` in a `PoolPointer`, a `pycuda.driver.PointerHolderBase`
that pycuda accepts wherever it expects device memory and that keeps the block in use until the array dies.
Views (`reshape`, `ravel`, first-axis slices) are arrays of this class that share the base's memory and keep the base
alive. Only C-contiguous arrays exist here. The interface is `PuzzleLib.Backend.gpuarray.GPUArray` (SPEC section 2),
the CPU backend's too.
"""

import numpy as np
import pycuda.driver as cuda
import pycuda.gpuarray

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Backend.Cuda import Driver
from PuzzleLib.Backend.MemoryPool import MemoryPool


class CudaAllocator:
    """Raw allocator of the pool: device memory from ``cuda.mem_alloc`` (the first one takes the device).

    Raises:
        MemoryError: from `allocate` when the device is out of memory (the pool then frees its held blocks and retries).
    """

    name = "cuda.mem_alloc"

    @staticmethod
    def allocate(nbytes):
        Driver.context()
        try:
            return cuda.mem_alloc(max(int(nbytes), 1))
        except cuda.MemoryError as e:
            raise MemoryError("cuda.mem_alloc(%d) failed: %s" % (nbytes, e)) from None
        except cuda.Error as e:
            if "out of memory" in str(e).lower():
                raise MemoryError("cuda.mem_alloc(%d) failed: %s" % (nbytes, e)) from None
            raise

    @staticmethod
    def free(raw):
        raw.free()

    @staticmethod
    def address(raw):
        return int(raw)

    @staticmethod
    def fill(raw, byte, nbytes):
        cuda.memset_d8(int(raw), byte, nbytes)


memoryPool = MemoryPool(CudaAllocator())
Driver.onExit(memoryPool.freeHeld)


class PoolPointer(cuda.PointerHolderBase):
    """Device pointer pycuda understands, owning a pool `Block` until garbage-collected."""

    def __init__(self, block):
        super().__init__()
        self.block = block

    def get_pointer(self):
        return self.block.ptr

    def __int__(self):
        return self.block.ptr

    def __index__(self):
        return self.block.ptr


def poolAllocator(nbytes):
    return PoolPointer(memoryPool.allocate(int(nbytes)))


class GPUArray(gpuarray.GPUArray, pycuda.gpuarray.GPUArray):
    """C-contiguous device array in pool memory.

    The shared base comes first, so its interface (``set``, ``reshape``, ``ravel``, indexing, printing) wins over
    pycuda's; pycuda's ``__init__`` and arithmetic stay available.
    """

    def __init__(self, shape, dtype=np.float32, allocator=None, base=None, gpudata=None, strides=None, order="C"):
        # NOTE: pycuda's signature, so that pycuda's own methods building ``self.__class__(...)`` keep working
        shape, dtype = gpuarray.normalizeShape(shape), np.dtype(dtype)
        contiguous = pycuda.gpuarray._c_contiguous_strides(dtype.itemsize, shape)
        if order != "C" or (strides is not None and tuple(strides) != tuple(contiguous) and len(shape) > 0):
            raise ValueError("GPUArray supports only C-contiguous layouts; got order %r, strides %s" % (order, strides))
        if gpudata is None:
            # NOTE: allocated here rather than by pycuda so that an empty array still owns a block and a unique address
            gpudata = poolAllocator(gpuarray.elementCount(shape) * dtype.itemsize)
        super().__init__(shape, dtype, allocator=poolAllocator, gpudata=gpudata, base=base)

    # NOTE: the CUDA `Backend`, set by the package `PuzzleLib.Backend.Cuda` once it has bundled this module with its
    # primitives (a class attribute: the front modules read it on every call)
    backend = None

    @property
    def ptr(self):
        return 0 if self.gpudata is None else int(self.gpudata)

    def get(self):
        """Returns a new host ndarray with the contents."""
        ary = np.empty(self.shape, self.dtype)
        if self.size:
            cuda.memcpy_dtoh(ary, self.ptr)
        return ary

    def fill(self, value):
        """Sets every element to `value` (converted to the array's dtype); returns self.

        Uses the driver's memset for 1-, 2- and 4-byte types (no kernel to compile), pycuda's fill kernel otherwise.
        """
        if self.size == 0:
            return self

        bits = np.asarray(value, dtype=self.dtype).reshape(1)
        if self.dtype.itemsize == 4:
            cuda.memset_d32(self.ptr, int(bits.view(np.uint32)[0]), self.size)
        elif self.dtype.itemsize == 2:
            cuda.memset_d16(self.ptr, int(bits.view(np.uint16)[0]), self.size)
        elif self.dtype.itemsize == 1:
            cuda.memset_d8(self.ptr, int(bits.view(np.uint8)[0]), self.size)
        else:
            pycuda.gpuarray.GPUArray.fill(self, bits[0])
        return self

    def copy(self):
        """Returns a new array (a new pool block) with the same contents."""
        out = GPUArray(self.shape, self.dtype)
        if self.size:
            cuda.memcpy_dtod(out.ptr, self.ptr, self.nbytes)
        return out

    def _view(self, shape, offset):
        return GPUArray(shape, self.dtype, gpudata=self.ptr + offset, base=self)

    def _copyFrom(self, other):
        cuda.memcpy_dtod(self.ptr, other.ptr, self.nbytes)

    def _setFromHost(self, ary):
        # NOTE: np.ascontiguousarray makes a 0-d array 1-d, which is harmless here: the copy needs the bytes in order
        cuda.memcpy_htod(self.ptr, np.ascontiguousarray(ary))


def empty(shape, dtype=np.float32):
    """Returns an uninitialized array of `shape` and `dtype` from the memory pool.

    Raises:
        TypeError, ValueError, MemoryError: as `PuzzleLib.Backend.gpuarray.checkedAllocation`; MemoryError also when the
            device is out of memory.
    """
    shape, dtype, _ = gpuarray.checkedAllocation(shape, dtype)
    return GPUArray(shape, dtype)


def zeros(shape, dtype=np.float32):
    """Returns an array of zeros of `shape` and `dtype` from the memory pool."""
    return empty(shape, dtype).fill(0)


def to_gpu(ary):
    """Copies a host array (any layout) into a new C-contiguous GPUArray of the same shape and dtype.

    Raises:
        TypeError: as `PuzzleLib.Backend.gpuarray.hostArray` (a GPUArray, or a host array that is not numeric).
    """
    ary = gpuarray.hostArray(ary)
    return empty(ary.shape, ary.dtype).set(ary)
