"""Batch-normalization primitives of the CUDA backend (`BatchNormPrimitives` of `Backend.Contract`, which states what
each function computes), with the kernels of ``Kernels/BatchNorm.cu``. Twin of `Backend.Cpu.BatchNormKernels`.

Data, outputs and gradients are float32 or float16 (one dtype per call); per-map parameters and statistics are float32
arrays of ``maps`` elements. How the work is laid out on the device:

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
- A fused activation and residual (`Contract.FusedActivation`) run in the same passes through the ``*Fused`` kernels:
  the forward's pass adds the residual and applies the activation before its one write; backward reads the output y
  besides (dz = dy * act'(y) in both passes, written to the residual's gradient in the dx pass), and x not at all in
  InPlace-ABN, where x - mean is rebuilt from y.
"""

import numpy as np

from PuzzleLib.Backend.Contract import reconstructionFloor
from PuzzleLib.Backend.Cuda.GPUArray import empty
from PuzzleLib.Backend.Cuda.Launch import MAX_GRID_Y, KernelSource, ceilDiv, grid1d, residentBlocks
from PuzzleLib.Kernels import BatchNorm as declared
from PuzzleLib.Kernels.BatchNorm import BLOCK_SIZE, FINALIZE_WARPS, ROWS_BX, ROWS_BY, ChannelParams, FusedParams

dataTypes = (np.dtype(np.float32), np.dtype(np.float16))
suffixes = {np.dtype(np.float32): "f32", np.dtype(np.float16): "f16"}

MAX_SPLITS = 1024
MIN_VECTORS_PER_BLOCK = 4 * BLOCK_SIZE
MIN_ROWS_PER_BLOCK = 16 * ROWS_BY
# NOTE: the per-map kernels of Batch Renormalization: one thread per map
PER_MAP_BLOCK = 256

kernels = KernelSource(declared)


def checkShapes(shape3, dataArrays, perMap):
    """Asserts what the primitives rely on: data arrays of one dtype and ``outer * maps * inner`` elements, float32
    per-map arrays of ``maps`` elements (`Backend.Dnn` has checked all of it)."""
    outer, maps, inner = shape3
    dtypes = {ary.dtype for ary in dataArrays if ary is not None}
    assert len(dtypes) == 1 and dtypes <= set(suffixes), dtypes
    assert all(ary.size == outer * maps * inner for ary in dataArrays if ary is not None), shape3
    assert all(ary.dtype == np.float32 and ary.size == maps for ary in perMap if ary is not None), maps
    assert 0 < maps < 2**31 and inner > 0, shape3
    return dtypes.pop()


def vectorWidth(suffix, length, *arrays):
    """16-byte vectors when the contiguous length allows it and every pointer is 16-byte aligned, else 1."""
    width = max(declared.vectorWidths[suffix])
    if length % width == 0 and all(ary.ptr % 16 == 0 for ary in arrays if ary is not None):
        return width
    return 1


def reductionGrid(outer, maps, inner, vec):
    """(grid, block, splits) of the stats/grad reduction kernels: enough blocks to fill the device twice over, while
    each block keeps enough work to amortize its final merge."""
    _, resident = residentBlocks(BLOCK_SIZE)
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


def fusedParams(activation, residual=None, outdata=None, resgrad=None, reconstruct=False):
    """The `FusedParams` of a fused pass, or None without an activation and a residual."""
    if activation is None and residual is None:
        return None
    kind, slope = ("identity", 0.0) if activation is None else activation
    return FusedParams(
        residual=residual, y=outdata, resgrad=resgrad, act=declared.activationNumbers[kind],
        reconstruct=int(reconstruct), slope=slope, floor=reconstructionFloor,
    )


def applyPass(mode, x, dy, out, shape3, params, fused=None):
    """One elementwise pass of `mode` (``declared.modes``) writing `out`, with the per-channel `ChannelParams`; with
    `fused` (`FusedParams`), the fused kernels."""
    outer, maps, inner = shape3
    suffix = suffixes[out.dtype]
    _, resident = residentBlocks(BLOCK_SIZE)
    extra = {} if fused is None else {"f": fused}
    aligned = [x, dy, out] + ([] if fused is None else [fused.residual, fused.y, fused.resgrad])

    if inner > 1:
        vec = vectorWidth(suffix, inner, *aligned)
        vectors = outer * maps * (inner // vec)
        grid = (max(1, min(ceilDiv(vectors, BLOCK_SIZE), 4 * resident)), 1, 1)
        kernels.launch(
            declared.applySpatial if fused is None else declared.applySpatialFused, grid, (BLOCK_SIZE, 1, 1),
            instance={"mode": mode, "dtype": suffix, "vec": vec}, x=x, dy=dy, out=out, outer=outer, maps=maps,
            innerV=inner // vec, p=params, **extra,
        )
    else:
        # NOTE: the fused rows kernels work element by element, so their vectors are never wider than 1
        vec = vectorWidth(suffix, maps, *aligned) if fused is None else 1
        channelBlocks = ceilDiv(maps, ROWS_BX * vec)
        rowBlocks = max(1, min(ceilDiv(outer, ROWS_BY), ceilDiv(4 * resident, channelBlocks), MAX_GRID_Y))
        kernels.launch(
            declared.applyRows if fused is None else declared.applyRowsFused, (channelBlocks, rowBlocks, 1),
            (ROWS_BX, ROWS_BY, 1), instance={"mode": mode, "dtype": suffix, "vec": vec}, x=x, dy=dy, out=out,
            rows=outer, maps=maps, p=params, **extra,
        )


def reduceGradient(data, grad, shape3, mean, finalize, fused=None, params=None, **finalizeArguments):
    """Partial sums of grad and grad * (x - mean) per block, merged per map by `finalize` (``gradFinalize`` or
    ``gradFinalizeFrozen``, which take the rest of their arguments from `finalizeArguments`); with `fused`
    (`FusedParams`) and the `ChannelParams` `params`, of dz and dz * (x - mean) (`data` may be None then)."""
    outer, maps, inner = shape3
    suffix = suffixes[grad.dtype]
    aligned = [data, grad] + ([] if fused is None else [fused.y])
    vec = vectorWidth(suffix, inner if inner > 1 else maps, *aligned) if fused is None or inner > 1 else 1
    grid, block, splits = reductionGrid(outer, maps, inner, vec)

    workspace = empty((2, splits * maps), np.float32)
    psum, pdot = workspace.ptr, workspace.ptr + 4 * splits * maps
    instance = {"dtype": suffix, "vec": vec}
    extra = {} if fused is None else {"p": params, "f": fused}

    if inner > 1:
        kernels.launch(
            declared.gradSpatial if fused is None else declared.gradSpatialFused, grid, block, instance, x=data,
            dy=grad, outer=outer, maps=maps, innerV=inner // vec, mean=mean, psum=psum, pdot=pdot, **extra,
        )
    else:
        kernels.launch(
            declared.gradRows if fused is None else declared.gradRowsFused, grid, block, instance, x=data, dy=grad,
            rows=outer, maps=maps, mean=mean, psum=psum, pdot=pdot, **extra,
        )

    grid, block = finalizeGrid(maps)
    kernels.launch(finalize, grid, block, psum=psum, pdot=pdot, splits=splits, maps=maps, **finalizeArguments)


def reduceMoments(data, shape3, *, savedMean, savedInvstd, savedVar, runningMean, runningVar, epsilon, factor,
                  skipped=None):
    """Partial moments per block (Welford within a thread, Chan across threads), then ``bnStatsFinalize`` merges them
    per map and writes the saved statistics, `savedVar` (the biased variance) and the running update where given (with
    `skipped`, not for maps whose statistics are not finite: those count 1 there)."""
    outer, maps, inner = shape3
    suffix = suffixes[data.dtype]
    vec = vectorWidth(suffix, inner if inner > 1 else maps, data)
    grid, block, splits = reductionGrid(outer, maps, inner, vec)

    workspace = empty((3, splits * maps), np.float32)
    pn, pmean, pm2 = (workspace.ptr + 4 * k * splits * maps for k in range(3))
    instance = {"dtype": suffix, "vec": vec}

    if inner > 1:
        kernels.launch(
            declared.statsSpatial, grid, block, instance, x=data, outer=outer, maps=maps, innerV=inner // vec, pn=pn,
            pmean=pmean, pm2=pm2,
        )
    else:
        kernels.launch(declared.statsRows, grid, block, instance, x=data, rows=outer, maps=maps, pn=pn, pmean=pmean,
                       pm2=pm2)

    grid, block = finalizeGrid(maps)
    kernels.launch(
        declared.statsFinalize, grid, block, {"dtype": suffix}, x=data, shiftStride=inner, pn=pn, pmean=pmean, pm2=pm2,
        splits=splits, maps=maps, m=outer * inner, epsilon=epsilon, factor=factor, savedMean=savedMean,
        savedInvstd=savedInvstd, runningMean=runningMean, runningVar=runningVar, savedVar=savedVar, skipped=skipped,
    )


def trainForward(
    data, out, shape3, *, scale, bias, running, saved, epsilon, factor, skipped, activation=None, residual=None
):
    """Kernels: partial moments -> merge per map and running update (`reduceMoments`) -> normalization (fused with the
    activation and residual; in place when `out` is `data`: the statistics are taken first)."""
    runningArrays = (None, None) if running is None else running
    checkShapes(shape3, (data, out, residual), (scale, bias, *runningArrays, *saved, skipped))
    reduceMoments(
        data, shape3, savedMean=saved.mean, savedInvstd=saved.invstd, savedVar=None, runningMean=runningArrays[0],
        runningVar=runningArrays[1], epsilon=epsilon, factor=factor, skipped=skipped,
    )

    params = ChannelParams(mean=saved.mean, invstd=saved.invstd, scale=scale, bias=bias)
    applyPass("trainForward", data, None, out, shape3, params, fusedParams(activation, residual))


def batchStatistics(data, shape3, *, saved):
    """The kernels of `reduceMoments` alone (float32 statistics); the inverse standard deviation they also write goes
    to a scratch array; float64 `saved` arrays receive the float32 results converted by pycuda."""
    maps = shape3[1]
    wide = saved.mean.dtype == np.float64
    assert all(ary.size == maps and ary.dtype == saved.mean.dtype for ary in saved), maps
    scratch = empty((3, maps), np.float32)
    mean, var = (scratch[0], scratch[1]) if wide else saved
    checkShapes(shape3, (data,), (mean, var))
    reduceMoments(
        data, shape3, savedMean=mean, savedInvstd=scratch[2], savedVar=var, runningMean=None, runningVar=None,
        epsilon=1.0, factor=0.0,
    )
    if wide:
        for target, result in zip(saved, (mean, var), strict=True):
            target._copyFrom(result.astype(np.float64))


def normalize(data, out, shape3, *, scale, bias, saved, activation=None, residual=None):
    """The normalization kernel of `trainForward` alone."""
    checkShapes(shape3, (data, out, residual), (scale, bias, *saved))
    params = ChannelParams(mean=saved.mean, invstd=saved.invstd, scale=scale, bias=bias)
    applyPass("trainForward", data, None, out, shape3, params, fusedParams(activation, residual))


def evalForward(data, out, shape3, *, scale, bias, running, epsilon, activation=None, residual=None):
    """One kernel, one read and one write per element; in place when `out` is `data` (no workspace, no pool block)."""
    checkShapes(shape3, (data, out, residual), (scale, bias, *running))
    params = ChannelParams(mean=running.mean, var=running.var, scale=scale, bias=bias, epsilon=epsilon)
    applyPass("evalForward", data, None, out, shape3, params, fusedParams(activation, residual))


def backward(
    data, grad, ingrad, shape3, *, scale, saved, scalegrad, biasgrad, activation=None, outdata=None, bias=None,
    resgrad=None,
):
    """Kernels: partial sums -> merge per map (times the batch invstd) -> dx pass; after a fused forward the fused
    reduction and dx kernels (`data` None: rebuilt from `outdata`)."""
    checkShapes(shape3, (data, grad, ingrad, outdata, resgrad), (scale, *saved, scalegrad, biasgrad, bias))
    fused = None if activation is None else fusedParams(
        activation, outdata=outdata, resgrad=resgrad, reconstruct=data is None
    )
    params = ChannelParams(mean=saved.mean, invstd=saved.invstd, scale=scale, bias=bias)
    reduceGradient(
        data, grad, shape3, saved.mean, declared.gradFinalize, fused=fused, params=params, invstd=saved.invstd,
        scalegrad=scalegrad, biasgrad=biasgrad,
    )

    if ingrad is not None:
        outer, _, inner = shape3
        params = params._replace(scalegrad=scalegrad, biasgrad=biasgrad, invM=1.0 / (outer * inner))
        applyPass("backward", data, grad, ingrad, shape3, params, fused)


def inputGradient(data, grad, ingrad, shape3, *, scale, saved, scalegrad, biasgrad, count):
    """The dx pass of `backward` alone, with the given sums over `count` elements per map."""
    checkShapes(shape3, (data, grad, ingrad), (scale, *saved, scalegrad, biasgrad))
    params = ChannelParams(
        mean=saved.mean, invstd=saved.invstd, scale=scale, scalegrad=scalegrad, biasgrad=biasgrad, invM=1.0 / count
    )
    applyPass("backward", data, grad, ingrad, shape3, params)


def frozenBackward(
    data, grad, ingrad, shape3, *, scale, running, epsilon, scalegrad, biasgrad, activation=None, outdata=None,
    resgrad=None,
):
    """Kernels: partial sums -> merge per map (times the running invstd) -> dx pass that reads grad only (and the
    output, after a fused forward)."""
    checkShapes(shape3, (data, grad, ingrad, outdata, resgrad), (scale, *running, scalegrad, biasgrad))
    fused = None if activation is None else fusedParams(activation, outdata=outdata, resgrad=resgrad)
    reduceGradient(
        data, grad, shape3, running.mean, declared.gradFinalizeFrozen, fused=fused, params=ChannelParams(),
        var=running.var, epsilon=epsilon, scalegrad=scalegrad, biasgrad=biasgrad,
    )

    if ingrad is not None:
        params = ChannelParams(var=running.var, scale=scale, epsilon=epsilon)
        applyPass("frozenBackward", None, grad, ingrad, shape3, params, fused)


def renormStatistics(
    moments, count, *, scale, bias, running, renorm, saved, correction, corrected, epsilon, factor, renormMomentum,
    clipping, skipped,
):
    """One kernel, one thread per map (``bnRenormStatistics``, the twin of `NumpyBatchNorm.renormStatistics`)."""
    runningArrays = (None, None) if running is None else running
    perMap = (*moments, scale, bias, *saved, *correction, *corrected, *runningArrays, *renorm, skipped)
    maps = scale.size
    assert all(ary.dtype == np.float32 and ary.size == maps for ary in perMap if ary is not None), maps
    grid, block = grid1d(maps, PER_MAP_BLOCK)
    kernels.launch(
        declared.renormStatistics, grid, block, batchMean=moments.mean, batchVar=moments.var, maps=maps, m=count,
        epsilon=epsilon, factor=factor, momentum=renormMomentum, rmin=clipping.rmin, rmax=clipping.rmax,
        dmax=clipping.dmax, scale=scale, bias=bias, savedMean=saved.mean, savedInvstd=saved.invstd, r=correction.r,
        d=correction.d, correctedScale=corrected.scale, correctedBias=corrected.bias, runningMean=runningArrays[0],
        runningVar=runningArrays[1], renormMean=renorm.mean, renormStd=renorm.std, skipped=skipped,
    )


def renormCombine(correction, x, y, out):
    """One kernel, one thread per map (``bnRenormCombine``)."""
    maps = x.size
    assert all(ary.dtype == np.float32 and ary.size == maps for ary in (*correction, x, y, out) if ary is not None)
    grid, block = grid1d(maps, PER_MAP_BLOCK)
    kernels.launch(declared.renormCombine, grid, block, r=correction.r, x=x, d=correction.d, y=y, maps=maps, out=out)
