"""Batch-normalization primitives of the CUDA backend (kernels in ``Kernels/BatchNorm.cu``). Twin of
`Backend.Cpu.BatchNormKernels`: same functions, same arguments, same formulas (Ioffe & Szegedy 2015, arXiv 1502.03167).

Every tensor is viewed as ``shape3 = (outer, maps, inner)`` and normalized per map over ``outer`` and ``inner``
(``m = outer * inner`` elements per map): per-activation ``(N, C)`` is ``(N, C, 1)``, spatial ``(N, C, d1, ..., dk)`` is
``(N, C, d1 * ... * dk)``, channels-last ``(N, d1, ..., C)`` is ``(N * d1 * ..., C, 1)``. Data, outputs and gradients
are float32 or float16 (one dtype per call); per-map parameters and statistics are float32 arrays of ``maps`` elements.

How the work is laid out on the device:

- ``inner > 1`` uses the *spatial* kernels: a block walks contiguous segments of one map; ``inner == 1`` uses the
  *rows* kernels: threads run across maps, rows are split over blocks. No transpose is ever made.
- Reductions (batch statistics, parameter gradients) split each map over enough blocks to fill every multiprocessor,
  write per-block partials to a small pool workspace and merge them in a second kernel (Chan et al. 1979 for the
  moments), which also writes the per-map results and the running statistics.
- Loads and stores are 16 bytes wide when the contiguous axis is a multiple of 4 floats / 8 halves and every pointer
  is 16-byte aligned (pool blocks are 256-byte aligned); else one element at a time.
- Passes over the data: training forward reads x twice (statistics, then normalization) and writes y once; evaluation
  forward reads x once and writes y once (in place when ``out is data``: one kernel, no workspace, no pool block);
  backward reads x and dy twice (reduction, then dx) and writes dx once; the frozen backward's dx pass reads dy only.

All kernels run on the default stream of the primary context, so a workspace returned to the pool at the end of a call
can only be reused by work queued after the kernels that used it.
"""

import numpy as np

from PuzzleLib.Backend.Cuda import Driver
from PuzzleLib.Backend.Cuda.GPUArray import GPUArray, empty
from PuzzleLib.Backend.Cuda.SourceModule import Kernels

BLOCK_SIZE = 256
ROWS_BX, ROWS_BY = 32, 8
FINALIZE_WARPS = 8

MAX_SPLITS = 1024
MIN_VECTORS_PER_BLOCK = 4 * BLOCK_SIZE
MIN_ROWS_PER_BLOCK = 16 * ROWS_BY
MAX_GRID_Y = 65535

dataTypes = {np.dtype(np.float32): ("f32", 4), np.dtype(np.float16): ("f16", 8)}

kernels = Kernels(
    "BatchNorm.cu",
    defines={"BLOCK_SIZE": BLOCK_SIZE, "ROWS_BX": ROWS_BX, "ROWS_BY": ROWS_BY, "FINALIZE_WARPS": FINALIZE_WARPS},
)

applyArgsSpatial = "PPPqiq" + "PPPPPP" + "ff"
applyArgsRows = "PPPqi" + "PPPPPP" + "ff"


limits = None


def deviceLimits():
    """(multiprocessors, blocks of BLOCK_SIZE threads resident at once on the whole device), cached."""
    global limits
    if limits is None:
        sms = Driver.multiprocessorCount()
        limits = (sms, sms * max(1, Driver.maxThreadsPerMultiprocessor() // BLOCK_SIZE))
    return limits


def ceilDiv(a, b):
    return -(-a // b)


# Argument checks -----------------------------------------------------------------------------------------------------


def checkData(shape3, *arrays):
    outer, maps, inner = (int(v) for v in shape3)
    if outer < 0 or maps <= 0 or inner <= 0 or maps >= 2**31:
        raise ValueError("shape3 must be (outer >= 0, 0 < maps < 2**31, inner > 0); got %s" % (tuple(shape3),))

    dtype = None
    for ary in arrays:
        if ary is None:
            continue
        if not isinstance(ary, GPUArray):
            raise TypeError("expected a CUDA GPUArray; got %s" % type(ary).__name__)
        if ary.dtype not in dataTypes:
            raise TypeError("data must be float32 or float16 on CUDA; got %s" % ary.dtype)
        if dtype is not None and ary.dtype != dtype:
            raise TypeError("data, outputs and gradients must share one dtype; got %s and %s" % (dtype, ary.dtype))
        if ary.size != outer * maps * inner:
            raise ValueError("array of shape %s does not match shape3 %s" % (ary.shape, tuple(shape3)))
        dtype = ary.dtype

    return outer, maps, inner, dtype


def checkParams(maps, **params):
    for name, ary in params.items():
        if ary is None:
            continue
        if not isinstance(ary, GPUArray):
            raise TypeError("%s must be a CUDA GPUArray; got %s" % (name, type(ary).__name__))
        if ary.dtype != np.float32 or ary.size != maps:
            raise ValueError("%s must be float32 with %d elements; got %s with %d" % (name, maps, ary.dtype, ary.size))


def ptrOf(ary):
    return 0 if ary is None else ary.ptr


def vectorWidth(dtype, length, *arrays):
    """16-byte vectors when the contiguous length allows it and every pointer is 16-byte aligned, else 1."""
    width = dataTypes[dtype][1]
    if length % width == 0 and all(ary.ptr % 16 == 0 for ary in arrays if ary is not None):
        return width
    return 1


# Launch geometry -----------------------------------------------------------------------------------------------------


def reductionGrid(outer, maps, inner, vec):
    """(grid, block, splits) of the stats/grad reduction kernels: enough blocks to fill the device twice over, while
    each block keeps enough work to amortize its final merge."""
    _, resident = deviceLimits()
    target = 2 * resident

    if inner > 1:
        vectors = outer * (inner // vec)
        splits = min(ceilDiv(target, maps), max(1, vectors // MIN_VECTORS_PER_BLOCK), MAX_SPLITS)
        return (maps, splits, 1), (BLOCK_SIZE, 1, 1), splits

    channelBlocks = ceilDiv(maps, ROWS_BX * vec)
    splits = min(ceilDiv(target, channelBlocks), max(1, outer // MIN_ROWS_PER_BLOCK), MAX_SPLITS)
    return (channelBlocks, splits, 1), (ROWS_BX, ROWS_BY, 1), splits


def finalizeGrid(maps):
    return (ceilDiv(maps, FINALIZE_WARPS), 1, 1), (32, FINALIZE_WARPS, 1)


def launchApply(
    mode, dtype, x, dy, out, outer, maps, inner, mean, inv, scale, bias, scalegrad, biasgrad, epsilon, invM
):
    suffix = dataTypes[dtype][0]
    _, resident = deviceLimits()
    params = (
        ptrOf(mean),
        ptrOf(inv),
        ptrOf(scale),
        ptrOf(bias),
        ptrOf(scalegrad),
        ptrOf(biasgrad),
        float(epsilon),
        float(invM),
    )

    if inner > 1:
        vec = vectorWidth(dtype, inner, x, dy, out)
        vectors = outer * maps * (inner // vec)
        grid = (max(1, min(ceilDiv(vectors, BLOCK_SIZE), 4 * resident)), 1, 1)
        func = kernels.get("bnApplySpatial_%s_%s_v%d" % (mode, suffix, vec), applyArgsSpatial)
        func.prepared_call(grid, (BLOCK_SIZE, 1, 1), ptrOf(x), ptrOf(dy), out.ptr, outer, maps, inner // vec, *params)
    else:
        vec = vectorWidth(dtype, maps, x, dy, out)
        channelBlocks = ceilDiv(maps, ROWS_BX * vec)
        rowBlocks = max(1, min(ceilDiv(outer, ROWS_BY), ceilDiv(4 * resident, channelBlocks), MAX_GRID_Y))
        func = kernels.get("bnApplyRows_%s_%s_v%d" % (mode, suffix, vec), applyArgsRows)
        func.prepared_call(
            (channelBlocks, rowBlocks, 1), (ROWS_BX, ROWS_BY, 1), ptrOf(x), ptrOf(dy), out.ptr, outer, maps, *params
        )


def reduceGrad(dtype, data, grad, outer, maps, inner, mu, inv, fromVar, epsilon, scalegrad, biasgrad):
    """biasgrad = sum(grad), scalegrad = invstd * sum(grad * (x - mu)), through per-block partials."""
    suffix = dataTypes[dtype][0]
    vec = vectorWidth(dtype, inner if inner > 1 else maps, data, grad)
    grid, block, splits = reductionGrid(outer, maps, inner, vec)

    workspace = empty((2, splits * maps), np.float32)
    psum, pdot = workspace.ptr, workspace.ptr + 4 * splits * maps

    if inner > 1:
        func = kernels.get("bnGradSpatial_%s_v%d" % (suffix, vec), "PPqiqPPP")
        func.prepared_call(grid, block, data.ptr, grad.ptr, outer, maps, inner // vec, mu.ptr, psum, pdot)
    else:
        func = kernels.get("bnGradRows_%s_v%d" % (suffix, vec), "PPqiPPP")
        func.prepared_call(grid, block, data.ptr, grad.ptr, outer, maps, mu.ptr, psum, pdot)

    grid, block = finalizeGrid(maps)
    kernels.get("bnGradFinalize", "PPiiPifPP").prepared_call(
        grid, block, psum, pdot, splits, maps, inv.ptr, int(fromVar), float(epsilon), scalegrad.ptr, biasgrad.ptr
    )


# Primitives ----------------------------------------------------------------------------------------------------------


def trainForward(data, out, shape3, scale, bias, mean, var, savemean, saveinvvar, epsilon, factor):
    """Training forward: batch statistics, normalization, running-statistics update.

    mu = mean(x), sigma2 = mean((x - mu)^2) (biased, divide by m), invstd = 1 / sqrt(sigma2 + epsilon),
    out = (x - mu) * invstd * scale + bias; savemean = mu, saveinvvar = invstd; when `mean` is not None (then `var`
    is given too): mean = (1 - factor) * mean + factor * mu, var = (1 - factor) * var + factor * sigma2 * m / (m - 1)
    (unbiased, as Theano and cuDNN do). The caller guarantees m >= 2 and that `out` is not `data`.

    Kernels: partial moments (Welford within a thread, Chan across threads) -> merge per map -> normalization.

    Raises:
        TypeError: for arrays that are not CUDA GPUArrays, or data not float32/float16, or mixed data dtypes.
        ValueError: for sizes that do not match `shape3`.
    """
    outer, maps, inner, dtype = checkData(shape3, data, out)
    checkParams(maps, scale=scale, bias=bias, mean=mean, var=var, savemean=savemean, saveinvvar=saveinvvar)
    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together")

    m = outer * inner
    suffix = dataTypes[dtype][0]
    vec = vectorWidth(dtype, inner if inner > 1 else maps, data)
    grid, block, splits = reductionGrid(outer, maps, inner, vec)

    workspace = empty((3, splits * maps), np.float32)
    pn, pmean, pm2 = (workspace.ptr + 4 * k * splits * maps for k in range(3))

    if inner > 1:
        func = kernels.get("bnStatsSpatial_%s_v%d" % (suffix, vec), "PqiqPPP")
        func.prepared_call(grid, block, data.ptr, outer, maps, inner // vec, pn, pmean, pm2)
    else:
        func = kernels.get("bnStatsRows_%s_v%d" % (suffix, vec), "PqiPPP")
        func.prepared_call(grid, block, data.ptr, outer, maps, pn, pmean, pm2)

    grid, block = finalizeGrid(maps)
    kernels.get("bnStatsFinalize_%s" % suffix, "PqPPPiiqffPPPP").prepared_call(
        grid,
        block,
        data.ptr,
        inner,
        pn,
        pmean,
        pm2,
        splits,
        maps,
        m,
        float(epsilon),
        float(factor),
        savemean.ptr,
        saveinvvar.ptr,
        ptrOf(mean),
        ptrOf(var),
    )

    launchApply(
        "norm", dtype, data, None, out, outer, maps, inner, savemean, saveinvvar, scale, bias, None, None, 0.0, 0.0
    )


def evalForward(data, out, shape3, scale, bias, mean, var, epsilon):
    """Evaluation forward: out = (x - mean) / sqrt(var + epsilon) * scale + bias, with the running statistics.

    One kernel, one read and one write per element; `out` may be `data` (in place: no workspace, no pool block).
    """
    outer, maps, inner, dtype = checkData(shape3, data, out)
    checkParams(maps, scale=scale, bias=bias, mean=mean, var=var)
    if outer == 0:
        return

    launchApply("normVar", dtype, data, None, out, outer, maps, inner, mean, var, scale, bias, None, None, epsilon, 0.0)


def backward(data, grad, ingrad, shape3, scale, savemean, saveinvvar, scalegrad, biasgrad):
    """Backward after a training forward, with xhat = (x - savemean) * saveinvvar:

    biasgrad = sum(grad), scalegrad = sum(grad * xhat) (both overwritten, not accumulated),
    ingrad = scale * invstd / m * (m * grad - biasgrad - xhat * scalegrad); `ingrad` may be None (no dx).
    The caller (`Backend.Dnn`) guarantees non-empty data.
    """
    outer, maps, inner, dtype = checkData(shape3, data, grad, ingrad)
    checkParams(maps, scale=scale, savemean=savemean, saveinvvar=saveinvvar, scalegrad=scalegrad, biasgrad=biasgrad)

    m = outer * inner
    reduceGrad(dtype, data, grad, outer, maps, inner, savemean, saveinvvar, False, 0.0, scalegrad, biasgrad)

    if ingrad is not None:
        launchApply(
            "backward",
            dtype,
            data,
            grad,
            ingrad,
            outer,
            maps,
            inner,
            savemean,
            saveinvvar,
            scale,
            None,
            scalegrad,
            biasgrad,
            0.0,
            1.0 / m,
        )


def frozenBackward(data, grad, ingrad, shape3, scale, mean, var, epsilon, scalegrad, biasgrad):
    """Backward after an evaluation forward (statistics are constants): invstd = 1 / sqrt(var + epsilon),
    xhat = (x - mean) * invstd, biasgrad = sum(grad), scalegrad = sum(grad * xhat), ingrad = grad * scale * invstd
    (`ingrad` may be None). The dx pass reads grad only. The caller (`Backend.Dnn`) guarantees non-empty data.
    """
    outer, maps, inner, dtype = checkData(shape3, data, grad, ingrad)
    checkParams(maps, scale=scale, mean=mean, var=var, scalegrad=scalegrad, biasgrad=biasgrad)

    reduceGrad(dtype, data, grad, outer, maps, inner, mean, var, True, epsilon, scalegrad, biasgrad)

    if ingrad is not None:
        launchApply(
            "frozen", dtype, None, grad, ingrad, outer, maps, inner, mean, var, scale, None, None, None, epsilon, 0.0
        )
