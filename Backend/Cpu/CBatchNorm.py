"""Batch normalization of the CPU backend in C: `CPlan`, whose methods call ``Kernels/BatchNorm.c`` (which says how
the work is cut and why the numbers hold) with one packed argument struct each. Twin of `Backend.Cpu.NumpyBatchNorm`
(the fallback, and the passes fused with an activation or a residual, which the C source does not have yet) and
`Backend.Cuda.BatchNormKernels`.

Data is float32 or float64 (float16 too where the compiler has ``_Float16``: computed in float32); per-map arrays are
float32, or float32 and float64 each with float64 data (as the contract has it), but for the moments' outputs, float32
or float64 with any data. Every call runs on `PuzzleLib.Config.cpuThreads` cores (one below 32768 elements) and
allocates nothing from the pool.

A call packs its arguments with `struct` into the layout of the entry's C struct (`ARGUMENTS`, checked against the
library's own sizes when it loads): one pointer crosses ctypes instead of a dozen converted values.
"""

import ctypes
import struct

import numpy as np

from PuzzleLib import Config
from PuzzleLib.Backend.Cpu.NumpyBatchNorm import NumpyPlan
from PuzzleLib.Backend.Cpu.SourceLibrary import loadLibrary

NAME = "c"

# NOTE: each entry's argument struct as a struct format, field by field in the order of the C declaration (native
# alignment, as the C compiler lays them out): the view (outer, maps, inner, threads, doubleMask), then the entry's own
VIEW = "qqqiI"
ARGUMENTS = {
    "bnTrainForward": VIEW + "PP" + "PP" + "PPPP" + "P" + "dd" + "Pd" + "P",
    "bnMoments": VIEW + "P" + "PP",
    "bnNormalize": VIEW + "PP" + "PPPP" + "i" + "d",
    "bnBackward": VIEW + "PPP" + "i" + "PPPPP" + "dd",
}
SUFFIXES = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64", np.dtype(np.float16): "f16"}

# bnBackward's modes
TRAINING, FROZEN, INPUT_GRADIENT = 0, 1, 2
# NOTE: bnMoments and the training forward share the statistics outputs' bits
SAVED_BITS = 4

# NOTE: {dtype character code: {entry: (C function, struct.Struct of its arguments)}}, filled by `load`
kernels = {}
dataTypes = ()


def load():
    """Compiles (or finds in the cache) and loads the C source; fills `kernels` and `dataTypes`.

    Raises:
        SourceLibrary.CompileError, OSError: the source cannot be built or loaded here.
        RuntimeError: the library's argument structs differ from `ARGUMENTS` (a source and a declaration out of step).
    """
    global dataTypes
    library = loadLibrary("BatchNorm.c")
    library.bnArgumentBytes.argtypes, library.bnArgumentBytes.restype = [ctypes.c_int], ctypes.c_size_t
    layouts = {}
    for entry, (name, layout) in enumerate(ARGUMENTS.items()):
        layouts[name] = struct.Struct(layout)
        if library.bnArgumentBytes(entry) < layouts[name].size:
            raise RuntimeError("%s's arguments take %d bytes in C, %d as declared" % (
                name, library.bnArgumentBytes(entry), layouts[name].size))
    types = [np.dtype(np.float32), np.dtype(np.float64)] + ([np.dtype(np.float16)] if library.bnHasFloat16() else [])
    for dtype in types:
        functions = {}
        for name in ARGUMENTS:
            function = getattr(library, "%s_%s" % (name, SUFFIXES[dtype]))
            function.argtypes, function.restype = [ctypes.c_char_p], ctypes.c_int
            functions[name] = (function, layouts[name].pack)
        kernels[dtype.char] = functions
    dataTypes = tuple(types)
    return library


def doubleMask(*arrays, first=0):
    """Bit ``first + k`` set where the k-th per-map array is float64 (None counts as float32)."""
    mask = 0
    for k, ary in enumerate(arrays):
        if ary is not None and ary.dtype == np.float64:
            mask |= 1 << (first + k)
    return mask


def ptr(ary):
    """The address of `ary`, 0 (a null pointer) for None."""
    return 0 if ary is None else ary.ptr


def check(status):
    if status != 0:
        raise MemoryError("the CPU batch-norm kernel could not allocate its per-map workspace")


class CPlan(NumpyPlan):
    """The C kernels' plan: the entries of its data type bound once, the view packed with the thread count of each
    call. The per-map steps of Batch Renormalization (`renormStatistics`, `renormCombine`) are the numpy plan's, which
    both kernel sets share."""

    name = NAME

    def __init__(self, backend, layout, dtype, options):
        super().__init__(backend, layout, dtype, options)
        functions = kernels[dtype.char]
        self.trainCall, self.momentsCall = functions["bnTrainForward"], functions["bnMoments"]
        self.normalizeCall, self.backwardCall = functions["bnNormalize"], functions["bnBackward"]
        # NOTE: per-map arrays are float32 with float32 and float16 data (the contract): only float64 data has a mask
        self.wide = dtype == np.float64

    def trainForward(self, call):
        function, pack = self.trainCall
        outer, maps, inner = self.shape3
        wide = self.wide
        mask = doubleMask(call.scale, call.bias, call.mean, call.var, call.savemean, call.saveinvvar) if wide else 0
        check(function(pack(
            outer, maps, inner, Config.cpuThreads, mask, call.data.ptr, call.out.ptr, call.scale.ptr, call.bias.ptr,
            ptr(call.mean), ptr(call.var), call.savemean.ptr, call.saveinvvar.ptr, ptr(call.skipped), self.epsilon,
            call.factor, ptr(call.backup), call.stamp or 0.0, ptr(call.mirror),
        )))

    def batchStatistics(self, call):
        function, pack = self.momentsCall
        outer, maps, inner = self.shape3
        mask = doubleMask(call.mean, call.var, first=SAVED_BITS)
        check(function(pack(outer, maps, inner, Config.cpuThreads, mask, call.data.ptr, call.mean.ptr, call.var.ptr)))

    def normalizeArguments(self, call, centre, second, isVariance):
        outer, maps, inner = self.shape3
        mask = doubleMask(call.scale, call.bias, centre, second) if self.wide else 0
        return self.normalizeCall[1](
            outer, maps, inner, Config.cpuThreads, mask, call.data.ptr, call.out.ptr, call.scale.ptr, call.bias.ptr,
            centre.ptr, second.ptr, isVariance, self.epsilon,
        )

    # NOTE: the primitives call their C function themselves (the arguments are packed by a call that has returned), so
    # that a module's call reaches the kernel in as few frames as it can

    def normalize(self, call):
        check(self.normalizeCall[0](self.normalizeArguments(call, call.savemean, call.saveinvvar, 0)))

    def evalForward(self, call):
        check(self.normalizeCall[0](self.normalizeArguments(call, call.mean, call.var, 1)))

    def backwardArguments(self, call, mode, centre, second, count=0.0):
        outer, maps, inner = self.shape3
        mask = doubleMask(call.scale, centre, second, call.scalegrad, call.biasgrad) if self.wide else 0
        return self.backwardCall[1](
            outer, maps, inner, Config.cpuThreads, mask, call.data.ptr, call.grad.ptr, ptr(call.ingrad), mode,
            call.scale.ptr, centre.ptr, second.ptr, call.scalegrad.ptr, call.biasgrad.ptr, self.epsilon, count,
        )

    def backward(self, call):
        check(self.backwardCall[0](self.backwardArguments(call, TRAINING, call.savemean, call.saveinvvar)))

    def frozenBackward(self, call):
        check(self.backwardCall[0](self.backwardArguments(call, FROZEN, call.mean, call.var)))

    def inputGradient(self, call):
        arguments = self.backwardArguments(call, INPUT_GRADIENT, call.savemean, call.saveinvvar, float(call.count))
        check(self.backwardCall[0](arguments))
