"""GPUArray of the CUDA backend: a `pycuda.gpuarray.GPUArray` whose memory comes from the project's memory pool.

Every allocation, including those pycuda makes on its own (``copy()``, arithmetic results), goes through
`memoryPool`: the array's ``allocator`` wraps each pool `Block` in a `PoolPointer`, a `pycuda.driver.PointerHolderBase`
that pycuda accepts wherever it expects device memory and that keeps the block in use until the array dies.
Views (`reshape`, `ravel`, first-axis slices) are arrays of this class that share the base's memory and keep the base
alive. Only C-contiguous arrays exist here. The interface is the CPU backend's (SPEC section 2).
"""

import numpy as np
import pycuda.driver as cuda
import pycuda.gpuarray as gpuarray

from PuzzleLib.Backend.Cuda import Driver
from PuzzleLib.Backend.MemoryPool import MemoryPool


class CudaAllocator:
    """Raw allocator of the pool: device memory from ``cuda.mem_alloc``.

    Raises:
        MemoryError: from `allocate` when the device is out of memory (the pool then frees its held blocks and retries).
    """

    name = "cuda.mem_alloc"

    @staticmethod
    def allocate(nbytes):
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


def normalizeShape(shape):
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    return tuple(int(dim) for dim in shape)


class GPUArray(gpuarray.GPUArray):
    """C-contiguous device array in pool memory.

    Attributes:
        shape, dtype, size, nbytes, ndim, strides: as numpy's.
        ptr (int): device address of the first element, stable for the array's life.

    Views share the memory and keep their base alive (pycuda's ``base`` attribute).
    """

    def __init__(self, shape, dtype=np.float32, allocator=None, base=None, gpudata=None, strides=None, order="C"):
        # NOTE: pycuda's signature, so that pycuda's own methods building ``self.__class__(...)`` keep working
        shape, dtype = normalizeShape(shape), np.dtype(dtype)
        contiguous = gpuarray._c_contiguous_strides(dtype.itemsize, shape)
        if order != "C" or (strides is not None and tuple(strides) != tuple(contiguous) and len(shape) > 0):
            raise ValueError("GPUArray supports only C-contiguous layouts; got order %r, strides %s" % (order, strides))
        if gpudata is None:
            # NOTE: allocated here rather than by pycuda so that an empty array still owns a block and a unique address
            gpudata = poolAllocator(int(np.prod(shape, dtype=np.int64)) * dtype.itemsize)
        super().__init__(shape, dtype, allocator=poolAllocator, gpudata=gpudata, base=base)

    @property
    def ptr(self):
        return 0 if self.gpudata is None else int(self.gpudata)

    def __len__(self):
        return self.shape[0]

    def view(self, shape, offset=0):
        """Backend-internal: a view of `shape` starting `offset` bytes into this array's memory."""
        return GPUArray(shape, self.dtype, gpudata=self.ptr + offset, base=self)

    def get(self):
        """Returns a new host ndarray with the contents."""
        ary = np.empty(self.shape, self.dtype)
        if self.size:
            cuda.memcpy_dtoh(ary, self.ptr)
        return ary

    def set(self, ary):
        """Copies a host ndarray of the same shape and dtype into this array; returns self.

        Raises:
            ValueError: on a shape or dtype mismatch (nothing is copied, nothing is cast).
        """
        ary = np.asarray(ary)
        if ary.shape != self.shape or ary.dtype != self.dtype:
            raise ValueError(
                "GPUArray.set expects an array of shape %s and dtype %s; got shape %s and dtype %s"
                % (self.shape, self.dtype, ary.shape, ary.dtype)
            )
        if self.size:
            cuda.memcpy_htod(self.ptr, np.ascontiguousarray(ary))
        return self

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
            super().fill(bits[0])
        return self

    def copy(self):
        """Returns a new array (a new pool block) with the same contents."""
        out = GPUArray(self.shape, self.dtype)
        if self.size:
            cuda.memcpy_dtod(out.ptr, self.ptr, self.nbytes)
        return out

    def reshape(self, *shape):
        """Returns a view of another shape (one dimension may be -1).

        Raises:
            ValueError: when the sizes differ or more than one dimension is -1.
        """
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = list(normalizeShape(shape))

        if shape.count(-1) > 1:
            raise ValueError("can only specify one unknown dimension; got %s" % (tuple(shape),))
        if -1 in shape:
            known = int(np.prod([dim for dim in shape if dim != -1], dtype=np.int64))
            if known == 0 or self.size % known != 0:
                raise ValueError("cannot reshape GPUArray of shape %s (size %d) to %s" % (self.shape, self.size, shape))
            shape[shape.index(-1)] = self.size // known

        if int(np.prod(shape, dtype=np.int64)) != self.size:
            raise ValueError(
                "cannot reshape GPUArray of shape %s (size %d) to %s" % (self.shape, self.size, tuple(shape))
            )
        return self.view(tuple(shape))

    def ravel(self):
        """Returns a one-dimensional view."""
        return self.view((self.size,))

    def __getitem__(self, key):
        if self.ndim == 0:
            raise IndexError("a 0-dimensional GPUArray cannot be indexed")

        rowBytes = self.strides[0] if self.shape[0] > 0 else 0
        if isinstance(key, (int, np.integer)):
            index = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= index < self.shape[0]:
                raise IndexError("index %d is out of range for axis 0 of size %d" % (key, self.shape[0]))
            return self.view(self.shape[1:], index * rowBytes)

        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            stop = max(start, stop)
            return self.view((stop - start,) + self.shape[1:], start * rowBytes)

        raise IndexError(
            "GPUArray supports only contiguous slices of the first axis (a[i:j]) and a[i]; got %r" % (key,)
        )

    def __setitem__(self, key, value):
        raise TypeError("GPUArray does not support item assignment; use a[i:j].set(ndarray) or .fill(value)")

    def __str__(self):
        return str(self.get())

    def __repr__(self):
        return "GPUArray(%s, dtype=%s)" % (np.array2string(self.get(), separator=", ", prefix="GPUArray("), self.dtype)


def empty(shape, dtype=np.float32):
    """Returns an uninitialized array of `shape` and `dtype` from the memory pool."""
    shape = normalizeShape(shape)
    if any(dim < 0 for dim in shape):
        raise ValueError("GPUArray dimensions must be non-negative; got shape %s" % (shape,))
    return GPUArray(shape, dtype)


def zeros(shape, dtype=np.float32):
    """Returns an array of zeros of `shape` and `dtype` from the memory pool."""
    return empty(shape, dtype).fill(0)


def to_gpu(ary):
    """Copies a host array (any layout) into a new C-contiguous GPUArray of the same shape and dtype."""
    # NOTE: not np.ascontiguousarray, which makes a 0-d array 1-d; `set` copies from a contiguous version anyway
    ary = np.asarray(ary)
    return empty(ary.shape, ary.dtype).set(ary)
