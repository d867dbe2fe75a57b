"""Zero-copy exchange of arrays with other libraries: DLPack capsules both ways, and the CUDA array interface in.

The protocol is the Python array API standard's (``__dlpack__``, ``__dlpack_device__``, ``from_dlpack``;
https://data-apis.org/array-api/latest/design_topics/data_interchange.html) over the C structures of DLPack's
``dlpack.h`` v1.0, declared once with ctypes in `Backend.DLPackStructures`. Both backends export through `export` and
import through `fromDLPack`; ``PuzzleLib.Backend.gpuarray.from_dlpack`` is the public entry point.

Lifetimes. An exported array is kept alive by the capsule's `DLManagedTensor` (its ``manager_ctx`` names an entry of
`exports`, which holds the array) until the consumer calls the deleter, or, for a capsule nobody consumed, until the
capsule dies: so the array's pool block stays in use while a PyTorch tensor still reads it. An imported tensor is held
by a `ForeignOwner`, kept alive by the GPUArray and by every view of it; when the last of them dies the owner calls the
producer's deleter once.

Streams (CUDA). Our kernels and copies run on the legacy default stream. Exporting with ``stream`` None, 1 (the legacy
default stream), 2 (the per-thread default stream, which synchronizes with the legacy one) or -1 (the consumer asks for
no synchronization) needs nothing; for another stream (a consumer's non-blocking stream, as PyTorch's and CuPy's side
streams are) the device is synchronized first, so all our queued work is done before the consumer's begins. Importing,
we ask the producer for stream 1, the stream we will use.
"""

import ctypes

import numpy as np

from PuzzleLib import Config
from PuzzleLib.Backend.DLPackStructures import (  # noqa: F401 (the structures are this module's names too)
    DLPACK_FLAG_BITMASK_IS_COPIED,
    DLPACK_FLAG_BITMASK_READ_ONLY,
    DLPACK_MAJOR_VERSION,
    DLPACK_MINOR_VERSION,
    LEGACY_NAME,
    USED_LEGACY_NAME,
    USED_VERSIONED_NAME,
    VERSIONED_NAME,
    Deleter,
    DLDataType,
    DLDataTypeCode,
    DLDevice,
    DLDeviceType,
    DLManagedTensor,
    DLManagedTensorVersioned,
    DLPackVersion,
    DLTensor,
    PyCapsule_Destructor,
    capsuleGetName,
    capsuleGetPointer,
    capsuleIsValid,
    capsuleNew,
    capsuleSetName,
    contiguousStrides,
    dtypeFromDLPack,
    dtypeToDLPack,
    rawCapsuleGetPointer,
    rawCapsuleIsValid,
    supportedDtypes,
    supportedText,
)

__all__ = [
    "DLDeviceType", "DLDataTypeCode", "DLDevice", "DLDataType", "DLTensor", "DLManagedTensor", "DLPackVersion",
    "DLManagedTensorVersioned", "ForeignOwner", "export", "fromDLPack", "fromCudaArrayInterface",
]


# --- export

class Export:
    """One exported capsule's C memory (the managed tensor, shape and strides) and the array it keeps alive."""

    __slots__ = ("managed", "shape", "strides", "array")

    def __init__(self, managed, shape, strides, array):
        self.managed, self.shape, self.strides, self.array = managed, shape, strides, array


exports = {}
"""{manager_ctx: `Export`} of every capsule whose deleter has not run yet."""


def releaseExport(managedType, address):
    try:
        key = managedType.from_address(address).manager_ctx
        exports.pop(key, None)
    except Exception:  # noqa: BLE001
        # NOTE: a consumer may call the deleter while the interpreter shuts down; nothing is left to release then
        pass


@Deleter
def legacyDeleter(address):
    releaseExport(DLManagedTensor, address)


@Deleter
def versionedDeleter(address):
    releaseExport(DLManagedTensorVersioned, address)


@PyCapsule_Destructor
def capsuleDestructor(capsule):
    # NOTE: per the standard, a capsule still named "dltensor"/"dltensor_versioned" was never consumed: its deleter is
    # ours to call. A consumer renames it to "used_..." and takes over the deleter.
    for name, managedType in ((LEGACY_NAME, DLManagedTensor), (VERSIONED_NAME, DLManagedTensorVersioned)):
        if rawCapsuleIsValid(capsule, name):
            address = rawCapsuleGetPointer(capsule, name)
            managed = managedType.from_address(address)
            if managed.deleter:
                managed.deleter(address)
            return


def checkMaxVersion(maxVersion):
    if maxVersion is None:
        return False
    try:
        major, minor = maxVersion
        major, minor = int(major), int(minor)
    except (TypeError, ValueError):
        raise ValueError("__dlpack__ expects max_version to be None or a (major, minor) tuple; got %r"
                         % (maxVersion,)) from None
    return major >= DLPACK_MAJOR_VERSION


def checkDevice(device, dlDevice):
    if dlDevice is None:
        return
    try:
        wanted = (int(dlDevice[0]), int(dlDevice[1]))
    except (TypeError, ValueError, IndexError):
        raise ValueError("__dlpack__ expects dl_device to be None or a (device type, id) tuple; got %r"
                         % (dlDevice,)) from None
    if wanted != (int(device[0]), int(device[1])):
        raise BufferError(
            "this GPUArray lives on %s and exports only there; got dl_device %s (GPUArray.get() makes a host copy)"
            % (deviceText(device), deviceText(wanted))
        )


def deviceText(device):
    kind, idx = int(device[0]), int(device[1])
    name = DLDeviceType(kind).name if kind in DLDeviceType.__members__.values() else "device type %d" % kind
    return "(%s, %d)" % (name, idx)


def export(ary, device, *, max_version=None, dl_device=None, copy=None):
    """A DLPack capsule of the GPUArray `ary`, which lives on `device` (``(DLDeviceType, id)``); the work of
    ``GPUArray.__dlpack__`` once the backend has dealt with the stream.

    The capsule is ``"dltensor_versioned"`` (a `DLManagedTensorVersioned`, version 1.0) when `max_version` is at least
    (1, 0), else ``"dltensor"`` (a `DLManagedTensor`). Shape and strides (in elements, always given) describe the
    C-contiguous array; ``data`` is ``ary.ptr`` and ``byte_offset`` 0, as PyTorch, CuPy and numpy do. The capsule, and
    after it the consumer, keeps `ary` (and so its memory-pool block) alive until the deleter runs.

    Args:
        ary (GPUArray): any shape (0-d and empty too), dtype bool, int8..64, uint8..64, float16/32/64, complex64/128.
        max_version (tuple of int or None): the highest DLPack version the consumer supports.
        dl_device (tuple or None): the device the consumer wants; only `device` itself is possible.
        copy (bool or None): True exports a copy (flagged ``IS_COPIED`` in a versioned capsule); False and None share.

    Raises:
        BufferError: `dl_device` is another device, or the dtype has no DLPack code (long double).
        ValueError: a malformed `max_version` or `dl_device`.
    """
    versioned = checkMaxVersion(max_version)
    checkDevice(device, dl_device)
    dltype = dtypeToDLPack(ary.dtype)
    if copy:
        ary = ary.copy()

    ndim = len(ary.shape)
    shape = (ctypes.c_int64 * max(ndim, 1))(*ary.shape)
    strides = (ctypes.c_int64 * max(ndim, 1))(*contiguousStrides(ary.shape))

    managed = DLManagedTensorVersioned() if versioned else DLManagedTensor()
    tensor = managed.dl_tensor
    tensor.data = ary.ptr or None
    tensor.device = DLDevice(int(device[0]), int(device[1]))
    tensor.ndim = ndim
    tensor.dtype = dltype
    tensor.shape = ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64))
    tensor.strides = ctypes.cast(strides, ctypes.POINTER(ctypes.c_int64))
    tensor.byte_offset = 0

    record = Export(managed, shape, strides, ary)
    managed.manager_ctx = id(record)
    if versioned:
        managed.version = DLPackVersion(DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION)
        managed.deleter = versionedDeleter
        managed.flags = DLPACK_FLAG_BITMASK_IS_COPIED if copy else 0
    else:
        managed.deleter = legacyDeleter

    exports[id(record)] = record
    try:
        return capsuleNew(ctypes.addressof(managed), VERSIONED_NAME if versioned else LEGACY_NAME, capsuleDestructor)
    except BaseException:
        exports.pop(id(record), None)
        raise


# --- import

class ForeignOwner:
    """Keeps memory another library owns alive for the GPUArrays that use it, and gives it back once.

    Args:
        keep: what keeps the memory alive (a consumed capsule, or the producer of a CUDA array interface).
        managed (int or None): the address of the consumed `DLManagedTensor` / `DLManagedTensorVersioned`, whose
            deleter runs when this object dies (None: nothing to call).
        managedType: the struct `managed` points to.
    """

    def __init__(self, keep, managed=None, managedType=None):
        self.keep, self.managed, self.managedType = keep, managed, managedType

    def release(self):
        managed, self.managed = self.managed, None
        if managed is not None:
            deleter = self.managedType.from_address(managed).deleter
            if deleter:
                deleter(managed)
        self.keep = None

    def __del__(self):
        self.release()

    def __repr__(self):
        return "ForeignOwner(%r)" % (self.keep,)


def capsuleName(capsule):
    try:
        name = capsuleGetName(capsule)
    except Exception:  # noqa: BLE001
        return None
    return None if name is None else name.decode(errors="replace")


def producerText(obj):
    return "%s.%s" % (type(obj).__module__, type(obj).__qualname__)


def callDLPack(obj, stream):
    """``obj.__dlpack__(max_version=(1, 0), stream=...)``, falling back to the call without `max_version` for producers
    that predate it (they raise TypeError for the keyword), as the standard asks consumers to do."""
    kwargs = {} if stream is None else {"stream": stream}
    try:
        return obj.__dlpack__(max_version=(DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION), **kwargs)
    except TypeError:
        return obj.__dlpack__(**kwargs)


def unpackCapsule(capsule, producer):
    """``(address, managedType, tensor, flags)`` of an unconsumed DLPack capsule.

    Raises:
        TypeError: not a DLPack capsule (or one already consumed), naming what came.
        BufferError: a versioned capsule of a major version other than 1.
    """
    if capsuleIsValid(capsule, VERSIONED_NAME):
        address = capsuleGetPointer(capsule, VERSIONED_NAME)
        managed = DLManagedTensorVersioned.from_address(address)
        if managed.version.major != DLPACK_MAJOR_VERSION:
            raise BufferError(
                "from_dlpack supports DLPack %d.x; %s exported version %d.%d"
                % (DLPACK_MAJOR_VERSION, producer, managed.version.major, managed.version.minor)
            )
        return address, DLManagedTensorVersioned, managed.dl_tensor, int(managed.flags)
    if capsuleIsValid(capsule, LEGACY_NAME):
        address = capsuleGetPointer(capsule, LEGACY_NAME)
        return address, DLManagedTensor, DLManagedTensor.from_address(address).dl_tensor, 0

    name = capsuleName(capsule) if type(capsule).__name__ == "PyCapsule" else None
    got = "a capsule named %r (consumed already?)" % name if name is not None else "%r" % (type(capsule).__name__,)
    raise TypeError(
        "from_dlpack expects %s.__dlpack__() to return a DLPack capsule ('dltensor' or 'dltensor_versioned'); got %s"
        % (producer, got)
    )


def checkedLayout(tensor, producer):
    """``(shape, address of the first element)`` of a C-contiguous DLTensor (0 for a NULL data pointer).

    Raises:
        ValueError: strides of another layout, suggesting ``.contiguous()`` / ``np.ascontiguousarray``.
    """
    ndim = int(tensor.ndim)
    if ndim < 0:
        raise ValueError("from_dlpack got a DLTensor with ndim %d from %s" % (ndim, producer))
    shape = tuple(int(tensor.shape[i]) for i in range(ndim))
    if any(dim < 0 for dim in shape):
        raise ValueError("from_dlpack got a negative dimension in shape %s from %s" % (shape, producer))

    if tensor.strides:
        checkContiguous(shape, tuple(int(tensor.strides[i]) for i in range(ndim)), 1, "elements", producer)
    data = tensor.data or 0
    return shape, (data + int(tensor.byte_offset)) if data else 0


def checkContiguous(shape, strides, itemsize, unit, producer):
    """Raises ValueError, suggesting ``.contiguous()`` / ``np.ascontiguousarray``, unless `strides` (in `unit`s:
    elements for DLPack with `itemsize` 1, bytes for the CUDA array interface) lay out `shape` C-contiguously."""
    expected = tuple(step * itemsize for step in contiguousStrides(shape))
    # NOTE: a dimension of size 1 is never stepped over, so its stride is free (PyTorch leaves arbitrary ones there),
    # and an empty array has no element to misplace
    if len(strides) == len(shape) and (
        0 in shape or all(s == e for s, e, dim in zip(strides, expected, shape, strict=True) if dim != 1)
    ):
        return
    raise ValueError(
        "from_dlpack expects a C-contiguous tensor (strides %s %s for shape %s); got strides %s from %s: make it "
        "contiguous first (tensor.contiguous() in PyTorch, np.ascontiguousarray in numpy, cupy.ascontiguousarray in "
        "CuPy)" % (expected, unit, shape, strides, producer)
    )


def backendForDevice(device, producer):
    """``(backend name, stream to ask the producer for)`` for a DLPack device.

    Raises:
        BufferError: a device no backend of this library holds.
    """
    kind = int(device[0])
    if kind == DLDeviceType.kDLCPU:
        return "cpu", None
    if kind == DLDeviceType.kDLCUDA:
        return "cuda", 1
    raise BufferError(
        "from_dlpack takes tensors on the CPU (kDLCPU) or on the CUDA device (kDLCUDA); got one on %s from %s"
        % (deviceText(device), producer)
    )


def fromDLPack(obj, backendName=None):
    """A GPUArray sharing the memory of `obj` (see ``PuzzleLib.Backend.gpuarray.from_dlpack``, which documents the
    arguments and errors); `backendName` (``"cpu"``, ``"cuda"`` or None for the one that holds the memory) restricts
    where the memory may be."""
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Backend.Dispatch import backendNamed

    if isinstance(obj, gpuarray.GPUArray):
        checkBackend(obj.backend.name, backendName, obj)
        return obj._view(obj.shape, 0)

    producer = producerText(obj)
    if not hasattr(obj, "__dlpack__"):
        if hasattr(obj, "__cuda_array_interface__"):
            checkBackend("cuda", backendName, obj)
            return fromCudaArrayInterface(obj)
        raise TypeError(
            "from_dlpack expects an object with __dlpack__ (a PyTorch tensor, a CuPy or numpy array, a GPUArray)%s; "
            "got %s: use gpuarray.to_gpu to copy a host array"
            % ("" if backendName == "cpu" else " or __cuda_array_interface__", producer)
        )

    if not hasattr(obj, "__dlpack_device__"):
        raise TypeError("from_dlpack expects %s to have __dlpack_device__ next to __dlpack__" % producer)
    claimed = obj.__dlpack_device__()
    name, stream = backendForDevice(claimed, producer)
    checkBackend(name, backendName, obj)
    if name == "cuda":
        checkCuda("a tensor on CUDA device %d" % int(claimed[1]), producer)
    backend = backendNamed(name)
    if name == "cuda":
        backend.gpuarray.checkDeviceOrdinal(int(claimed[1]), producer)

    capsule = callDLPack(obj, stream)
    address, managedType, tensor, flags = unpackCapsule(capsule, producer)
    if flags & DLPACK_FLAG_BITMASK_READ_ONLY:
        raise ValueError(
            "from_dlpack got a read-only tensor from %s; GPUArrays are writable, so it is refused: pass a writable "
            "one (a copy, e.g. np.array(x))" % producer
        )
    device = (int(tensor.device.device_type), int(tensor.device.device_id))
    if device != (int(claimed[0]), int(claimed[1])):
        raise BufferError("from_dlpack: %s said it lives on %s but exported a tensor on %s"
                          % (producer, deviceText(claimed), deviceText(device)))
    dtype = dtypeFromDLPack(tensor.dtype)
    shape, ptr = checkedLayout(tensor, producer)

    # NOTE: consumed only now, once nothing is left to refuse: a refused capsule keeps its name, so its destructor
    # gives the tensor back to the producer
    capsuleSetName(capsule, USED_VERSIONED_NAME if managedType is DLManagedTensorVersioned else USED_LEGACY_NAME)
    owner = ForeignOwner(capsule, address, managedType)
    return backend.gpuarray.foreignArray(ptr, shape, dtype, owner)


def checkCuda(what, producer):
    """Raises `PuzzleLib.Config.ConfigError`, naming `what` came from `producer`, where the CUDA backend cannot work."""
    problem = Config.cudaProblem()
    if problem is not None:
        raise Config.ConfigError(
            "from_dlpack got %s from %s, and the CUDA backend cannot work here: %s" % (what, producer, problem)
        )


def checkBackend(name, wanted, obj):
    if wanted is not None and name != wanted:
        raise BufferError(
            "the %s backend's from_dlpack takes memory of its own device; %s holds %s memory: use "
            "PuzzleLib.Backend.gpuarray.from_dlpack" % (wanted, producerText(obj), name)
        )


def fromCudaArrayInterface(obj):
    """A CUDA GPUArray sharing the memory described by ``obj.__cuda_array_interface__`` (version 3 of the CUDA array
    interface, https://numba.readthedocs.io/en/stable/cuda/cuda_array_interface.html); `obj` is kept alive.

    The memory is taken to be on the CUDA backend's device (the interface does not say which). A ``stream`` other than
    None, 1 or 2 is waited for by synchronizing the device.

    Raises:
        PuzzleLib.Config.ConfigError: the CUDA backend cannot work here.
        ValueError: a read-only buffer, a mask, strides other than C-contiguous.
        TypeError: a dtype a GPUArray cannot hold.
    """
    from PuzzleLib.Backend.Dispatch import backendNamed

    producer = producerText(obj)
    checkCuda("a CUDA array interface", producer)
    backend = backendNamed("cuda")

    desc = obj.__cuda_array_interface__
    shape = tuple(int(dim) for dim in desc["shape"])
    ptr, readOnly = desc["data"]
    if readOnly:
        raise ValueError("from_dlpack got a read-only CUDA array from %s; GPUArrays are writable" % producer)
    if desc.get("mask") is not None:
        raise ValueError("from_dlpack got a masked CUDA array from %s; masks are not supported" % producer)
    dtype = np.dtype(desc["typestr"])
    if dtype not in supportedDtypes:
        raise TypeError("from_dlpack expects %s; got dtype %s from %s" % (supportedText, dtype, producer))

    if desc.get("strides") is not None:
        checkContiguous(shape, tuple(int(step) for step in desc["strides"]), dtype.itemsize, "bytes", producer)
    stream = desc.get("stream")
    if stream == 0:
        raise ValueError("from_dlpack: %s gave stream 0 in its CUDA array interface, which v3 forbids" % producer)
    backend.gpuarray.waitForStream(stream)
    return backend.gpuarray.foreignArray(int(ptr or 0), shape, dtype, ForeignOwner(obj))
