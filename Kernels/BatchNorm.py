"""Declaration of ``BatchNorm.cu``: the constants it is built with and the parameters of every entry point.

Entry points come in families that differ by suffix: data type (``f32``, ``f16``), vector width (``v1`` scalar,
``v2``/``v4``/``v8``: 4 to 16-byte vectors), for the elementwise passes the mode (`modes`), and for the spatial
kernels whether the maps' extent is a multiple of the vector (`ALIGNED_SEGMENTS`) and, for the spatial reductions,
whether a block or a thread walks a map (`BLOCK_PER_MAP`); for the resident passes (the blocks of a map, one or the
several it is split over, which exchange their sums, holding its slice in registers: `trainResident`,
`gradResident`; over rows, the blocks of a column of channels: `trainResidentRows`, `gradResidentRows`), whether a
residual is added and how many vectors a thread holds (`residentHeld`, `rowsResidentHeld`). See the source's
header for what each kernel computes; `Backend.Cuda.BatchNormKernels` launches them.
"""

from typing import NamedTuple

from PuzzleLib.Kernels.Signature import Float32, Float64, Int32, Int64, Pointer, Signature, Struct

SOURCE = "BatchNorm.cu"

# threads of every block (the rows kernels' blocks have at most as many)
BLOCK_SIZE = 256
# vector loads each thread issues before it uses the first (the reductions' and the elementwise passes' main loops)
LOADS = 4
# counters of the reductions' columns of blocks (maps, or groups of maps, whose partials one block merges): a grid with
# more columns than counters finishes the columns that share one together
COLUMN_COUNTERS = 4096
# threads of the resident passes' blocks at most (the blocks of a map holding its slice in registers)
RESIDENT_THREADS = 512
# blocks of a resident pass whose maps are split over several blocks at most (the source keeps 3 doubles of each
# one's sums)
RESIDENT_PARTIALS = 8192
# the most values a thread holds in a resident pass whose maps are split over several blocks (the source's exchange
# of their sums on top of 64 values spills)
SPLIT_VALUES = 32
defines = {
    "BLOCK_SIZE": BLOCK_SIZE, "LOADS": LOADS, "COLUMN_COUNTERS": COLUMN_COUNTERS, "RESIDENT_THREADS": RESIDENT_THREADS,
    "RESIDENT_PARTIALS": RESIDENT_PARTIALS, "SPLIT_VALUES": SPLIT_VALUES,
}

# data-type suffix -> the vector widths compiled for it: up to 16 bytes (4 floats or 8 halves), and the narrower ones
# for contiguous lengths that 16 bytes do not divide
vectorWidths = {"f32": (1, 2, 4), "f16": (1, 2, 4, 8)}
# the `segments` suffix of the spatial statistics, gradient sums and elementwise passes: "" for segments (maps' inner
# extents) that the vector width divides, "Unaligned" for the others, compiled at the widest width only (masked
# vectors: 7x7 maps in 16-byte loads; the elementwise passes where no vector holds elements of more than two maps),
# and "Short" for the elementwise passes over maps whose vectors may hold elements of more than two maps (each
# element's coefficients: float16 maps of 2, 3 or 5 elements in vectors of 8), compiled for the types of
# `shortSegmentTypes` at the widest width only
ALIGNED_SEGMENTS, UNALIGNED_SEGMENTS, SHORT_SEGMENTS = "", "Unaligned", "Short"
# float32 vectors of 4 hold elements of two maps at most on maps of 2 elements or more, so only float16 needs them
shortSegmentTypes = ("f16",)
# the `walk` suffix of the spatial statistics and gradient sums: a block per map, or a thread per map (maps of few
# vectors)
BLOCK_PER_MAP, THREAD_PER_MAP = "", "PerThread"
modes = ("trainForward", "evalForward", "backward", "frozenBackward")
# the resident passes, compiled at the widest width: (pass, data type, segments) -> the `held` suffixes (vectors each
# thread holds: at most 64 values over aligned segments, 32 over unaligned ones and where a second input is combined
# with them, the residual and the backward's)
residentHeld = {
    ("train", "f32", ALIGNED_SEGMENTS): (4, 8, 16), ("train", "f32", UNALIGNED_SEGMENTS): (4, 8),
    ("train", "f16", ALIGNED_SEGMENTS): (4, 8), ("train", "f16", UNALIGNED_SEGMENTS): (4,),
    ("trainResidual", "f32", ALIGNED_SEGMENTS): (4, 8), ("trainResidual", "f32", UNALIGNED_SEGMENTS): (4, 8),
    ("trainResidual", "f16", ALIGNED_SEGMENTS): (4,), ("trainResidual", "f16", UNALIGNED_SEGMENTS): (4,),
    ("grad", "f32", ALIGNED_SEGMENTS): (4, 8), ("grad", "f32", UNALIGNED_SEGMENTS): (4, 8),
    ("grad", "f16", ALIGNED_SEGMENTS): (4,), ("grad", "f16", UNALIGNED_SEGMENTS): (4,),
}
# the resident passes over rows (a column of channels split over blocks whose last merges their partials: rows of the
# layout that the widest vector divides), compiled at the widest width: (pass, data type) -> the `held` suffixes (at
# most 32 values of an input; 16 in the float32 backward)
rowsResidentHeld = {
    ("train", "f32"): (4, 8), ("train", "f16"): (4,), ("trainResidual", "f32"): (4, 8), ("trainResidual", "f16"): (4,),
    ("grad", "f32"): (4,), ("grad", "f16"): (4,),
}
# the most values a resident pass's thread holds below compute capability 9.0 (the source builds the passes of 64
# only from Hopper on: HOPPER_BUILD)
RESIDENT_VALUES_BEFORE_HOPPER = 32


class ChannelParams(NamedTuple):
    """The Python mirror of ``struct ChannelParams``: the per-channel float32 arrays an elementwise pass reads, epsilon
    and 1 / m. A mode reads only what its formula names (see the source); the rest stay None (a null pointer) or 0."""

    mean: object = None
    invstd: object = None
    var: object = None
    scale: object = None
    bias: object = None
    scalegrad: object = None
    biasgrad: object = None
    epsilon: float = 0.0
    invM: float = 0.0


def channelParams(name):
    """``ChannelParams`` as a parameter passed by value, its fields in the order of `ChannelParams`."""
    arrays = [Pointer(field) for field in ChannelParams._fields[:-2]]
    return Struct(name, "ChannelParams", arrays + [Float32("epsilon"), Float32("invM")])


class FusedParams(NamedTuple):
    """The Python mirror of ``struct FusedParams``: the fused passes' residual, the forward's output ``y``, the
    residual's gradient ``resgrad`` (arrays or None), the activation's number (`activationNumbers`), whether x is
    rebuilt from y (InPlace-ABN), its slope and the scale's floor for the rebuild."""

    residual: object = None
    y: object = None
    resgrad: object = None
    act: int = 0
    reconstruct: int = 0
    slope: float = 0.0
    floor: float = 0.0


# NOTE: ACT_* of the source, in the order of Contract.fusedActivations
activationNumbers = {
    "identity": 0, "relu": 1, "leakyRelu": 2, "elu": 3, "sigmoid": 4, "tanh": 5,
}


def fusedParams(name):
    """``FusedParams`` as a parameter passed by value, its fields in the order of `FusedParams`."""
    return Struct(
        name, "FusedParams",
        [Pointer("residual"), Pointer("y"), Pointer("resgrad"), Int32("act"), Int32("reconstruct"), Float32("slope"),
         Float32("floor")],
    )


def momentsOutputs(name):
    """``struct MomentsOutputs`` passed by value: what the statistics kernels' last blocks write per map (the saved
    statistics, the running update and its backup, the double-precision moments), 1 / m and m / (m - 1) for the m
    values of a map, and whether the statistics kernel's last blocks write them (else `statsMerge`)."""
    return Struct(
        name, "MomentsOutputs",
        [Pointer(field) for field in (
            "savedMean", "savedInvstd", "runningMean", "runningVar", "savedVar", "skipped", "mirror", "backup",
            "wideMean", "wideVar",
        )] + [
            Float64("invM"), Float32("unbias"), Float32("epsilon"), Float32("factor"), Float32("stamp"), Int32("fold"),
        ],
    )


def sumsOutputs(name):
    """``struct SumsOutputs`` passed by value: what the gradient sums' last blocks write per map (the parameter
    gradients, from the batch invstd or the running variance), and whether the gradient kernel's last blocks write
    them (else `sumsMerge`)."""
    return Struct(
        name, "SumsOutputs",
        [Pointer(field) for field in ("invstd", "var", "scalegrad", "biasgrad")] + [Float32("epsilon"), Int32("fold")],
    )


def spatialView():
    """The view of the spatial reductions: (outer, maps, inner) and the vectors a segment's walk covers (inner / VEC,
    or ceil((inner + VEC - 1) / VEC) for unaligned segments)."""
    return Int64("outer"), Int32("maps"), Int64("inner"), Int64("innerV")


def flatView():
    """The (outer, maps, inner) view of the spatial elementwise passes."""
    return Int64("outer"), Int32("maps"), Int64("inner")


def rowsView():
    """The view of the rows kernels (inner == 1): rows of `width` elements (the maps, or lcm(maps, vector width) where
    the vector width does not divide the maps: several rows of the layout in one), and the maps."""
    return Int64("rows"), Int32("width"), Int32("maps")


def pointers(*names):
    return tuple(Pointer(name) for name in names)


statsSpatial = Signature(
    "bnStatsSpatial{walk}{segments}_{dtype}_v{vec}", Pointer("x"), *spatialView(), *pointers("pn", "pmean", "pm2"),
    momentsOutputs("o"),
)
statsRows = Signature(
    "bnStatsRows_{dtype}_v{vec}", Pointer("x"), *rowsView(), *pointers("pn", "pmean", "pm2"), momentsOutputs("o")
)
gradSpatial = Signature(
    "bnGradSpatial{walk}{segments}_{dtype}_v{vec}", *pointers("x", "dy"), *spatialView(),
    *pointers("mean", "psum", "pdot"), sumsOutputs("o"),
)
gradRows = Signature(
    "bnGradRows_{dtype}_v{vec}", *pointers("x", "dy"), *rowsView(), *pointers("mean", "psum", "pdot"), sumsOutputs("o")
)
statsMerge = Signature(
    "bnStatsMerge_{dtype}", Pointer("x"), Int64("shiftStride"), *pointers("pn", "pmean", "pm2"), Int32("splits"),
    Int32("maps"), momentsOutputs("o"),
)
sumsMerge = Signature("bnSumsMerge", *pointers("psum", "pdot"), Int32("splits"), Int32("maps"), sumsOutputs("o"))
applySpatial = Signature(
    "bnApplySpatial{segments}_{mode}_{dtype}_v{vec}", *pointers("x", "dy", "out"), *flatView(), channelParams("p")
)
applyRows = Signature(
    "bnApplyRows_{mode}_{dtype}_v{vec}", *pointers("x", "dy", "out"), *rowsView(), channelParams("p"),
)
gradSpatialFused = Signature(
    "bnGradSpatialFused_{dtype}_v{vec}", *pointers("x", "dy"), *spatialView(), *pointers("mean", "psum", "pdot"),
    sumsOutputs("o"), channelParams("p"), fusedParams("f"),
)
gradRowsFused = Signature(
    "bnGradRowsFused_{dtype}_v{vec}", *pointers("x", "dy"), *rowsView(), *pointers("mean", "psum", "pdot"),
    sumsOutputs("o"), channelParams("p"), fusedParams("f"),
)
applySpatialFused = Signature(
    "bnApplySpatialFused_{mode}_{dtype}_v{vec}", *pointers("x", "dy", "out"), *flatView(), channelParams("p"),
    fusedParams("f"),
)
applyRowsFused = Signature(
    "bnApplyRowsFused_{mode}_{dtype}_v{vec}", *pointers("x", "dy", "out"), *rowsView(), channelParams("p"),
    fusedParams("f"),
)
trainResident = Signature(
    "bnTrain{residual}Resident{segments}_{dtype}_v{vec}_h{held}", *pointers("x", "out"), *spatialView(),
    Int32("splits"), *pointers("scale", "bias"), fusedParams("f"), momentsOutputs("o"),
)
gradResident = Signature(
    "bnGradResident{segments}_{dtype}_v{vec}_h{held}", *pointers("x", "dy", "out"), *spatialView(), Int32("splits"),
    channelParams("p"), fusedParams("f"), sumsOutputs("o"),
)
trainResidentRows = Signature(
    "bnTrain{residual}ResidentRows_{dtype}_v{vec}_h{held}", *pointers("x", "out"), *rowsView(), Int32("splits"),
    *pointers("pn", "pmean", "pm2", "scale", "bias"), fusedParams("f"), momentsOutputs("o"),
)
gradResidentRows = Signature(
    "bnGradResidentRows_{dtype}_v{vec}_h{held}", *pointers("x", "dy", "out"), *rowsView(), Int32("splits"),
    *pointers("psum", "pdot"), channelParams("p"), fusedParams("f"), sumsOutputs("o"),
)
# pass -> (signature, its name's fields besides the instance's), for spatial maps and over rows
residentPasses = {
    "train": (trainResident, {"residual": ""}), "trainResidual": (trainResident, {"residual": "Residual"}),
    "grad": (gradResident, {}),
}
rowsResidentPasses = {
    "train": (trainResidentRows, {"residual": ""}), "trainResidual": (trainResidentRows, {"residual": "Residual"}),
    "grad": (gradResidentRows, {}),
}
renormStatistics = Signature(
    "bnRenormStatistics",
    *pointers("batchMean", "batchVar"), Int32("maps"), Int64("m"), Float32("epsilon"), Float32("factor"),
    Float32("momentum"), Float32("rmin"), Float32("rmax"), Float32("dmax"),
    *pointers(
        "scale", "bias", "savedMean", "savedInvstd", "r", "d", "correctedScale", "correctedBias", "runningMean",
        "runningVar", "renormMean", "renormStd", "skipped",
    ),
)
renormCombine = Signature("bnRenormCombine", *pointers("r", "x", "d", "y"), Int32("maps"), Pointer("out"))


def entries():
    """{entry name: `Signature`} of every entry point the source compiles to."""
    result = {signature.name(): signature for signature in (sumsMerge, renormStatistics, renormCombine)}
    for dtype, widths in vectorWidths.items():
        result[statsMerge.name(dtype=dtype)] = statsMerge
        for vec in widths:
            segmentKinds = (ALIGNED_SEGMENTS, UNALIGNED_SEGMENTS) if vec == max(widths) else (ALIGNED_SEGMENTS,)
            for segments in segmentKinds:
                for signature in (statsSpatial, gradSpatial):
                    for walk in (BLOCK_PER_MAP, THREAD_PER_MAP):
                        result[signature.name(walk=walk, segments=segments, dtype=dtype, vec=vec)] = signature
                for mode in modes:
                    result[applySpatial.name(segments=segments, mode=mode, dtype=dtype, vec=vec)] = applySpatial
            if vec == max(widths) and dtype in shortSegmentTypes:
                for mode in modes:
                    result[applySpatial.name(segments=SHORT_SEGMENTS, mode=mode, dtype=dtype, vec=vec)] = applySpatial
            for signature in (statsRows, gradRows, gradSpatialFused, gradRowsFused):
                result[signature.name(dtype=dtype, vec=vec)] = signature
            for mode in modes:
                for signature in (applyRows, applySpatialFused, applyRowsFused):
                    result[signature.name(mode=mode, dtype=dtype, vec=vec)] = signature
    for (kind, dtype, segments), held in residentHeld.items():
        signature, fields = residentPasses[kind]
        for h in held:
            result[signature.name(segments=segments, dtype=dtype, vec=max(vectorWidths[dtype]), held=h, **fields)] = \
                signature
    for (kind, dtype), held in rowsResidentHeld.items():
        signature, fields = rowsResidentPasses[kind]
        for h in held:
            result[signature.name(dtype=dtype, vec=max(vectorWidths[dtype]), held=h, **fields)] = signature
    return result
