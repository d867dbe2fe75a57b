"""Batch-normalization primitives of the CPU backend in C (`BatchNormPrimitives` of `Backend.Contract`, which states
what each function computes): thin ctypes calls into ``Kernels/BatchNorm.c``, which says how the work is cut and why the
numbers hold. Twin of `Backend.Cpu.NumpyBatchNorm` (the fallback) and `Backend.Cuda.BatchNormKernels`.

Data is float32 or float64 (float16 too where the compiler has ``_Float16``: computed in float32); per-map arrays are
float32, or float32 and float64 each with float64 data (as the contract has it), but for the moments' outputs, float32
or float64 with any data. Every call runs on `PuzzleLib.Config.cpuThreads` cores (one below 32768 elements) and
allocates nothing from the pool.

The passes fused with an activation or a residual (`Contract.FusedActivation`) are not in the C source yet: those
calls run `NumpyBatchNorm`'s, which fuse them chunk by chunk.
"""

import ctypes

import numpy as np

from PuzzleLib import Config
from PuzzleLib.Backend.Cpu import NumpyBatchNorm
from PuzzleLib.Backend.Cpu.SourceLibrary import loadLibrary

NAME = "c"

pointer, i64, cint, double, uint = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_uint
SHAPE = [i64, i64, i64, cint]
SIGNATURES = {
    "bnTrainForward": [pointer, pointer] + SHAPE + [pointer] * 7 + [double, double, uint],
    "bnMoments": [pointer] + SHAPE + [pointer, pointer, uint],
    "bnNormalize": [pointer, pointer] + SHAPE + [pointer] * 4 + [cint, double, uint],
    "bnBackward": [pointer, pointer, pointer] + SHAPE + [cint] + [pointer] * 5 + [double, double, uint],
}
SUFFIXES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}
float64 = np.dtype(np.float64)

# bnBackward's modes
TRAINING, FROZEN, INPUT_GRADIENT = 0, 1, 2
# NOTE: bnMoments and the training forward share the statistics outputs' bits
SAVED_BITS = 4

# NOTE: keyed by the dtype's character code ("f", "d", "e"): a numpy dtype hashes slowly, and every call looks up here
kernels = {}
dataTypes = ()


def load():
    """Compiles (or finds in the cache) and loads the C source; fills `kernels` ``{dtype: {name: function}}`` and
    `dataTypes`. Raises `SourceLibrary.CompileError` or OSError when that cannot be done."""
    global dataTypes
    library = loadLibrary("BatchNorm.c")
    types = [np.dtype(np.float32), np.dtype(np.float64)] + ([np.dtype(np.float16)] if library.bnHasFloat16() else [])
    for dtype in types:
        functions = {}
        for name, argtypes in SIGNATURES.items():
            function = getattr(library, "%s_%s" % (name, SUFFIXES[dtype]))
            function.argtypes, function.restype = argtypes, cint
            functions[name] = function
        kernels[dtype.char] = functions
    dataTypes = tuple(types)
    return library


def doubleMask(*arrays, first=0):
    """Bit ``first + k`` set where the k-th per-map array is float64 (None counts as float32)."""
    mask = 0
    for k, ary in enumerate(arrays):
        if ary is not None and ary.dtype == float64:
            mask |= 1 << (first + k)
    return mask


def perMapMask(data, *arrays):
    """`doubleMask` of the per-map arrays of a call on `data`: 0 at once unless the data is float64, as per-map arrays
    are float32 with float32 and float16 data (`Backend.Contract`)."""
    return doubleMask(*arrays) if data.dtype.char == "d" else 0


def ptr(ary):
    return None if ary is None else ary.ptr


def check(status):
    if status != 0:
        raise MemoryError("the CPU batch-norm kernel could not allocate its per-map workspace")


def trainForward(
    data, out, shape3, *, scale, bias, running, saved, epsilon, factor, skipped, activation=None, residual=None
):
    if activation is not None or residual is not None:
        NumpyBatchNorm.trainForward(
            data, out, shape3, scale=scale, bias=bias, running=running, saved=saved, epsilon=epsilon, factor=factor,
            skipped=skipped, activation=activation, residual=residual,
        )
        return
    runMean, runVar = (None, None) if running is None else running
    check(kernels[data.dtype.char]["bnTrainForward"](
        data.ptr, out.ptr, *shape3, Config.cpuThreads, scale.ptr, bias.ptr, ptr(runMean), ptr(runVar),
        saved.mean.ptr, saved.invstd.ptr, ptr(skipped), epsilon, factor,
        perMapMask(data, scale, bias, runMean, runVar, saved.mean, saved.invstd),
    ))


def batchStatistics(data, shape3, *, saved):
    check(kernels[data.dtype.char]["bnMoments"](
        data.ptr, *shape3, Config.cpuThreads, saved.mean.ptr, saved.var.ptr,
        doubleMask(saved.mean, saved.var, first=SAVED_BITS),
    ))


def normalize(data, out, shape3, *, scale, bias, saved, activation=None, residual=None):
    if activation is not None or residual is not None:
        NumpyBatchNorm.normalize(
            data, out, shape3, scale=scale, bias=bias, saved=saved, activation=activation, residual=residual
        )
        return
    check(kernels[data.dtype.char]["bnNormalize"](
        data.ptr, out.ptr, *shape3, Config.cpuThreads, scale.ptr, bias.ptr, saved.mean.ptr, saved.invstd.ptr, 0, 0.0,
        perMapMask(data, scale, bias, saved.mean, saved.invstd),
    ))


def evalForward(data, out, shape3, *, scale, bias, running, epsilon, activation=None, residual=None):
    if activation is not None or residual is not None:
        NumpyBatchNorm.evalForward(
            data, out, shape3, scale=scale, bias=bias, running=running, epsilon=epsilon, activation=activation,
            residual=residual,
        )
        return
    check(kernels[data.dtype.char]["bnNormalize"](
        data.ptr, out.ptr, *shape3, Config.cpuThreads, scale.ptr, bias.ptr, running.mean.ptr, running.var.ptr, 1,
        epsilon, perMapMask(data, scale, bias, running.mean, running.var),
    ))


def backwardCall(mode, data, grad, ingrad, shape3, scale, centre, second, scalegrad, biasgrad, epsilon=0.0,
                 count=0.0):
    check(kernels[data.dtype.char]["bnBackward"](
        data.ptr, grad.ptr, ptr(ingrad), *shape3, Config.cpuThreads, mode, scale.ptr, centre.ptr, second.ptr,
        scalegrad.ptr, biasgrad.ptr, epsilon, count, perMapMask(data, scale, centre, second, scalegrad, biasgrad),
    ))


def backward(
    data, grad, ingrad, shape3, *, scale, saved, scalegrad, biasgrad, activation=None, outdata=None, bias=None,
    resgrad=None,
):
    if activation is not None:
        NumpyBatchNorm.backward(
            data, grad, ingrad, shape3, scale=scale, saved=saved, scalegrad=scalegrad, biasgrad=biasgrad,
            activation=activation, outdata=outdata, bias=bias, resgrad=resgrad,
        )
        return
    backwardCall(TRAINING, data, grad, ingrad, shape3, scale, saved.mean, saved.invstd, scalegrad, biasgrad)


def inputGradient(data, grad, ingrad, shape3, *, scale, saved, scalegrad, biasgrad, count):
    backwardCall(
        INPUT_GRADIENT, data, grad, ingrad, shape3, scale, saved.mean, saved.invstd, scalegrad, biasgrad,
        count=float(count),
    )


def frozenBackward(
    data, grad, ingrad, shape3, *, scale, running, epsilon, scalegrad, biasgrad, activation=None, outdata=None,
    resgrad=None,
):
    if activation is not None:
        NumpyBatchNorm.frozenBackward(
            data, grad, ingrad, shape3, scale=scale, running=running, epsilon=epsilon, scalegrad=scalegrad,
            biasgrad=biasgrad, activation=activation, outdata=outdata, resgrad=resgrad,
        )
        return
    backwardCall(FROZEN, data, grad, ingrad, shape3, scale, running.mean, running.var, scalegrad, biasgrad, epsilon)


def renormStatistics(
    moments, count, *, scale, bias, running, renorm, saved, correction, corrected, epsilon, factor, renormMomentum,
    clipping, skipped,
):
    """Per-map vectors only: the numpy step (`NumpyBatchNorm.renormStatistics`) serves both kernel sets."""
    NumpyBatchNorm.renormStatistics(
        moments, count, scale=scale, bias=bias, running=running, renorm=renorm, saved=saved, correction=correction,
        corrected=corrected, epsilon=epsilon, factor=factor, renormMomentum=renormMomentum, clipping=clipping,
        skipped=skipped,
    )


def renormCombine(correction, x, y, out):
    NumpyBatchNorm.renormCombine(correction, x, y, out)
