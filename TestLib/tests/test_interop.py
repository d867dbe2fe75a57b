"""Zero-copy exchange with PyTorch, CuPy and numpy: DLPack both ways (`GPUArray.__dlpack__`, `gpuarray.from_dlpack`)
and the CUDA array interface, on every backend.

Every test checks that memory is shared (a write through one side is read through the other; the data pointers are
equal) and that lifetimes hold: an exported array's pool block stays in use while the consumer's tensor lives, and an
imported tensor stays alive while a GPUArray or a view of it does, then goes back to its producer (its deleter runs).
The CUDA cases take PyTorch CUDA tensors and CuPy arrays; they skip where there is no GPU.
"""

import ctypes
import gc
import weakref

import numpy as np
import pytest

from PuzzleLib import Config
from PuzzleLib.Backend import DLPack, gpuarray
from PuzzleLib.Backend.Dispatch import backendNamed
from PuzzleLib.Modules import BatchNorm
from PuzzleLib.TestLib import Backends

# NOTE: PyTorch is imported when the first test runs, not when pytest collects this file: torch.ops carries the relative
# __file__ "_ops.py", which test_config's check of the library's module names would take for a file of this repository
torch, torchDLPack = None, None

capsuleName = ctypes.PYFUNCTYPE(ctypes.c_char_p, ctypes.py_object)(("PyCapsule_GetName", ctypes.pythonapi))
capsulePointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)

DTYPES = [
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128,
]
VERSIONS = {"legacy": None, "versioned": (1, 0)}


def torchDevice(backend):
    """The torch device whose memory `backend` holds ("cpu" or "cuda")."""
    if backend.name == "cuda" and not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    return backend.name


def host(tensor):
    return tensor.detach().cpu().numpy()


def activeBytes(backend):
    gc.collect()
    return backend.gpuarray.memoryPool.stats()["activeBytes"]


def sample(dtype, shape=(3, 4)):
    values = (np.arange(np.prod(shape)).reshape(shape) * 7 % 11) - 3
    if np.dtype(dtype).kind == "u":
        values = np.abs(values)
    if np.dtype(dtype).kind == "c":
        return (values + 1j * (values - 1)).astype(dtype)
    return values.astype(dtype)


class LegacyProducer:
    """A producer from before DLPack 1.0: its __dlpack__ takes no max_version (a TypeError for the keyword)."""

    def __init__(self, inner):
        self.inner = inner

    def __dlpack__(self, stream=None):
        return self.inner.__dlpack__() if stream is None else self.inner.__dlpack__(stream=stream)

    def __dlpack_device__(self):
        return self.inner.__dlpack_device__()


class FixedProducer:
    """A producer that answers with what it was given, for the error paths."""

    def __init__(self, device, capsule=None):
        self.device, self.capsule = device, capsule

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        return self.capsule

    def __dlpack_device__(self):
        return self.device


@pytest.fixture(autouse=True)
def importTorch():
    global torch, torchDLPack
    torch = pytest.importorskip("torch")
    torchDLPack = pytest.importorskip("torch.utils.dlpack")


@pytest.fixture
def cudaBackend(importTorch):
    """The CUDA backend, in use, with PyTorch on the GPU (for the CUDA-only tests, marked backendIndependent)."""
    Backends.skipUnless("cuda")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch has no CUDA here")
    chosen = backendNamed("cuda")
    chosen.gpuarray.memoryPool.poison = True
    with Config.useBackend("cuda"):
        yield chosen


# --- export: GPUArray -> PyTorch


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_export_to_torch_shares_memory_and_consumes_the_capsule(backend, version):
    device = torchDevice(backend)
    hostData = np.arange(12, dtype=np.float32).reshape(3, 4)
    ary = gpuarray.to_gpu(hostData)

    capsule = ary.__dlpack__(max_version=VERSIONS[version])
    name = b"dltensor_versioned" if version == "versioned" else b"dltensor"
    assert capsuleName(capsule) == name

    tensor = torchDLPack.from_dlpack(capsule)
    assert capsuleName(capsule) == b"used_" + name
    assert tensor.device.type == device and tensor.shape == (3, 4) and tensor.dtype == torch.float32
    assert tensor.data_ptr() == ary.ptr and tensor.stride() == (4, 1)
    assert np.array_equal(host(tensor), hostData)

    tensor.mul_(-2)
    assert np.array_equal(ary.get(), -2 * hostData)
    ary.fill(5)
    assert np.array_equal(host(tensor), np.full((3, 4), 5, np.float32))


def test_torch_from_dlpack_of_a_gpuarray_and_the_device_it_names(backend):
    device = torchDevice(backend)
    ary = gpuarray.to_gpu(np.arange(6, dtype=np.float32))
    kind, idx = ary.__dlpack_device__()
    assert (kind, idx) == ((1, 0) if backend.name == "cpu" else (2, idx))

    tensor = torch.from_dlpack(ary)
    assert tensor.device.type == device and tensor.data_ptr() == ary.ptr
    assert tuple(tensor.__dlpack_device__()) == (kind, idx)


def test_exported_array_stays_in_use_while_the_tensor_lives(backend):
    torchDevice(backend)
    hostData = np.arange(4096, dtype=np.float32)
    before, exports = activeBytes(backend), len(DLPack.exports)

    ary = gpuarray.to_gpu(hostData)
    ptr, held = ary.ptr, activeBytes(backend)
    assert held > before
    tensor = torch.from_dlpack(ary)
    del ary
    assert activeBytes(backend) == held, "the pool took the block back while a torch tensor still uses it"

    other = gpuarray.empty(hostData.shape, hostData.dtype).fill(-1)
    assert other.ptr != ptr and tensor.data_ptr() == ptr
    assert np.array_equal(host(tensor), hostData)
    del other

    del tensor
    assert activeBytes(backend) == before and len(DLPack.exports) == exports


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_a_capsule_nobody_consumes_gives_the_array_back_when_it_dies(backend, version):
    before = activeBytes(backend)
    ary = gpuarray.to_gpu(np.arange(1000, dtype=np.float64))
    held = activeBytes(backend)

    capsule = ary.__dlpack__(max_version=VERSIONS[version])
    del ary
    assert activeBytes(backend) == held
    del capsule
    assert activeBytes(backend) == before


def test_exported_views_point_at_their_rows(backend):
    torchDevice(backend)
    hostData = np.arange(20, dtype=np.float32).reshape(5, 4)
    ary = gpuarray.to_gpu(hostData)

    rows, row = torch.from_dlpack(ary[1:3]), torch.from_dlpack(ary[4])
    assert rows.data_ptr() == ary.ptr + 1 * hostData.strides[0] and rows.shape == (2, 4)
    assert row.data_ptr() == ary.ptr + 4 * hostData.strides[0] and row.shape == (4,)
    assert np.array_equal(host(rows), hostData[1:3]) and np.array_equal(host(row), hostData[4])

    rows.fill_(-1)
    expected = hostData.copy()
    expected[1:3] = -1
    assert np.array_equal(ary.get(), expected)
    assert torch.from_dlpack(ary.reshape(2, 10)).shape == (2, 10)


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_zero_dimensional_and_empty_arrays_go_out(backend, version):
    torchDevice(backend)
    scalar = gpuarray.to_gpu(np.float32(2.5))
    tensor = torchDLPack.from_dlpack(scalar.__dlpack__(max_version=VERSIONS[version]))
    assert tensor.shape == () and tensor.item() == 2.5 and tensor.data_ptr() == scalar.ptr
    tensor.fill_(-4)
    assert scalar.get() == np.float32(-4)

    for shape in [(0,), (2, 0, 3)]:
        empty = gpuarray.empty(shape, np.float32)
        tensor = torchDLPack.from_dlpack(empty.__dlpack__(max_version=VERSIONS[version]))
        assert tensor.shape == shape and tensor.numel() == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=[np.dtype(t).name for t in DTYPES])
def test_every_dtype_goes_out_and_comes_back(backend, dtype):
    torchDevice(backend)
    hostData = sample(dtype)
    ary = gpuarray.to_gpu(hostData)

    tensor = torch.from_dlpack(ary)
    assert tensor.data_ptr() == ary.ptr and np.array_equal(host(tensor), hostData)
    back = gpuarray.from_dlpack(tensor)
    assert back.dtype == hostData.dtype and back.ptr == ary.ptr and np.array_equal(back.get(), hostData)

    if backend.name == "cpu":
        viaNumpy = np.from_dlpack(ary)
        assert viaNumpy.dtype == hostData.dtype and viaNumpy.ctypes.data == ary.ptr
        assert np.array_equal(viaNumpy, hostData)


def test_copy_true_exports_new_memory_and_says_so(backend):
    torchDevice(backend)
    ary = gpuarray.to_gpu(np.arange(5, dtype=np.float32))

    capsule = ary.__dlpack__(max_version=(1, 0), copy=True)
    managed = DLPack.DLManagedTensorVersioned.from_address(capsulePointer(capsule, b"dltensor_versioned"))
    assert managed.flags & DLPack.DLPACK_FLAG_BITMASK_IS_COPIED
    copied = torchDLPack.from_dlpack(capsule)
    assert copied.data_ptr() != ary.ptr and np.array_equal(host(copied), np.arange(5, dtype=np.float32))
    copied.fill_(9)
    assert np.array_equal(ary.get(), np.arange(5, dtype=np.float32))

    for copy in (False, None):
        capsule = ary.__dlpack__(max_version=(1, 0), copy=copy)
        managed = DLPack.DLManagedTensorVersioned.from_address(capsulePointer(capsule, b"dltensor_versioned"))
        assert managed.flags == 0 and managed.dl_tensor.data == ary.ptr


def test_export_refuses_another_device_a_bad_stream_and_a_dtype_without_a_code(backend):
    ary = gpuarray.to_gpu(np.arange(3, dtype=np.float32))
    own = ary.__dlpack_device__()
    other = (DLPack.DLDeviceType.kDLCUDA, 0) if backend.name == "cpu" else (DLPack.DLDeviceType.kDLCPU, 0)

    with pytest.raises(BufferError, match=r"lives on \((kDLCPU|kDLCUDA), \d\).*got dl_device"):
        ary.__dlpack__(dl_device=other)
    with pytest.raises(BufferError):
        ary.__dlpack__(dl_device=other, copy=False)
    assert capsuleName(ary.__dlpack__(dl_device=own)) == b"dltensor"

    if backend.name == "cpu":
        with pytest.raises(ValueError, match="stream None"):
            ary.__dlpack__(stream=1)
    else:
        with pytest.raises(ValueError, match="0 is ambiguous"):
            ary.__dlpack__(stream=0)
    with pytest.raises(ValueError, match="max_version"):
        ary.__dlpack__(max_version=1)

    longDouble = gpuarray.empty(2, np.longdouble)
    if longDouble.dtype.itemsize > 8:
        with pytest.raises(BufferError, match="DLPack export supports .*got a GPUArray of dtype"):
            longDouble.__dlpack__()


# --- import: PyTorch / numpy -> GPUArray


def test_import_from_torch_shares_memory_on_the_backend_that_holds_it(backend):
    device = torchDevice(backend)
    tensor = torch.arange(12, dtype=torch.float32, device=device).reshape(3, 4)
    ary = gpuarray.from_dlpack(tensor)

    assert isinstance(ary, gpuarray.GPUArray) and ary.backend is backend
    assert ary.shape == (3, 4) and ary.dtype == np.float32 and ary.ptr == tensor.data_ptr()
    assert np.array_equal(ary.get(), host(tensor))

    tensor.add_(1)
    assert np.array_equal(ary.get(), np.arange(1, 13, dtype=np.float32).reshape(3, 4))
    ary.fill(7)
    assert torch.equal(tensor, torch.full((3, 4), 7.0, device=device))

    part = gpuarray.from_dlpack(tensor[1:3])
    assert part.ptr == tensor[1:3].data_ptr() == ary[1:3].ptr and part.shape == (2, 4)
    assert backend.gpuarray.from_dlpack(tensor).ptr == tensor.data_ptr()


def test_imported_tensor_outlives_the_torch_tensor_and_goes_back_with_the_last_view(backend):
    device = torchDevice(backend)
    if device == "cpu":
        # NOTE: torch.from_numpy keeps the numpy array as the storage's owner: it dies when the storage is freed
        base = np.arange(24, dtype=np.float32)
        probe = weakref.ref(base)
        tensor = torch.from_numpy(base)
        del base
        released = lambda: probe() is None
    else:
        gc.collect()
        torch.cuda.synchronize()
        start = torch.cuda.memory_allocated()
        tensor = torch.arange(24, dtype=torch.float32, device=device)
        released = lambda: torch.cuda.memory_allocated() == start

    ary = gpuarray.from_dlpack(tensor)
    ptr = tensor.data_ptr()
    del tensor
    gc.collect()
    assert not released()
    assert ary.ptr == ptr and np.array_equal(ary.get(), np.arange(24, dtype=np.float32))

    view = ary.reshape(4, 6)[1:3]
    del ary
    gc.collect()
    assert not released(), "the producer's memory went back while a view still uses it"
    assert np.array_equal(view.get(), np.arange(6, 18, dtype=np.float32).reshape(2, 6))

    del view
    gc.collect()
    assert released(), "the producer's deleter did not run when the last GPUArray died"


@pytest.mark.backendIndependent
def test_numpy_views_of_an_imported_array_keep_the_producer():
    base = np.arange(10, dtype=np.float64)
    probe = weakref.ref(base)
    ary = gpuarray.from_dlpack(base)
    assert ary.backend.name == "cpu"
    hostView = ary.backend.gpuarray.hostView(ary)[2:5]
    del base, ary
    gc.collect()
    assert probe() is not None and hostView.ctypes.data == probe().ctypes.data + 16
    assert np.array_equal(hostView, [2.0, 3.0, 4.0])
    del hostView
    gc.collect()
    assert probe() is None


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_round_trip_torch_gpuarray_torch(backend, version):
    device = torchDevice(backend)
    tensor = torch.linspace(-1, 1, 15, device=device).reshape(5, 3)
    ary = gpuarray.from_dlpack(tensor if version == "versioned" else LegacyProducer(tensor))
    back = torchDLPack.from_dlpack(ary.__dlpack__(max_version=VERSIONS[version]))

    assert back.data_ptr() == tensor.data_ptr() == ary.ptr and torch.equal(back, tensor)
    back[0].fill_(3)
    assert torch.equal(tensor[0], torch.full((3,), 3.0, device=device))


@pytest.mark.backendIndependent
@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_round_trip_numpy_gpuarray_numpy(version):
    hostData = np.arange(12, dtype=np.int32).reshape(4, 3)
    producer = hostData if version == "versioned" else LegacyProducer(hostData)
    ary = gpuarray.from_dlpack(producer)
    assert ary.backend.name == "cpu" and ary.ptr == hostData.ctypes.data

    back = np.from_dlpack(ary if version == "versioned" else LegacyProducer(ary))
    assert back.ctypes.data == hostData.ctypes.data and np.array_equal(back, hostData)
    ary[1].fill(-1)
    assert np.array_equal(hostData[1], [-1, -1, -1]) and np.array_equal(back[1], [-1, -1, -1])
    # NOTE: numpy makes arrays from legacy capsules read-only, as those cannot say whether writing is allowed
    assert back.flags.writeable == (version == "versioned")


@pytest.mark.parametrize("version", sorted(VERSIONS))
def test_zero_dimensional_and_empty_tensors_come_in(backend, version):
    device = torchDevice(backend)
    wrap = (lambda t: t) if version == "versioned" else LegacyProducer
    scalar = torch.tensor(3.5, dtype=torch.float64, device=device)
    ary = gpuarray.from_dlpack(wrap(scalar))
    assert ary.shape == () and ary.get() == 3.5 and ary.ptr == scalar.data_ptr()

    for shape in [(0,), (2, 0, 3)]:
        empty = gpuarray.from_dlpack(wrap(torch.empty(shape, device=device)))
        assert empty.shape == shape and empty.size == 0 and empty.get().shape == shape


def test_a_byte_offset_is_honoured(backend):
    class OffsetProducer:
        """Exports rows 1:3 of `base` as data = the base's address plus byte_offset, as dlpack.h allows."""

        def __init__(self, base):
            self.base = base

        def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
            capsule = self.base[1:3].__dlpack__(stream=stream)
            tensor = DLPack.DLManagedTensor.from_address(capsulePointer(capsule, b"dltensor")).dl_tensor
            tensor.byte_offset = tensor.data - self.base.ptr
            tensor.data = self.base.ptr
            return capsule

        def __dlpack_device__(self):
            return self.base.__dlpack_device__()

    hostData = np.arange(20, dtype=np.float32).reshape(5, 4)
    base = gpuarray.to_gpu(hostData)
    rows = gpuarray.from_dlpack(OffsetProducer(base))
    assert rows.ptr == base.ptr + 16 * 1 and np.array_equal(rows.get(), hostData[1:3])


def test_a_gpuarray_comes_in_as_a_view_of_itself(backend):
    ary = gpuarray.to_gpu(np.arange(4, dtype=np.float32))
    same = gpuarray.from_dlpack(ary)
    assert same is not ary and same.ptr == ary.ptr and same.backend is backend
    same.fill(2)
    assert np.array_equal(ary.get(), np.full(4, 2, np.float32))


def test_batchnorm_consumes_an_imported_torch_tensor(backend):
    device = torchDevice(backend)
    generator = torch.Generator().manual_seed(7)
    tensor = (torch.randn(16, 6, generator=generator) * 3 + 1).to(device)
    data = gpuarray.from_dlpack(tensor)
    assert data.ptr == tensor.data_ptr()

    bn = BatchNorm(6)
    out = bn(data)

    x = host(tensor).astype(np.float64)
    mean, var = x.mean(axis=0), x.var(axis=0)
    scale, bias = bn.scale.get().reshape(6).astype(np.float64), bn.bias.get().reshape(6).astype(np.float64)
    expected = (x - mean) / np.sqrt(var + bn.epsilon) * scale + bias
    assert np.allclose(out.get(), expected, rtol=1e-4, atol=1e-5)
    assert np.allclose(bn.mean.get().reshape(6), mean, rtol=1e-5, atol=1e-5)
    assert np.allclose(host(torch.from_dlpack(out)), expected, rtol=1e-4, atol=1e-5)


# --- import errors name what was expected and what came


def test_import_refuses_a_tensor_that_is_not_contiguous_and_gives_it_back(backend):
    device = torchDevice(backend)
    with pytest.raises(ValueError, match=r"C-contiguous.*got strides \(1, 4\).*tensor\.contiguous\(\)"):
        gpuarray.from_dlpack(torch.zeros(3, 4, device=device).T)
    with pytest.raises(ValueError, match=r"C-contiguous.*torch\.Tensor"):
        gpuarray.from_dlpack(torch.zeros(4, 6, device=device)[:, ::2])

    base = np.zeros((4, 6), np.float32)
    probe = weakref.ref(base)
    with pytest.raises(ValueError, match=r"C-contiguous.*np\.ascontiguousarray"):
        gpuarray.from_dlpack(base[:, ::2])
    del base
    gc.collect()
    assert probe() is None, "a refused capsule was not given back to its producer"

    # NOTE: a dimension of size 1 may carry any stride: nothing steps over it
    assert gpuarray.from_dlpack(torch.zeros(4, 1, device=device).T).shape == (1, 4)


def test_import_refuses_bfloat16_and_says_so(backend):
    device = torchDevice(backend)
    with pytest.raises(TypeError, match=r"bfloat16 tensor.*tensor\.float\(\)"):
        gpuarray.from_dlpack(torch.zeros(3, dtype=torch.bfloat16, device=device))


@pytest.mark.backendIndependent
def test_import_refuses_read_only_arrays_and_objects_without_dlpack():
    readOnly = np.arange(3.0)
    readOnly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only tensor from numpy.ndarray; GPUArrays are writable"):
        gpuarray.from_dlpack(readOnly)

    with pytest.raises(TypeError, match=r"expects an object with __dlpack__.*got builtins\.list.*to_gpu"):
        gpuarray.from_dlpack([1.0, 2.0])


@pytest.mark.backendIndependent
def test_import_refuses_devices_without_a_backend_and_consumed_capsules():
    with pytest.raises(BufferError, match=r"CPU \(kDLCPU\) or on the CUDA device.*\(kDLOpenCL, 0\)"):
        gpuarray.from_dlpack(FixedProducer((DLPack.DLDeviceType.kDLOpenCL, 0)))

    capsule = np.arange(3.0).__dlpack__()
    np.from_dlpack(FixedProducer((1, 0), capsule))
    with pytest.raises(TypeError, match="capsule named 'used_dltensor'"):
        gpuarray.from_dlpack(FixedProducer((1, 0), capsule))

    with pytest.raises(BufferError, match="the cpu backend's from_dlpack takes memory of its own device"):
        backendNamed("cpu").gpuarray.from_dlpack(FixedProducer((DLPack.DLDeviceType.kDLCUDA, 0)))


@pytest.mark.backendIndependent
def test_a_cuda_tensor_without_a_cuda_backend_is_a_config_error():
    if Config.cudaProblem() is None:
        pytest.skip("the CUDA backend works here")
    with pytest.raises(Config.ConfigError, match="tensor on CUDA device 0 from .*cannot work here"):
        gpuarray.from_dlpack(FixedProducer((DLPack.DLDeviceType.kDLCUDA, 0)))


# --- CUDA only: PyTorch CUDA tensors, CuPy and the CUDA array interface


@pytest.mark.backendIndependent
def test_cuda_array_interface_describes_the_array(cudaBackend):
    ary = gpuarray.to_gpu(np.arange(6, dtype=np.float16).reshape(2, 3))
    desc = ary.__cuda_array_interface__
    assert desc == {
        "version": 3, "shape": (2, 3), "typestr": "<f2", "data": (ary.ptr, False), "strides": None, "stream": 1,
    }
    assert gpuarray.empty((0, 3)).__cuda_array_interface__["data"] == (0, False)

    tensor = torch.as_tensor(ary, device="cuda")
    assert tensor.data_ptr() == ary.ptr and np.array_equal(host(tensor), ary.get())


@pytest.mark.backendIndependent
def test_cuda_array_interface_comes_in(cudaBackend):
    class InterfaceOnly:
        def __init__(self, tensor):
            self.tensor = tensor
            self.__cuda_array_interface__ = tensor.__cuda_array_interface__

    tensor = torch.arange(8, dtype=torch.int32, device="cuda")
    ary = gpuarray.from_dlpack(InterfaceOnly(tensor))
    assert ary.backend is cudaBackend and ary.ptr == tensor.data_ptr()
    assert np.array_equal(ary.get(), np.arange(8, dtype=np.int32))
    with pytest.raises(ValueError, match="C-contiguous"):
        gpuarray.from_dlpack(InterfaceOnly(torch.zeros(3, 4, device="cuda").T))


@pytest.mark.backendIndependent
def test_export_to_torch_on_a_side_stream_waits_for_our_work(cudaBackend):
    ary = gpuarray.zeros(1 << 20, np.float32).fill(3)
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        tensor = torch.from_dlpack(ary)
        total = tensor.sum()
    side.synchronize()
    assert tensor.data_ptr() == ary.ptr and total.item() == 3 * (1 << 20)


@pytest.mark.backendIndependent
def test_exchange_with_cupy(cudaBackend):
    cupy = pytest.importorskip("cupy")
    hostData = np.arange(12, dtype=np.float32).reshape(3, 4)
    ary = gpuarray.to_gpu(hostData)

    viaDLPack, viaInterface = cupy.from_dlpack(ary), cupy.asarray(ary)
    assert viaDLPack.data.ptr == viaInterface.data.ptr == ary.ptr
    viaDLPack *= 2
    assert np.array_equal(ary.get(), 2 * hostData)

    array = cupy.arange(6, dtype=cupy.float64)
    used = cupy.get_default_memory_pool().used_bytes()
    imported = gpuarray.from_dlpack(array)
    assert imported.ptr == array.data.ptr and np.array_equal(imported.get(), np.arange(6.0))
    del array
    gc.collect()
    assert cupy.get_default_memory_pool().used_bytes() == used
    del imported
    gc.collect()
    assert cupy.get_default_memory_pool().used_bytes() < used
