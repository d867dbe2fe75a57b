"""DLPack's C structures (``dlpack.h`` v1.0), declared once with ctypes, the CPython capsule functions they travel in,
and the mapping of numpy dtypes to DLPack's: what `Backend.DLPack`'s export and import are built on."""

import ctypes
import enum

import numpy as np


class DLDeviceType(enum.IntEnum):
    """``DLDeviceType`` of dlpack.h (the kinds this library meets; the numbers are the header's)."""

    kDLCPU = 1
    kDLCUDA = 2
    kDLCUDAHost = 3
    kDLOpenCL = 4
    kDLVulkan = 7
    kDLMetal = 8
    kDLVPI = 9
    kDLROCM = 10
    kDLROCMHost = 11
    kDLExtDev = 12
    kDLCUDAManaged = 13
    kDLOneAPI = 14
    kDLWebGPU = 15
    kDLHexagon = 16


class DLDataTypeCode(enum.IntEnum):
    """``DLDataTypeCode`` of dlpack.h."""

    kDLInt = 0
    kDLUInt = 1
    kDLFloat = 2
    kDLOpaqueHandle = 3
    kDLBfloat = 4
    kDLComplex = 5
    kDLBool = 6


DLPACK_MAJOR_VERSION, DLPACK_MINOR_VERSION = 1, 0
DLPACK_FLAG_BITMASK_READ_ONLY = 1 << 0
DLPACK_FLAG_BITMASK_IS_COPIED = 1 << 1


class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


# NOTE: dlpack.h declares the deleter as taking a pointer to its own struct; a void pointer is the same in the C ABI and
# lets one callback type serve both structs
Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", Deleter)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [
        ("version", DLPackVersion),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", Deleter),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", DLTensor),
    ]


# --- the capsule API, with prototypes of our own (setting argtypes on ctypes.pythonapi would change them for everyone)

PyCapsule_Destructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def pythonApi(name, restype, *argtypes):
    return ctypes.PYFUNCTYPE(restype, *argtypes)((name, ctypes.pythonapi))


capsuleNew = pythonApi("PyCapsule_New", ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, PyCapsule_Destructor)
capsuleIsValid = pythonApi("PyCapsule_IsValid", ctypes.c_int, ctypes.py_object, ctypes.c_char_p)
capsuleGetPointer = pythonApi("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)
capsuleSetName = pythonApi("PyCapsule_SetName", ctypes.c_int, ctypes.py_object, ctypes.c_char_p)
capsuleGetName = pythonApi("PyCapsule_GetName", ctypes.c_char_p, ctypes.py_object)
# NOTE: a capsule destructor receives a capsule whose reference count is already 0: it must be passed on as a plain
# pointer (a py_object argument would take a new reference to a dying object)
rawCapsuleIsValid = pythonApi("PyCapsule_IsValid", ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p)
rawCapsuleGetPointer = pythonApi("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)

# NOTE: a capsule keeps a pointer to its name, not a copy: the names live as long as this module
LEGACY_NAME = ctypes.c_char_p(b"dltensor")
VERSIONED_NAME = ctypes.c_char_p(b"dltensor_versioned")
USED_LEGACY_NAME = ctypes.c_char_p(b"used_dltensor")
USED_VERSIONED_NAME = ctypes.c_char_p(b"used_dltensor_versioned")


# --- dtypes

def dtypeToDLPack(dtype):
    """The `DLDataType` of a numpy dtype: bool, int8..64, uint8..64, float16/32/64, complex64/128.

    Raises:
        BufferError: another dtype (long double, for one), which DLPack cannot describe, naming it.
    """
    dtype = np.dtype(dtype)
    codes = {"b": DLDataTypeCode.kDLBool, "i": DLDataTypeCode.kDLInt, "u": DLDataTypeCode.kDLUInt,
             "f": DLDataTypeCode.kDLFloat, "c": DLDataTypeCode.kDLComplex}
    if dtype.kind not in codes or dtype not in supportedDtypes:
        raise BufferError(
            "DLPack export supports %s; got a GPUArray of dtype %s" % (supportedText, dtype)
        )
    return DLDataType(codes[dtype.kind], dtype.itemsize * 8, 1)


supportedDtypes = tuple(np.dtype(t) for t in (
    np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
    np.float16, np.float32, np.float64, np.complex64, np.complex128,
))
supportedText = "bool, int8..int64, uint8..uint64, float16/32/64 and complex64/128"


def dtypeFromDLPack(dltype):
    """The numpy dtype of a `DLDataType`.

    Raises:
        TypeError: a dtype a GPUArray cannot hold (bfloat16, float8, vectors with lanes > 1, opaque handles), named.
    """
    code, bits, lanes = int(dltype.code), int(dltype.bits), int(dltype.lanes)
    if lanes != 1:
        raise TypeError("from_dlpack expects scalar elements (lanes 1); got a DLPack dtype with %d lanes" % lanes)
    if code == DLDataTypeCode.kDLBfloat:
        raise TypeError(
            "from_dlpack got a bfloat16 tensor; GPUArrays hold %s, not bfloat16: convert it first (e.g. "
            "tensor.float() or tensor.half() in PyTorch)" % supportedText
        )
    kinds = {DLDataTypeCode.kDLBool: "b", DLDataTypeCode.kDLInt: "i", DLDataTypeCode.kDLUInt: "u",
             DLDataTypeCode.kDLFloat: "f", DLDataTypeCode.kDLComplex: "c"}
    if code in kinds and bits % 8 == 0:
        dtype = np.dtype("%s%d" % (kinds[code], bits // 8))
        if dtype in supportedDtypes:
            return dtype
    name = DLDataTypeCode(code).name if code in DLDataTypeCode.__members__.values() else "code %d" % code
    raise TypeError("from_dlpack expects %s; got a DLPack dtype of %s and %d bits" % (supportedText, name, bits))


def contiguousStrides(shape):
    """Strides in elements of a C-contiguous array of `shape`."""
    strides, step = [], 1
    for dim in reversed(shape):
        strides.append(step)
        step *= max(dim, 1)
    return tuple(reversed(strides))
