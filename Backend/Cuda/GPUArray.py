"""Arrays of the CUDA backend (`GPUArrayModule` of the contract): `pycuda.gpuarray.GPUArray` whose memory comes from
the project's memory pool.

Every allocation, including those pycuda makes on its own (``copy()``, arithmetic results), goes through
`memoryPool`: the array's ``allocator`` wraps each pool `Block` in a `PoolPointer`, a `pycuda.driver.PointerHolderBase`
that pycuda accepts wherever it expects device memory and that keeps the block in use until the array dies.
Views (`reshape`, `ravel`, first-axis slices) are arrays of this class that share the base's memory and keep the base
alive. Only C-contiguous arrays exist here. The interface is `PuzzleLib.Backend.gpuarray.GPUArray` (SPEC section 2),
the CPU backend's too.
"""

import operator

import numpy as np
import pycuda.driver as cuda
import pycuda.gpuarray

from PuzzleLib.Backend import DLPack, gpuarray
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
        if order != "C" or (strides is not None and len(shape) > 0 and tuple(strides) != tuple(
                pycuda.gpuarray._c_contiguous_strides(dtype.itemsize, shape))):
            raise ValueError("GPUArray supports only C-contiguous layouts; got order %r, strides %s" % (order, strides))
        if gpudata is None:
            # NOTE: allocated here rather than by pycuda so that an empty array still owns a block and a unique address
            gpudata = poolAllocator(gpuarray.elementCount(shape) * dtype.itemsize)
        super().__init__(shape, dtype, allocator=poolAllocator, gpudata=gpudata, base=base)
        # NOTE: the address is read on every call of every primitive: taken once here, read by a C getter
        self._ptr = int(self.gpudata)

    # NOTE: the CUDA `Backend`, set by the package `PuzzleLib.Backend.Cuda` once it has bundled this module with its
    # primitives (a class attribute: the front modules read it on every call)
    backend = None

    ptr = property(operator.attrgetter("_ptr"), doc="address of the first element, fixed for the array's life")

    def get(self, out=None):
        """Returns a new host ndarray with the contents, or copies them into `out` (a C-contiguous host ndarray of this
        shape and dtype; page-locked memory from `hostBuffer` makes the copy faster) and returns it.

        Raises:
            ValueError: `out` of another shape or dtype, or not C-contiguous.
        """
        if out is None:
            out = np.empty(self.shape, self.dtype)
        else:
            gpuarray.checkHostOut(self, out)
        if self.size:
            cuda.memcpy_dtoh(out, self.ptr)
        return out

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

    def __dlpack_device__(self):
        """``(DLDeviceType.kDLCUDA, ordinal)`` of the device the backend runs on (the DLPack protocol of the Python
        array API standard)."""
        return (DLPack.DLDeviceType.kDLCUDA, deviceOrdinal())

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        """A DLPack capsule sharing this array's device memory, for ``torch.from_dlpack``, ``cupy.from_dlpack`` and any
        other consumer of the Python array API standard's protocol (the structures are dlpack.h v1.0's).

        The capsule is ``"dltensor_versioned"`` when `max_version` is at least (1, 0), else ``"dltensor"``; it keeps
        this array, and so its pool block, alive until the consumer's tensor is gone. Any shape (0-d and empty too);
        dtypes bool, int8..64, uint8..64, float16/32/64, complex64/128.

        Args:
            stream (int or None): the consumer's stream. Our work runs on the legacy default stream, so None, 1 (that
                stream), 2 (the per-thread default stream, which synchronizes with it) and -1 (no synchronization
                wanted) need nothing; for any other stream (a handle) the device is synchronized before returning, as
                a non-blocking stream would not wait for the legacy one. 0 is refused, as the standard says.
            max_version (tuple or None): the highest DLPack version the consumer supports.
            dl_device (tuple or None): must be this array's device when given.
            copy (bool or None): True exports a copy; False and None share the memory (never a copy).

        Raises:
            ValueError: stream 0 or not an int, a malformed `max_version` or `dl_device`.
            BufferError: `dl_device` names another device, or the dtype has no DLPack code (long double).
        """
        checkStream(stream)
        capsule = DLPack.export(self, self.__dlpack_device__(), max_version=max_version, dl_device=dl_device, copy=copy)
        waitForStream(stream)
        return capsule

    @property
    def __cuda_array_interface__(self):
        """Version 3 of the CUDA array interface (Numba's specification, read by CuPy, PyTorch and Numba): shape,
        typestr, ``data = (ptr, False)`` (0 for an empty array), ``strides = None`` (C-contiguous) and ``stream = 1``
        (the legacy default stream, where our work runs). The consumer keeps this array alive for as long as it uses
        the memory."""
        return {
            "version": 3,
            "shape": tuple(self.shape),
            "typestr": self.dtype.str,
            "data": (self.ptr if self.size else 0, False),
            "strides": None,
            "stream": 1,
        }

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


def emptyLike(ary):
    """`Contract.GPUArrayModule.emptyLike`: an uninitialized array of the shape and dtype of `ary` (a CUDA GPUArray),
    built without `GPUArray.__init__`'s checks and conversions."""
    out = GPUArray.__new__(GPUArray)
    block = memoryPool.allocate(ary.nbytes)
    pycuda.gpuarray.GPUArray.__init__(out, ary.shape, ary.dtype, allocator=poolAllocator, gpudata=PoolPointer(block))
    out._ptr = block.ptr
    return out


def hostBuffer(shape, dtype=np.float32):
    """A page-locked host ndarray (``pycuda.driver.pagelocked_empty``) for transfers with `GPUArray.get(out=...)`: the
    driver copies into it directly, without its own staging buffer."""
    Driver.context()
    return cuda.pagelocked_empty(gpuarray.normalizeShape(shape), np.dtype(dtype))


class Backup:
    """`Contract.GPUArrayModule.Backup`: the arrays' contents in one pool block (one allocation however many arrays,
    and no GPUArray), copied device to device, on the legacy default stream like everything else."""

    def __init__(self, arrays):
        self.arrays, self.offsets, total = arrays, [], 0
        for ary in arrays:
            self.offsets.append(total)
            total += -(-ary.nbytes // 256) * 256
        self.block = memoryPool.allocate(total)
        for ary, offset in zip(arrays, self.offsets, strict=True):
            if ary.nbytes:
                cuda.memcpy_dtod(self.block.ptr + offset, ary.ptr, ary.nbytes)

    def restore(self):
        for ary, offset in zip(self.arrays, self.offsets, strict=True):
            if ary.nbytes:
                cuda.memcpy_dtod(ary.ptr, self.block.ptr + offset, ary.nbytes)


class HostMirror:
    """`Contract.GPUArrayModule.HostMirror`: page-locked host memory mapped into the device, holding a copy of the array
    from the start. Kernels that write the array may write `target` too, over the bus as they write (the skip counts of
    a training forward: no copy, no event, no call of the driver); ``refresh()`` queues an asynchronous copy into it on
    the legacy default stream, after the work that writes the array. ``latest()`` is the memory itself."""

    def __init__(self, ary):
        Driver.context()
        self.ary = ary
        self.buffer = cuda.pagelocked_empty(ary.shape, ary.dtype, mem_flags=cuda.host_alloc_flags.DEVICEMAP)
        ary.get(out=self.buffer)
        self.target = foreignArray(self.buffer.base.get_device_pointer(), ary.shape, ary.dtype, self.buffer)

    def refresh(self):
        cuda.memcpy_dtoh_async(self.buffer, self.ary.ptr)

    def latest(self):
        return self.buffer


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


ordinal = None


def deviceOrdinal():
    """The ordinal of the device the backend runs on (the one `Driver.context` took), as DLPack names devices."""
    global ordinal
    if ordinal is None:
        bus = Driver.currentDevice().pci_bus_id()
        ordinal = next(idx for idx in range(cuda.Device.count()) if cuda.Device(idx).pci_bus_id() == bus)
    return ordinal


def checkDeviceOrdinal(idx, producer):
    """Raises BufferError unless CUDA device `idx` is the backend's (memory of another device is not ours to use)."""
    if idx != deviceOrdinal():
        raise BufferError(
            "from_dlpack got a tensor on CUDA device %d from %s; the CUDA backend runs on device %d (PUZZLELIB_DEVICE)"
            % (idx, producer, deviceOrdinal())
        )


def checkStream(stream):
    """Raises ValueError unless `stream` is a valid ``stream`` of the standard for CUDA: None or an int other than 0."""
    if stream is not None and (isinstance(stream, bool) or not isinstance(stream, int) or stream == 0):
        raise ValueError(
            "a CUDA GPUArray's __dlpack__ expects stream None, 1 (legacy default), 2 (per-thread default), -1 (no "
            "synchronization) or a stream handle; got %r (0 is ambiguous and refused by the standard)" % (stream,)
        )


def waitForStream(stream):
    """Orders the work queued on our (legacy default) stream before the work of `stream`: nothing to do for None, 1,
    2 and -1; for another stream (it may be non-blocking, as PyTorch's and CuPy's side streams are) the device is
    synchronized."""
    checkStream(stream)
    if stream not in (None, 1, 2, -1):
        Driver.synchronize()


class ForeignPointer(cuda.PointerHolderBase):
    """Device pointer pycuda understands, into memory another library owns (an imported tensor); it keeps `owner`
    alive, and with it the producer's memory, until garbage-collected (see `PoolPointer` for pool memory)."""

    def __init__(self, ptr, owner):
        super().__init__()
        self.address, self.owner = int(ptr), owner

    def get_pointer(self):
        return self.address

    def __int__(self):
        return self.address

    def __index__(self):
        return self.address


def foreignArray(ptr, shape, dtype, owner):
    """A GPUArray of `shape` and `dtype` over C-contiguous device memory at `ptr` that `owner` keeps alive (an imported
    array: it holds no pool block; it and its views keep `owner` instead)."""
    Driver.context()
    return GPUArray(shape, dtype, gpudata=ForeignPointer(ptr, owner))


def from_dlpack(obj):
    """A CUDA GPUArray sharing the device memory of `obj` (see `PuzzleLib.Backend.gpuarray.from_dlpack`); an object
    with only ``__cuda_array_interface__`` (version 3) is taken too.

    Raises:
        BufferError: the memory of `obj` is not on the backend's device; and the errors of ``gpuarray.from_dlpack``.
    """
    return DLPack.fromDLPack(obj, "cuda")
