"""The four batch-normalization passes over any layout, shared by the cuDNN-like entry points (`Backend.Dnn`) and the
Theano-like ones (`Backend.TheanoBatchNorm`).

The entry points check their arguments (with `BatchNormLayout.checkPerMap` and the helpers below) and call these
functions, which allocate the outputs from the data's pool, permute the data when the layout has no
``(outer, maps, inner)`` view (`BatchNormLayout.perm`; two extra passes), and call the primitives of the data's backend
(`Contract.BatchNormPrimitives`). Per-map statistics are `Contract.RunningStatistics` and `Contract.BatchStatistics`.
"""

from typing import NamedTuple

import numpy as np

from PuzzleLib.Backend import Permute
from PuzzleLib.Backend.BatchNormLayout import layoutOf
from PuzzleLib.Backend.Checks import checkArray
from PuzzleLib.Backend.Contract import AffineParams, BatchMoments, BatchStatistics, RenormCorrection

float32, float64 = np.dtype(np.float32), np.dtype(np.float64)


class FusedGradient(NamedTuple):
    """What a backward after a fused forward adds: the `Contract.FusedActivation`, the forward's output `outdata`, the
    residual's gradient `resgrad` (an array like the data to write, or None) and `bias` (read to rebuild xhat from the
    output when the input is gone, InPlace-ABN; else None)."""

    activation: object
    outdata: object
    resgrad: object = None
    bias: object = None


def checkData(name, data, backend, axes):
    """The layout of `data` (a GPUArray of `backend`, of one of its batch-norm data types) for the normalized `axes`
    (computed once per shape and axes)."""
    checkArray(name, data, dtypes=backend.batchNorm.dataTypes)
    return layoutOf(data.shape, axes)


def perMapTypes(dtype):
    """Dtypes allowed for per-map arrays with data of `dtype`: float32; float64 too for float64 data (CPU backend)."""
    return (float32, float64) if dtype == float64 else (float32,)


def statType(dtype):
    """Dtype of the statistics and parameter gradients the Theano-like functions return for data of `dtype`."""
    return float64 if dtype == float64 else float32


def workInput(layout, ary):
    """The array the primitives read: `ary` itself, or its permuted copy (a new pool array); None stays None."""
    return ary if layout.perm is None or ary is None else Permute.permute(ary, layout.perm)


def workOutput(layout, out):
    """Where the primitives write: `out` itself, or a pool buffer of the permuted shape; None stays None."""
    if layout.perm is None or out is None:
        return out
    return out.backend.gpuarray.empty(layout.permutedShape, out.dtype)


def finishOutput(layout, work, out):
    """Brings a result written into `workOutput` back into `out`; returns out."""
    if layout.perm is not None and work is not None:
        Permute.permute(work, layout.inverse, out=out)
    return out


def trainForward(
    data, layout, *, scale, bias, running, epsilon, factor, out, statShape, statType, skipped, activation=None,
    residual=None,
):
    """Normalizes with the batch statistics; updates `running` (a `RunningStatistics`, or None) in place, guarded by
    the per-map counter `skipped` where it is not None (`Contract.BatchNormPrimitives.trainForward`); with
    `activation` (a `FusedActivation`) and `residual`, ``out = act(bn(x) + residual)`` in the same pass. `out` may be
    `data` with an invertible activation (InPlace-ABN): the statistics are taken before the pass writes.

    Returns ``(out, saved)``: the output (written into `out`, or a new pool array when None) and the
    `BatchStatistics` of the batch, new arrays of `statShape` and `statType`.
    """
    arrays = data.backend.gpuarray
    out = arrays.empty(data.shape, data.dtype) if out is None else out
    saved = BatchStatistics(arrays.empty(statShape, statType), arrays.empty(statShape, statType))
    if data.size == 0:
        # NOTE: with m >= 2 elements per map only data without maps is empty: nothing to compute or update
        return out, saved

    work = workOutput(layout, out)
    data.backend.batchNorm.trainForward(
        workInput(layout, data), work, layout.shape3, scale=scale, bias=bias, running=running, saved=saved,
        epsilon=epsilon, factor=factor, skipped=skipped, activation=activation, residual=workInput(layout, residual),
    )
    return finishOutput(layout, work, out), saved


def batchStatistics(data, layout, *, statType, out):
    """The batch's per-map `BatchMoments` (mean, biased variance), written into `out` (a `BatchMoments`) or new arrays
    of the layout's per-map shape and `statType`; both zero for data without elements."""
    arrays = data.backend.gpuarray
    if out is None:
        out = BatchMoments(arrays.empty(layout.paramShape, statType), arrays.empty(layout.paramShape, statType))
    moments = out
    if data.size == 0:
        return BatchMoments(moments.mean.fill(0), moments.var.fill(0))

    data.backend.batchNorm.batchStatistics(workInput(layout, data), layout.shape3, saved=moments)
    return moments


def normalize(data, layout, *, scale, bias, saved, out, activation=None, residual=None):
    """Normalizes with given batch statistics (a `BatchStatistics`) into `out` (a new pool array when None), fused with
    `activation` and `residual` as `trainForward`."""
    out = data.backend.gpuarray.empty(data.shape, data.dtype) if out is None else out
    if data.size == 0:
        return out

    work = workOutput(layout, out)
    data.backend.batchNorm.normalize(
        workInput(layout, data), work, layout.shape3, scale=scale, bias=bias, saved=saved, activation=activation,
        residual=workInput(layout, residual),
    )
    return finishOutput(layout, work, out)


def inputGradient(data, grad, layout, *, scale, saved, scalegrad, biasgrad, count):
    """The training backward's input gradient from given sums over `count` elements per map; a new array like
    `data`."""
    ingrad = data.backend.gpuarray.empty(data.shape, data.dtype)
    if data.size == 0:
        return ingrad

    work = workOutput(layout, ingrad)
    data.backend.batchNorm.inputGradient(
        workInput(layout, data), workInput(layout, grad), work, layout.shape3, scale=scale, saved=saved,
        scalegrad=scalegrad, biasgrad=biasgrad, count=count,
    )
    return finishOutput(layout, work, ingrad)


def renormForward(
    data, layout, *, scale, bias, running, renorm, epsilon, factor, renormMomentum, clipping, out, statShape, statType,
    skipped,
):
    """Batch Renormalization's training forward: the batch moments (`batchStatistics`), the per-map step
    (`Contract.BatchNormPrimitives.renormStatistics`, which updates `running` and `renorm` in place), then the
    normalization pass with the corrected scale and bias (on CUDA the data is read twice, as in `trainForward`).

    Returns ``(out, saved, correction)``: the output (into `out`, or a new pool array), the `BatchStatistics` and the
    `RenormCorrection` of the batch, new arrays of `statShape` and `statType`.
    """
    arrays = data.backend.gpuarray
    out = arrays.empty(data.shape, data.dtype) if out is None else out
    saved = BatchStatistics(arrays.empty(statShape, statType), arrays.empty(statShape, statType))
    correction = RenormCorrection(arrays.empty(statShape, statType), arrays.empty(statShape, statType))
    if data.size == 0:
        return out, saved, correction

    moments = batchStatistics(data, layout, statType=statType, out=None)
    corrected = AffineParams(arrays.empty(scale.shape, scale.dtype), arrays.empty(bias.shape, bias.dtype))
    outer, _, inner = layout.shape3
    data.backend.batchNorm.renormStatistics(
        moments, outer * inner, scale=scale, bias=bias, running=running, renorm=renorm, saved=saved,
        correction=correction, corrected=corrected, epsilon=epsilon, factor=factor, renormMomentum=renormMomentum,
        clipping=clipping, skipped=skipped,
    )
    return normalize(data, layout, scale=corrected.scale, bias=corrected.bias, saved=saved, out=out), saved, correction


def renormBackward(
    data, grad, layout, *, scale, saved, correction, updGrad, gradType, paramGrads=(None, None), ingrad=None
):
    """Backward after a Batch Renormalization forward, r and d constants: the training backward with the scale
    ``r * scale``, whose scale gradient ``sum(grad * xhat)`` then becomes ``r * sum(grad * xhat) + d * sum(grad)``
    (the gradient of ``(xhat * r + d) * scale``). Returns as `trainBackward`."""
    renormCombine = data.backend.batchNorm.renormCombine
    correctedScale = data.backend.gpuarray.empty(scale.shape, scale.dtype)
    renormCombine(correction, scale, None, correctedScale)
    ingrad, scalegrad, biasgrad = trainBackward(
        data, grad, layout, scale=correctedScale, saved=saved, updGrad=updGrad, gradType=gradType,
        paramGrads=paramGrads, ingrad=ingrad,
    )
    if data.size:
        renormCombine(correction, scalegrad, biasgrad, scalegrad)
    return ingrad, scalegrad, biasgrad


def evalForward(data, layout, *, scale, bias, running, epsilon, out, activation=None, residual=None):
    """Normalizes with the given statistics (a `RunningStatistics`), fused with `activation` and `residual` as
    `trainForward`; `out` may be `data` (in place) or None (a new pool array). Returns the output."""
    out = data.backend.gpuarray.empty(data.shape, data.dtype) if out is None else out
    if data.size == 0:
        return out

    work = workOutput(layout, out)
    data.backend.batchNorm.evalForward(
        workInput(layout, data), work, layout.shape3, scale=scale, bias=bias, running=running, epsilon=epsilon,
        activation=activation, residual=workInput(layout, residual),
    )
    return finishOutput(layout, work, out)


def backwardPass(
    primitive, data, grad, layout, scale, updGrad, gradType, paramGrads, ingrad, fused=None, **statistics
):
    """Allocates ``(ingrad, scalegrad, biasgrad)`` (ingrad like `grad`, None unless `updGrad`, or the given one, which
    may be `grad` itself; the parameter gradients of scale's shape and `gradType`, or the arrays `paramGrads` names),
    runs `primitive` with `statistics` over the layout and returns them. `fused` (a `FusedGradient`, after a fused
    forward) adds the activation, the forward's output and the residual's gradient; `data` may be None then
    (InPlace-ABN)."""
    arrays = grad.backend.gpuarray
    ingrad = (arrays.empty(grad.shape, grad.dtype) if ingrad is None else ingrad) if updGrad else None
    scalegrad, biasgrad = paramGrads
    scalegrad = arrays.empty(scale.shape, gradType) if scalegrad is None else scalegrad
    biasgrad = arrays.empty(scale.shape, gradType) if biasgrad is None else biasgrad

    # NOTE: sums over no elements are zero; handled here once, so the primitives never see empty data
    if grad.size == 0:
        return ingrad, scalegrad.fill(0), biasgrad.fill(0)

    work = workOutput(layout, ingrad) if updGrad else None
    extra = {}
    if fused is not None:
        resgradWork = workOutput(layout, fused.resgrad)
        extra = dict(activation=fused.activation, outdata=workInput(layout, fused.outdata), resgrad=resgradWork)
    primitive(
        workInput(layout, data), workInput(layout, grad), work, layout.shape3, scale=scale, scalegrad=scalegrad,
        biasgrad=biasgrad, **statistics, **extra,
    )
    if fused is not None and fused.resgrad is not None:
        finishOutput(layout, resgradWork, fused.resgrad)
    return finishOutput(layout, work, ingrad), scalegrad, biasgrad


def trainBackward(
    data, grad, layout, *, scale, saved, updGrad, gradType, paramGrads=(None, None), ingrad=None, fused=None
):
    """Backward after a training forward, from its `BatchStatistics`. Returns ``(ingrad, scalegrad, biasgrad)``: ingrad
    like `data` (None unless `updGrad`; written into `ingrad` when given), the parameter gradients of scale's shape and
    `gradType`, written into the arrays of `paramGrads` ``(scalegrad, biasgrad)`` where they are not None. After a
    fused forward, `fused` (a `FusedGradient`); with `data` None, xhat is rebuilt from the output with ``fused.bias``
    and `scale` (InPlace-ABN)."""
    primitive = grad.backend.batchNorm.backward
    extra = {} if fused is None else {"bias": fused.bias}
    return backwardPass(
        primitive, data, grad, layout, scale, updGrad, gradType, paramGrads, ingrad, fused, saved=saved, **extra
    )


def frozenBackward(
    data, grad, layout, *, scale, running, epsilon, updGrad, gradType, paramGrads=(None, None), ingrad=None,
    fused=None,
):
    """Backward after an evaluation forward with the statistics `running` (constants). Returns as `trainBackward`."""
    primitive = grad.backend.batchNorm.frozenBackward
    return backwardPass(
        primitive, data, grad, layout, scale, updGrad, gradType, paramGrads, ingrad, fused, running=running,
        epsilon=epsilon,
    )
