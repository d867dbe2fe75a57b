"""Batch normalization as stateless functions, on the backend of the arrays they are given.

- cuDNN-like, the modules' entry points: `batchNormNd` and `batchNormNdBackward` (SPEC section 2): the normalized
  axes come from `mode` (``"spatial"``, ``"perActivation"``, or any tuple of axes); running statistics are updated in
  place.
- The training forward and backward in two halves each, for statistics merged across processes
  (`Modules.SyncBatchNormND`): `batchNormNdStatistics` then `batchNormNdNormalize`; `batchNormNdBackward` with
  ``updGrad=False`` (the sums) then `batchNormNdInputGradient`.
- Batch Renormalization (Ioffe 2017, arXiv 1702.03275): `batchRenormNd` and `batchRenormNdBackward`, batch
  normalization's training passes with a per-map correction toward moving statistics.
- Theano-like, pure: `batchNormTrain`, `batchNormTest`, `batchNormalization` and their gradients, re-exported from
  `Backend.TheanoBatchNorm`.

Modules own the state (parameters, running statistics, the factor schedule); these functions own the math. Every
argument is checked here, once, for both backends; the passes are in `Backend.BatchNormCore`, the axes geometry in
`Backend.BatchNormLayout`. Formulas: Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by
Reducing Internal Covariate Shift", arXiv 1502.03167, Algorithm 1 and section 3; the running variance is unbiased
(m / (m - 1)) as in Theano and cuDNN.
"""

import numpy as np

from PuzzleLib.Backend import BatchNormCore
from PuzzleLib.Backend.BatchNormLayout import modeAxes
from PuzzleLib.Backend.Checks import (
    checkArray,
    checkEpsilon,
    checkFactor,
    commonBackend,
    fusedActivation,
    invertible,
    renormClipping,
)
from PuzzleLib.Backend.Contract import (
    BatchMoments,
    BatchStatistics,
    RenormCorrection,
    RenormStatistics,
    RunningStatistics,
)
from PuzzleLib.Backend.Dispatch import currentBackend
from PuzzleLib.Backend.TheanoBatchNorm import (
    batchNormalization,
    batchNormalizationBackward,
    batchNormTest,
    batchNormTestBackward,
    batchNormTrain,
    batchNormTrainBackward,
)

__all__ = [
    "dataTypes", "batchNormNd", "batchNormNdBackward", "batchNormNdStatistics", "batchNormNdNormalize",
    "batchNormNdInputGradient", "batchRenormNd", "batchRenormNdBackward", "batchNormTrain", "batchNormTest",
    "batchNormalization", "batchNormTrainBackward", "batchNormTestBackward", "batchNormalizationBackward",
]


def dataTypes(backend=None):
    """The data dtypes batch normalization computes in on `backend` (a `Contract.Backend`; default: the backend in
    use): float32 and float16 everywhere, float64 too on the CPU backend (for finite-difference gradient checks)."""
    return (backend or currentBackend()).batchNorm.dataTypes


def batchNormNd(
    data, scale, bias, mean, var, epsilon=1e-5, factor=1.0, test=False, mode="spatial", *, out=None, skipped=None,
    activation=None, slope=None, residual=None,
):
    """Batch-normalization forward, optionally fused with an activation and a residual addition:
    ``out = act(bn(x) + residual)`` in the normalization pass itself (cuDNN's BN_ADD_ACTIVATION, Apex's bn_add_relu).

    Args:
        data (GPUArray): of a dtype in `dataTypes` (float32, float16; float64 on the CPU backend); shape
            (N, C, d1, ..., dk) for ``"spatial"`` (k >= 0), (N, C, ...) for ``"perActivation"``, any with a tuple.
        scale, bias, mean, var (GPUArray): float32 per-map parameters and running statistics, of the data shape with
            the normalized axes set to 1 (e.g. (1, C, 1, 1)) or removed. In training `mean` and `var` may both be None
            (no running update).
        epsilon (float): > 0, added to the variance.
        factor (float): in [0, 1], the weight of the new batch in the running averages (training only).
        test (bool): False for training (batch statistics; `mean` and `var` updated in place), True for evaluation.
        mode (str or tuple of int): ``"spatial"`` normalizes over every axis but 1, ``"perActivation"`` over axis 0;
            a tuple names the normalized axes themselves (e.g. ``(0, 1, 2)`` for channels-last (N, H, W, C) data).
        out (GPUArray or None): where to write the output (shape and dtype of `data`; in evaluation it may be `data`
            itself, for in-place normalization); a new pool array when None.
        skipped (GPUArray or None): training with running statistics only: a float32 per-map counter (shapes as
            `mean`, sharing no memory with another argument) that guards the running update. A map whose batch mean
            or variance is not finite (a NaN or inf in its data) keeps its running mean and variance, and its counter
            gains 1; the output is what the formula gives all the same. When None the update is cuDNN's and
            PyTorch's: a NaN enters the running statistics for good.
        activation (str or None): ``"identity"``, ``"relu"``, ``"leakyRelu"``, ``"elu"``, ``"sigmoid"`` or ``"tanh"``
            (`Contract.FusedActivation` gives the formulas), applied in the same pass; None: none.
        slope (float or None): leakyRelu's negative slope (default 0.01) or elu's alpha (default 1.0), >= 0.
        residual (GPUArray or None): added before the activation; shape and dtype of `data`, apart from `out`.
            With an invertible activation (identity, leakyRelu or elu with slope > 0) and no residual, a training
            `out` may be `data` (InPlace-ABN, Rota Bulo et al. 2018, arXiv 1712.02616): pass ``data=None`` and the
            output to `batchNormNdBackward`, which rebuilds xhat from it.

    Returns:
        training: ``(out, savemean, saveinvvar)``, the batch mean and inverse standard deviation 1 / sqrt(sigma2 + eps)
        (float32, shaped like `mean`, else like `scale`); evaluation: ``out``.

    Raises:
        TypeError: an argument is not a GPUArray, or the arrays live on two backends.
        ValueError: a wrong dtype or shape, an unknown mode or bad axes, epsilon <= 0, a factor outside [0, 1], only
            one of `mean` and `var`, (training) fewer than 2 elements per map or `out` that is `data`, or `skipped`
            in evaluation, without running statistics, or overlapping another argument. Nothing is written when it
            raises.
    """
    backend = commonBackend(
        data=data, scale=scale, bias=bias, mean=mean, var=var, out=out, skipped=skipped, residual=residual
    )
    layout = BatchNormCore.checkData("data", data, backend, modeAxes(mode, data.ndim))
    perMap = BatchNormCore.perMapTypes(data.dtype)
    for name, ary in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
        if ary is not None or test:
            layout.checkPerMap(name, ary, perMap)
    checkEpsilon(epsilon)
    fused = fusedActivation(activation, slope)
    if out is not None:
        checkArray("out", out, dtypes=(data.dtype,), shape=data.shape)
    if residual is not None:
        checkArray("residual", residual, dtypes=(data.dtype,), shape=data.shape)
        if out is not None:
            checkApart("out", out, "the residual is read while the output is written", residual=residual)

    if skipped is not None:
        if test or mean is None:
            raise ValueError(
                "skipped counts the running updates a training forward skips; it needs test=False and mean and var "
                "(got test=%r, mean %s)" % (test, "None" if mean is None else "given")
            )
        checkCounter(layout, skipped, data=data, scale=scale, bias=bias, mean=mean, var=var, out=out)

    if test:
        return BatchNormCore.evalForward(
            data, layout, scale=scale, bias=bias, running=RunningStatistics(mean, var), epsilon=epsilon, out=out,
            activation=fused, residual=residual,
        )

    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together or not at all")
    layout.checkBatch()
    checkFactor(factor)
    if out is not None and out.ptr == data.ptr and not (fused is not None and invertible(fused) and residual is None):
        raise ValueError(
            "training batch normalization writes its output over its input (out is data) only with an invertible "
            "activation (identity, leakyRelu or elu with slope > 0) and no residual, whose backward rebuilds the "
            "input from the output; got activation=%r%s"
            % (activation, " and a residual" if residual is not None else "")
        )

    running = None if mean is None else RunningStatistics(mean, var)
    out, saved = BatchNormCore.trainForward(
        data, layout, scale=scale, bias=bias, running=running, epsilon=epsilon, factor=factor, out=out,
        statShape=scale.shape if mean is None else mean.shape, statType=BatchNormCore.float32, skipped=skipped,
        activation=fused, residual=residual,
    )
    return out, saved.mean, saved.invstd


def batchNormNdBackward(
    data, grad, scale, savemean=None, saveinvvar=None, epsilon=1e-5, mode="spatial", *, test=False, mean=None,
    var=None, updGrad=True, scalegrad=None, biasgrad=None, ingrad=None, activation=None, slope=None, outdata=None,
    bias=None, resgrad=None,
):
    """Batch-normalization backward.

    After a training forward (``test=False``), with xhat = (x - savemean) * saveinvvar and m elements per map:
    ``biasgrad = sum(grad)``, ``scalegrad = sum(grad * xhat)``,
    ``ingrad = scale * saveinvvar / m * (m * grad - biasgrad - xhat * scalegrad)`` (Ioffe & Szegedy 2015, section 3).
    After an evaluation forward (``test=True``, frozen statistics: pass the running `mean` and `var`;
    `savemean`/`saveinvvar` are not used): invstd = 1 / sqrt(var + epsilon), ``ingrad = grad * scale * invstd``,
    ``scalegrad = sum(grad * (x - mean) * invstd)``, ``biasgrad = sum(grad)``.

    Args:
        data, grad (GPUArray): the forward's input and the gradient of its output; same shape and dtype.
        scale, savemean, saveinvvar, mean, var (GPUArray): float32 per-map arrays (shapes as in `batchNormNd`).
        epsilon (float): the forward's epsilon (used when `test`).
        mode (str or tuple of int): the forward's mode.
        test (bool): the forward was an evaluation; then `mean` and `var` are needed.
        updGrad (bool): compute `ingrad`; when False it is returned as None.
        scalegrad, biasgrad (GPUArray or None): where to write the parameter gradients (float32 per-map arrays, in
            the shapes `scale` may have, apart from every input and from each other), overwriting what they held, as
            a module does into its parameters' gradients; new pool arrays when None.
        ingrad (GPUArray or None): where to write the input gradient (shape and dtype of `data`, apart from every
            other argument, but with ``data=None`` it may be `grad` itself: in place; needs `updGrad`), such as rows of
            a larger array; a new pool array when None.
        activation, slope (str or None, float or None): the fused forward's (`batchNormNd`): the formulas above then
            take ``grad * act'(outdata)`` in place of grad, in the same passes.
        outdata (GPUArray or None): the fused forward's output (shape and dtype of `grad`), needed with `activation`.
        bias (GPUArray or None): with ``data=None`` only: the forward's bias.
        resgrad (GPUArray or None): with `activation`: receives ``grad * act'(outdata)``, the gradient of the forward's
            residual (shape and dtype of `grad`, apart from every other argument).

    With ``data=None`` after an in-place training forward (InPlace-ABN, Rota Bulo et al. 2018, arXiv 1712.02616;
    `activation` invertible, `bias` given), ``xhat = (act^-1(outdata) - bias) / scale`` is rebuilt from the output;
    a map whose |scale| is below ``Contract.reconstructionFloor`` divides by that floor (with scale's sign) instead,
    the paper's guard against a vanishing scale, which here leaves the forward's formula as it is.

    Returns:
        ``(ingrad, scalegrad, biasgrad)``: `ingrad` like `grad`; the parameter gradients float32, shaped like `scale`
        (or the given arrays).

    Raises:
        TypeError, ValueError: as `batchNormNd`, and when `grad` differs from `data` in shape or dtype, a needed
            statistic is missing, or a given `scalegrad`, `biasgrad`, `ingrad` or `resgrad` does not fit or overlaps
            another argument; `data` None without an invertible activation, `outdata` and `bias`, or after an
            evaluation forward. Nothing is written when it raises.
    """
    stats = {"mean": mean, "var": var} if test else {"savemean": savemean, "saveinvvar": saveinvvar}
    outs = {"scalegrad": scalegrad, "biasgrad": biasgrad}
    fused = checkFusedBackward(data, grad, activation, slope, outdata, bias, resgrad, test, ingrad)
    if resgrad is not None and not updGrad:
        raise ValueError("resgrad is written by the input gradient's pass: it needs updGrad=True")
    layout = checkBackward(
        data, grad, scale, mode, stats, outs, ingrad, updGrad, "an evaluation" if test else "a training",
        outdata=outdata, bias=bias, resgrad=resgrad,
    )
    if data is None:
        layout.checkPerMap("bias", bias, BatchNormCore.perMapTypes(grad.dtype))

    if test:
        checkEpsilon(epsilon)
        return BatchNormCore.frozenBackward(
            data, grad, layout, scale=scale, running=RunningStatistics(mean, var), epsilon=epsilon, updGrad=updGrad,
            gradType=BatchNormCore.float32, paramGrads=(scalegrad, biasgrad), ingrad=ingrad, fused=fused,
        )
    return BatchNormCore.trainBackward(
        data, grad, layout, scale=scale, saved=BatchStatistics(savemean, saveinvvar), updGrad=updGrad,
        gradType=BatchNormCore.float32, paramGrads=(scalegrad, biasgrad), ingrad=ingrad, fused=fused,
    )


def checkFusedBackward(data, grad, activation, slope, outdata, bias, resgrad, test, ingrad):
    """The checks of a backward's fused arguments; returns the `BatchNormCore.FusedGradient`, or None without an
    activation."""
    fused = fusedActivation(activation, slope)
    if fused is None:
        if outdata is not None or resgrad is not None or data is None:
            raise ValueError(
                "outdata, resgrad and data=None belong to the backward of a forward fused with an activation; got no "
                "activation (without one the residual's gradient is grad itself)"
            )
        return None
    if outdata is None:
        raise ValueError("the backward after a forward fused with %r needs its output (outdata)" % activation)
    checkArray("grad", grad)
    checkArray("outdata", outdata, dtypes=(grad.dtype,), shape=grad.shape)
    if resgrad is not None:
        checkArray("resgrad", resgrad, dtypes=(grad.dtype,), shape=grad.shape)
        checkApart("resgrad", resgrad, "an output may overlap no other argument", grad=grad, outdata=outdata,
                   data=data, ingrad=ingrad)
    if data is None:
        if test or not invertible(fused) or bias is None or resgrad is not None:
            raise ValueError(
                "data=None (the input rebuilt from the output, InPlace-ABN) needs a training backward, an invertible "
                "activation (identity, leakyRelu or elu with slope > 0), bias, and no residual; got test=%r, "
                "activation=%r, bias %s, resgrad %s"
                % (test, activation, "None" if bias is None else "given", "None" if resgrad is None else "given")
            )
    elif bias is not None:
        raise ValueError("bias is read only with data=None (the input rebuilt from the output)")
    return BatchNormCore.FusedGradient(fused, outdata, resgrad, bias)


def checkBackward(data, grad, scale, mode, stats, outs, ingrad, updGrad, after, **fusedArrays):
    """The checks of the backward entry points; returns the data's layout. `stats` ({name: per-map array}) are all
    needed, after `after` forward (for the message); `outs` ({name: per-map array or None}) are the parameter
    gradients' outputs; `fusedArrays` the fused backward's other arrays (checked by `checkFusedBackward`). `data` may
    be None (InPlace-ABN): the layout is `grad`'s then."""
    backend = commonBackend(data=data, grad=grad, scale=scale, ingrad=ingrad, **stats, **outs, **fusedArrays)
    rebuilt = data is None
    if rebuilt:
        layout = BatchNormCore.checkData("grad", grad, backend, modeAxes(mode, grad.ndim))
        data = grad
    else:
        layout = BatchNormCore.checkData("data", data, backend, modeAxes(mode, data.ndim))
        checkArray("grad", grad, dtypes=(data.dtype,), shape=data.shape)

    perMap = BatchNormCore.perMapTypes(data.dtype)
    layout.checkPerMap("scale", scale, perMap)
    for name, ary in stats.items():
        if ary is None:
            raise ValueError("%s is needed for the backward pass after %s forward" % (name, after))
        layout.checkPerMap(name, ary, perMap)
    if outs["scalegrad"] is not None or outs["biasgrad"] is not None:
        checkPerMapOutputs(layout, outs, data=data, grad=grad, scale=scale, **stats)
    if ingrad is not None:
        others = {name: ary for name, ary in fusedArrays.items() if name != "resgrad"}
        # NOTE: InPlace-ABN's input gradient may overwrite grad exactly (each element is read before it is written)
        inPlace = rebuilt and ingrad.ptr == grad.ptr and ingrad.shape == grad.shape and ingrad.dtype == grad.dtype
        checkInputGradient(
            ingrad, updGrad, data=None if rebuilt else data, grad=None if inPlace else grad, scale=scale,
            **stats, **outs, **others, like=grad,
        )
    return layout


def checkInputGradient(ingrad, updGrad, data, like=None, **arrays):
    """Raises ValueError unless `ingrad` can take the input gradient of `data`: `updGrad` set, the shape and dtype of
    `data` (or of `like`), no byte shared with `data` or the other `arrays` (None values are skipped)."""
    if not updGrad:
        raise ValueError("ingrad is given but updGrad is False: no input gradient is computed")
    like = data if like is None else like
    checkArray("ingrad", ingrad, dtypes=(like.dtype,), shape=like.shape)
    checkApart("ingrad", ingrad, "an output may overlap no other argument", data=data, **arrays)


def checkApart(name, ary, why, **arrays):
    """Raises ValueError, saying `why`, when the C-contiguous `ary` shares a byte with one of `arrays` (None values are
    skipped)."""
    start, end = ary.ptr, ary.ptr + ary.nbytes
    for other, otherArray in arrays.items():
        if otherArray is not None and otherArray.nbytes and start < otherArray.ptr + otherArray.nbytes:
            if otherArray.ptr < end:
                raise ValueError("%s must not share memory with %s (%s)" % (name, other, why))


def checkCounter(layout, skipped, **arrays):
    """Raises ValueError unless `skipped` is a float32 per-map array of `layout` sharing no byte with `arrays` (None
    values are skipped)."""
    layout.checkPerMap("skipped", skipped, (BatchNormCore.float32,))
    # NOTE: one output's overlap test, not `checkPerMapOutputs`'s for several: this runs every training forward
    checkApart("skipped", skipped, "the counter is an output of its own", **arrays)


def batchRenormNd(
    data, scale, bias, mean, var, renormMean, renormStd, epsilon=1e-5, factor=1.0, renormMomentum=0.99, mode="spatial",
    *, rmax=None, rmin=None, dmax=None, out=None, skipped=None,
):
    """Batch Renormalization's training forward (Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch
    Dependence in Batch-Normalized Models", arXiv 1702.03275, Algorithm 1; TensorFlow's ``renorm=True``).

    With the batch's mu and biased sigma2 per map, ``sigma = sqrt(sigma2 + epsilon)`` and
    ``std = max(renormStd, sqrt(epsilon))`` (TensorFlow's floor), the moving values before this batch::

        r = clip(sigma / std, rmin, rmax)                   # constants in backward
        d = clip((mu - renormMean) / std, -dmax, dmax)
        out = ((x - mu) / sigma * r + d) * scale + bias
        renormMean = renormMomentum * renormMean + (1 - renormMomentum) * mu
        renormStd  = renormMomentum * renormStd  + (1 - renormMomentum) * sigma

    and `mean` and `var`, the statistics evaluation normalizes with, move as in `batchNormNd` with `factor` (batch
    normalization's unbiased update; TensorFlow too keeps them apart from the renorm ones). With r = 1 and d = 0 (rmax
    = 1, dmax = 0: the paper's first steps) this is `batchNormNd`'s training forward.

    Args:
        data, scale, bias, epsilon, factor, mode, out: as in `batchNormNd` (training).
        mean, var (GPUArray or None): the running statistics, updated in place; both None for no update.
        renormMean, renormStd (GPUArray): the moving statistics r and d are taken from, updated in place (per-map
            arrays as `mean`; a model starts them at 0 and 1, as TensorFlow does).
        renormMomentum (float): in [0, 1], the weight of the old value in their update. Default 0.99 (TensorFlow's).
        rmax, rmin, dmax (float or None): the clipping bounds, None for none; a missing rmin is 1 / rmax (the paper's
            [1 / rmax, rmax]; TensorFlow takes 0). rmax >= 1, rmin in [0, 1], dmax >= 0.
        skipped (GPUArray or None): a float32 per-map counter: a map whose batch mean or variance is not finite keeps
            its running and renorm statistics, and gains 1 there (as in `batchNormNd`, here with or without `mean`).

    Returns:
        ``(out, savemean, saveinvvar, r, d)``: the output, the batch mean and 1 / sigma, and the correction, per-map
        arrays of float32 (float64 for float64 data) shaped like `mean` (like `scale` without it); pass them to
        `batchRenormNdBackward`.

    Raises:
        TypeError, ValueError: as `batchNormNd` (training), and for a missing or misshapen renormMean or renormStd,
            renormMomentum outside [0, 1], bad clipping bounds, or a `skipped` that overlaps another argument. Nothing
            is written when it raises.
    """
    backend = commonBackend(
        data=data, scale=scale, bias=bias, mean=mean, var=var, renormMean=renormMean, renormStd=renormStd, out=out,
        skipped=skipped,
    )
    layout = BatchNormCore.checkData("data", data, backend, modeAxes(mode, data.ndim))
    perMap = BatchNormCore.perMapTypes(data.dtype)
    for name, ary in (("scale", scale), ("bias", bias), ("renormMean", renormMean), ("renormStd", renormStd)):
        layout.checkPerMap(name, ary, perMap)
    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together or not at all")
    for name, ary in (("mean", mean), ("var", var)):
        if ary is not None:
            layout.checkPerMap(name, ary, perMap)
    checkEpsilon(epsilon)
    checkFactor(factor)
    checkFactor(renormMomentum, "renormMomentum")
    clipping = renormClipping(rmax=rmax, rmin=rmin, dmax=dmax)
    if out is not None:
        checkArray("out", out, dtypes=(data.dtype,), shape=data.shape)
        if out.ptr == data.ptr:
            raise ValueError("training batch normalization cannot write its output over its input (out is data)")
    if skipped is not None:
        checkCounter(
            layout, skipped, data=data, scale=scale, bias=bias, mean=mean, var=var, renormMean=renormMean,
            renormStd=renormStd, out=out,
        )
    layout.checkBatch()

    out, saved, correction = BatchNormCore.renormForward(
        data, layout, scale=scale, bias=bias, running=None if mean is None else RunningStatistics(mean, var),
        renorm=RenormStatistics(renormMean, renormStd), epsilon=epsilon, factor=factor, renormMomentum=renormMomentum,
        clipping=clipping, out=out, statShape=renormMean.shape, statType=BatchNormCore.statType(data.dtype),
        skipped=skipped,
    )
    return out, saved.mean, saved.invstd, correction.r, correction.d


def batchRenormNdBackward(
    data, grad, scale, savemean, saveinvvar, r, d, mode="spatial", *, updGrad=True, scalegrad=None, biasgrad=None,
    ingrad=None,
):
    """Backward after `batchRenormNd`, r and d constants (Ioffe 2017, arXiv 1702.03275, section 3; TensorFlow stops
    their gradients). With xhat = (x - savemean) * saveinvvar and m elements per map::

        biasgrad  = sum(grad)
        scalegrad = r * sum(grad * xhat) + d * biasgrad
        ingrad    = r * scale * saveinvvar / m * (m * grad - biasgrad - xhat * sum(grad * xhat))

    Args:
        data, grad, mode, updGrad, scalegrad, biasgrad, ingrad: as in `batchNormNdBackward` (after a training
            forward).
        scale, savemean, saveinvvar, r, d (GPUArray): per-map arrays: the parameters and what `batchRenormNd`
            returned.

    Returns:
        ``(ingrad, scalegrad, biasgrad)`` as `batchNormNdBackward`.

    Raises:
        TypeError, ValueError: as `batchNormNdBackward`. Nothing is written when it raises.
    """
    stats = {"savemean": savemean, "saveinvvar": saveinvvar, "r": r, "d": d}
    outs = {"scalegrad": scalegrad, "biasgrad": biasgrad}
    layout = checkBackward(data, grad, scale, mode, stats, outs, ingrad, updGrad, "a renormalizing")

    return BatchNormCore.renormBackward(
        data, grad, layout, scale=scale, saved=BatchStatistics(savemean, saveinvvar), correction=RenormCorrection(r, d),
        updGrad=updGrad, gradType=BatchNormCore.float32, paramGrads=(scalegrad, biasgrad), ingrad=ingrad,
    )


def checkPerMapOutputs(layout, outs, **inputs):
    """Raises ValueError unless each array of `outs` (``{name: GPUArray or None}``) is a float32 per-map array of
    `layout` sharing no byte with the arrays of `inputs` or with the other output."""
    given = [(name, ary) for name, ary in outs.items() if ary is not None]
    for name, ary in given:
        layout.checkPerMap(name, ary, (BatchNormCore.float32,))
    for name, ary in given:
        checkApart(name, ary, "an output may overlap no input and not the other output", **inputs)
        inputs[name] = ary


statisticsTypes = (BatchNormCore.float32, BatchNormCore.float64)


def batchNormNdStatistics(data, mode="spatial", *, out=None):
    """The first half of a training forward: the per-map moments of this batch alone, normalizing nothing.

    This is what each process contributes to synchronized batch normalization, where the moments of every process's
    batch are merged (Chan, Golub & LeVeque 1979) before `batchNormNdNormalize` runs. The method is the training
    forward's (a stable two-pass or Welford/Chan reduction, float32 at least).

    Args:
        data (GPUArray): as in `batchNormNd`; any number of elements per map, none included.
        mode (str or tuple of int): as in `batchNormNd`.
        out (`Contract.BatchMoments` or None): per-map arrays to write into, float32 or float64 (both the same; shapes
            as in `batchNormNd`), such as the two rows of one (2, maps) array that is then sent as one buffer. The CPU
            backend computes the moments in float64 and keeps every digit in float64 arrays; the CUDA kernels compute
            in float32.

    Returns:
        `Contract.BatchMoments` ``(mean, var)``: `out`, or new arrays of the data's shape with the normalized axes set
        to 1, float32 (float64 for float64 data); ``var = mean((x - mean)**2)`` is biased (divided by the element count
        m). With m == 0 both are 0; with m == 1 ``var`` is 0.

    Raises:
        TypeError: an argument is not a GPUArray, or the arrays live on two backends.
        ValueError: a wrong dtype or shape, an unknown mode or bad axes.
    """
    statType = BatchNormCore.statType(data.dtype)
    if out is not None:
        out = BatchMoments(*out)
    backend = commonBackend(data=data, **({} if out is None else {"mean": out.mean, "var": out.var}))
    layout = BatchNormCore.checkData("data", data, backend, modeAxes(mode, data.ndim))
    if out is not None:
        for name, ary in zip(("mean", "var"), out, strict=True):
            layout.checkPerMap(name, ary, (out.mean.dtype,) if name == "var" else statisticsTypes)
    return BatchNormCore.batchStatistics(data, layout, statType=statType, out=out)


def batchNormNdNormalize(data, scale, bias, savemean, saveinvvar, mode="spatial", *, out=None):
    """The second half of a training forward: ``out = (x - savemean) * saveinvvar * scale + bias`` per map, with given
    batch statistics (merged across processes by `Modules.SyncBatchNormND`). No statistic is written.

    Args:
        data (GPUArray): as in `batchNormNd`.
        scale, bias, savemean, saveinvvar (GPUArray): float32 per-map arrays (shapes as in `batchNormNd`; float64 also
            allowed with float64 data).
        mode (str or tuple of int): as in `batchNormNd`.
        out (GPUArray or None): where to write (shape and dtype of `data`, not `data` itself); a new pool array when
            None.

    Returns:
        ``out``.

    Raises:
        TypeError, ValueError: as `batchNormNd`.
    """
    backend = commonBackend(data=data, scale=scale, bias=bias, savemean=savemean, saveinvvar=saveinvvar, out=out)
    layout = BatchNormCore.checkData("data", data, backend, modeAxes(mode, data.ndim))
    perMap = BatchNormCore.perMapTypes(data.dtype)
    for name, ary in (("scale", scale), ("bias", bias), ("savemean", savemean), ("saveinvvar", saveinvvar)):
        layout.checkPerMap(name, ary, perMap)
    if out is not None:
        checkArray("out", out, dtypes=(data.dtype,), shape=data.shape)
        if out.ptr == data.ptr and data.size:
            raise ValueError("batchNormNdNormalize cannot write its output over its input (out is data)")
    return BatchNormCore.normalize(
        data, layout, scale=scale, bias=bias, saved=BatchStatistics(savemean, saveinvvar), out=out
    )


def batchNormNdInputGradient(data, grad, scale, savemean, saveinvvar, scalegrad, biasgrad, count, mode="spatial"):
    """The input gradient of a training forward from given parameter-gradient sums, which may span more elements than
    `data` holds (the batches of every process; Ioffe & Szegedy 2015, section 3)::

        xhat = (x - savemean) * saveinvvar
        ingrad = scale * saveinvvar * (grad - (biasgrad + xhat * scalegrad) / count)

    With the sums of this batch alone and ``count = m`` this is the ``ingrad`` of `batchNormNdBackward`.

    Args:
        data, grad (GPUArray): the forward's input and the gradient of its output; same shape and dtype.
        scale, savemean, saveinvvar (GPUArray): float32 per-map arrays: the parameters and the statistics the forward
            normalized with.
        scalegrad, biasgrad (GPUArray): float32 per-map sums of ``grad * xhat`` and ``grad`` over `count` elements.
        count (int): > 0, the elements per map the sums and statistics span.
        mode (str or tuple of int): as in `batchNormNd`.

    Returns:
        ``ingrad``, a new array like `data`.

    Raises:
        TypeError, ValueError: as `batchNormNdBackward`, and for a count that is not a positive int.
    """
    backend = commonBackend(
        data=data, grad=grad, scale=scale, savemean=savemean, saveinvvar=saveinvvar, scalegrad=scalegrad,
        biasgrad=biasgrad,
    )
    layout = BatchNormCore.checkData("data", data, backend, modeAxes(mode, data.ndim))
    checkArray("grad", grad, dtypes=(data.dtype,), shape=data.shape)
    perMap = BatchNormCore.perMapTypes(data.dtype)
    for name, ary in (
        ("scale", scale), ("savemean", savemean), ("saveinvvar", saveinvvar), ("scalegrad", scalegrad),
        ("biasgrad", biasgrad),
    ):
        layout.checkPerMap(name, ary, perMap)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count <= 0:
        raise ValueError("count must be a positive int (the elements per map the sums span); got %r" % (count,))
    return BatchNormCore.inputGradient(
        data, grad, layout, scale=scale, saved=BatchStatistics(savemean, saveinvvar), scalegrad=scalegrad,
        biasgrad=biasgrad, count=int(count),
    )
