"""A stand-in for pycuda where there is no GPU: the CUDA backend's host path runs on it, its kernels do not.

`install()` puts three modules under pycuda's names into ``sys.modules`` (``pycuda.driver``, ``pycuda.gpuarray``,
``pycuda.compiler``) before the CUDA backend is imported. Device memory is host memory (so copies, fills and reads move
real bytes), the device is an H100-like one (132 multiprocessors of 2048 threads, compute capability 9.0), nothing is
compiled, and a kernel launch only records ``(function, grid, block, arguments)`` in `launches` (the function packs
them as pycuda would). No number a kernel would compute is ever produced: arrays that kernels write keep what they
held. It serves two purposes: timing the Python between a module call and its launches (`Benchmarks.CallPathBenchmark`),
and checking the launches the host path makes, grid and arguments, against their declarations
(``TestLib/tests/test_cuda_host_path.py``), both on machines without a GPU.

Usage, in a process of its own (the stand-in must come before any import of the CUDA backend)::

    from PuzzleLib.TestLib import StandInCuda
    StandInCuda.install()
"""

import ctypes
import functools
import math
import struct
import sys
import types

import numpy as np

MULTIPROCESSORS, THREADS_PER_MULTIPROCESSOR, CAPABILITY = 132, 2048, (9, 0)
REGISTERS_PER_MULTIPROCESSOR, SHARED_MEMORY_PER_MULTIPROCESSOR = 65536, 233472
# NOTE: nothing is compiled, so every kernel reports the same resources: 32 registers, no shared memory
KERNEL_REGISTERS, KERNEL_SHARED_BYTES = 32, 0

# NOTE: every launch, as (`Function`, grid, block, arguments); a test or benchmark clears it
launches = []


class Error(Exception):
    pass


class DeviceMemoryError(Error):
    pass


class CompileError(Error):
    pass


class PointerHolderBase:
    """pycuda's base of objects that stand for device memory (``int()`` gives the address)."""

    def get_pointer(self):
        raise NotImplementedError()


class DeviceAllocation:
    """``mem_alloc``'s result: a host buffer standing for device memory, freed with the object."""

    def __init__(self, nbytes):
        self.buffer = ctypes.create_string_buffer(nbytes)
        self.address = ctypes.addressof(self.buffer)

    def __int__(self):
        return self.address

    __index__ = __int__

    def free(self):
        self.buffer = None


def mem_alloc(nbytes):
    return DeviceAllocation(int(nbytes))


def hostView(address, nbytes):
    return np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(int(address)))


def memset(itemType, address, value, count):
    np.ctypeslib.as_array((itemType * count).from_address(int(address)))[...] = value


def memcpy_htod(dst, src):
    src = np.ascontiguousarray(src)
    ctypes.memmove(int(dst), src.ctypes.data, src.nbytes)


def memcpy_dtoh(dst, src):
    ctypes.memmove(dst.ctypes.data, int(src), dst.nbytes)


def memcpy_dtoh_async(dst, src, stream=None):
    memcpy_dtoh(dst, src)


def memcpy_dtod(dst, src, nbytes):
    ctypes.memmove(int(dst), int(src), int(nbytes))


class Event:
    def record(self, stream=None):
        return self

    def query(self):
        return True

    def synchronize(self):
        return self


class Context:
    def push(self):
        pass

    def pop(self):
        pass

    def detach(self):
        pass

    def synchronize(self):
        pass


class Device:
    def __init__(self, idx):
        self.idx = idx

    @staticmethod
    def count():
        return 1

    def compute_capability(self):
        return CAPABILITY

    def get_attribute(self, attribute):
        return {
            "MULTIPROCESSOR_COUNT": MULTIPROCESSORS, "MAX_THREADS_PER_MULTIPROCESSOR": THREADS_PER_MULTIPROCESSOR,
            "MAX_REGISTERS_PER_MULTIPROCESSOR": REGISTERS_PER_MULTIPROCESSOR,
            "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR": SHARED_MEMORY_PER_MULTIPROCESSOR,
        }[attribute]

    def name(self):
        return "stand-in device (no GPU)"

    def pci_bus_id(self):
        return "0000:00:00.0"

    def retain_primary_context(self):
        return Context()


class Function:
    """A kernel entry: `prepare` takes pycuda's argument format, `prepared_call` records the launch with its arguments
    (`packed` gives their bytes as pycuda would pack them with that format)."""

    def __init__(self, name):
        self.name, self.format = name, None

    def prepare(self, format):
        self.format = format
        return self

    def prepared_call(self, grid, block, *args):
        launches.append((self, grid, block, args))

    def packed(self, args):
        return struct.pack(self.format, *args)

    def get_attribute(self, attribute):
        return {"NUM_REGS": KERNEL_REGISTERS, "SHARED_SIZE_BYTES": KERNEL_SHARED_BYTES}[attribute]


class SourceModule:
    def __init__(self, source, **options):
        self.functions = {}

    def get_function(self, name):
        return self.functions.setdefault(name, Function(name))


@functools.lru_cache(maxsize=1024)
def contiguousStrides(itemsize, shape):
    strides, step = [], itemsize
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))


class LazyStrides:
    """pycuda's ``strides`` attribute, computed when read (the backend never reads it on its hot path)."""

    def __get__(self, ary, owner):
        return contiguousStrides(ary.dtype.itemsize, ary.shape)


class GPUArray:
    """The part of pycuda's GPUArray the backend's arrays build on: shape, dtype, sizes, strides and the memory."""

    strides = LazyStrides()

    def __init__(self, shape, dtype, allocator=None, gpudata=None, base=None, strides=None, order="C"):
        # NOTE: as little work as pycuda could do, so that timings of the host path are the backend's own
        self.shape, self.dtype = shape, dtype
        self.size = math.prod(shape)
        self.nbytes = self.mem_size = self.size * dtype.itemsize
        self.gpudata = allocator(self.nbytes) if gpudata is None else gpudata
        self.base = base

    @property
    def ndim(self):
        return len(self.shape)

    def fill(self, value):
        if self.size:
            hostView(int(self.gpudata), self.nbytes).view(self.dtype)[...] = value
        return self


class HostAllocation(bytearray):
    """pycuda's page-locked host memory, the base of the arrays ``pagelocked_empty`` returns; host memory is device
    memory here, so the memory's device pointer is its address."""

    def get_device_pointer(self):
        return ctypes.addressof(ctypes.c_char.from_buffer(self))


def pagelockedEmpty(shape, dtype, order="C", mem_flags=0):
    shape, dtype = (shape,) if isinstance(shape, int) else tuple(shape), np.dtype(dtype)
    return np.ndarray(shape, dtype, HostAllocation(max(math.prod(shape) * dtype.itemsize, 1)), order=order)


def module(name, **members):
    result = types.ModuleType(name)
    result.__dict__.update(members)
    return result


def install():
    """Makes ``import pycuda...`` find the stand-in; a no-op when it is installed already.

    Raises:
        RuntimeError: when the real pycuda (or the CUDA backend) was imported before.
    """
    current = sys.modules.get("pycuda")
    if current is not None and getattr(current, "standIn", False):
        return
    if current is not None or "PuzzleLib.Backend.Cuda" in sys.modules:
        raise RuntimeError("the pycuda stand-in must be installed before pycuda or the CUDA backend is imported")

    attributes = types.SimpleNamespace(**{
        name: name for name in (
            "MULTIPROCESSOR_COUNT", "MAX_THREADS_PER_MULTIPROCESSOR", "MAX_REGISTERS_PER_MULTIPROCESSOR",
            "MAX_SHARED_MEMORY_PER_MULTIPROCESSOR",
        )
    })
    functionAttributes = types.SimpleNamespace(NUM_REGS="NUM_REGS", SHARED_SIZE_BYTES="SHARED_SIZE_BYTES")
    driver = module(
        "pycuda.driver", Error=Error, MemoryError=DeviceMemoryError, LogicError=Error, CompileError=CompileError,
        PointerHolderBase=PointerHolderBase, Device=Device, Context=Context, Event=Event, device_attribute=attributes,
        function_attribute=functionAttributes,
        init=lambda flags=0: None, mem_alloc=mem_alloc, memcpy_htod=memcpy_htod, memcpy_dtoh=memcpy_dtoh,
        memcpy_dtoh_async=memcpy_dtoh_async, memcpy_dtod=memcpy_dtod,
        memset_d8=lambda ptr, value, count: memset(ctypes.c_uint8, ptr, value, count),
        memset_d16=lambda ptr, value, count: memset(ctypes.c_uint16, ptr, value, count),
        memset_d32=lambda ptr, value, count: memset(ctypes.c_uint32, ptr, value, count),
        pagelocked_empty=pagelockedEmpty,
        host_alloc_flags=types.SimpleNamespace(PORTABLE=1, DEVICEMAP=2, WRITECOMBINED=4),
    )
    gpuarray = module("pycuda.gpuarray", GPUArray=GPUArray, _c_contiguous_strides=contiguousStrides)
    compiler = module("pycuda.compiler", SourceModule=SourceModule)
    package = module("pycuda", driver=driver, gpuarray=gpuarray, compiler=compiler, standIn=True, __path__=[])
    sys.modules.update({"pycuda": package, "pycuda.driver": driver, "pycuda.gpuarray": gpuarray,
                        "pycuda.compiler": compiler})
