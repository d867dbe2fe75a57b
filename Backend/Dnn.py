"""Batch normalization as stateless functions, on the backend of the arrays they are given.

- cuDNN-like: `batchNormNd` and `batchNormNdBackward` (SPEC section 2): the normalized axes come from `mode`
  (``"spatial"``, ``"perActivation"``, or any tuple of axes); running statistics are updated in place.
- The training forward and backward in two halves each, for statistics merged across processes
  (`Modules.SyncBatchNormND`): `batchNormNdStatistics` then `batchNormNdNormalize`; `batchNormNdBackward` with
  ``updGrad=False`` (the sums) then `batchNormNdInputGradient`.
- Batch Renormalization (Ioffe 2017, arXiv 1702.03275): `batchRenormNd` and `batchRenormNdBackward`
  (`Backend.BatchRenormDnn`), batch normalization's training passes with a per-map correction toward moving statistics.
- Theano-like, pure: `batchNormTrain`, `batchNormTest`, `batchNormalization` and their gradients
  (`Backend.TheanoBatchNorm`).

Modules own the state (parameters, running statistics, the factor schedule); these functions own the math. Every
argument is checked here, once, for both backends (`Backend.BatchNormChecks`, `BatchNormLayout.checkPerMap`); then
the call's plan (`Backend.BatchNormPlan.planOf`) computes. The modules check their own contract and call the plans
themselves, so a module's call is checked once too. Formulas: Ioffe & Szegedy 2015, "Batch Normalization:
Accelerating Deep Network Training by Reducing Internal Covariate Shift", arXiv 1502.03167, Algorithm 1 and section 3;
the running variance is unbiased (m / (m - 1)) as in Theano and cuDNN.
"""

import numpy as np

from PuzzleLib.Backend import Contract
from PuzzleLib.Backend.BatchNormChecks import (
    backwardCase,
    checkApart,
    checkBackward,
    checkCounter,
    float32,
    float64,
    perMapTypes,
    statType,
)
from PuzzleLib.Backend.BatchNormLayout import checkData, modeAxes
from PuzzleLib.Backend.BatchNormPlan import planOf
from PuzzleLib.Backend.BatchRenormDnn import batchRenormNd, batchRenormNdBackward
from PuzzleLib.Backend.Checks import checkArray, checkEpsilon, checkFactor, commonBackend, fusedActivation, invertible
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
    axes = modeAxes(mode, data.ndim)
    layout = checkData("data", data, backend, axes)
    perMap = perMapTypes(data.dtype)
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

    plan = planOf(data, axes, Contract.PlanOptions(epsilon, fused, residual is not None))
    out = backend.gpuarray.emptyLike(data) if out is None else out
    if test:
        plan.evalForward(Contract.EvalForward(data, out, scale, bias, mean, var, residual))
        return out

    if (mean is None) != (var is None):
        raise ValueError("mean and var must be given together or not at all")
    layout.checkBatch()
    checkFactor(factor)
    if out.ptr == data.ptr and not (fused is not None and invertible(fused) and residual is None):
        raise ValueError(
            "training batch normalization writes its output over its input (out is data) only with an invertible "
            "activation (identity, leakyRelu or elu with slope > 0) and no residual, whose backward rebuilds the "
            "input from the output; got activation=%r%s"
            % (activation, " and a residual" if residual is not None else "")
        )
    statShape = scale.shape if mean is None else mean.shape
    savemean, saveinvvar = (backend.gpuarray.empty(statShape, float32) for _ in range(2))
    plan.trainForward(
        Contract.TrainForward(data, out, scale, bias, mean, var, skipped, savemean, saveinvvar, factor, residual)
    )
    return out, savemean, saveinvvar


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

    The keyword combinations it takes (plain, fused, rebuilt) are those of `BatchNormChecks.backwardCase`, which
    validates them.

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
            another argument; a keyword combination `BatchNormChecks.backwardCase` refuses. Nothing is written when it
            raises.
    """
    case = backwardCase(data, test, activation, slope, outdata, bias, resgrad, updGrad)
    stats = {"mean": mean, "var": var} if test else {"savemean": savemean, "saveinvvar": saveinvvar}
    outs = {"scalegrad": scalegrad, "biasgrad": biasgrad}
    layout, backend = checkBackward(case, data, grad, scale, mode, stats, outs, ingrad=ingrad, updGrad=updGrad,
                                    outdata=outdata, bias=bias, resgrad=resgrad)
    if test:
        checkEpsilon(epsilon)

    like = grad if data is None else data
    plan = planOf(like, layout.axes, Contract.PlanOptions(epsilon, case.activation))
    arrays = backend.gpuarray
    ingrad = (arrays.emptyLike(grad) if ingrad is None else ingrad) if updGrad else None
    scalegrad = arrays.empty(scale.shape, float32) if scalegrad is None else scalegrad
    biasgrad = arrays.empty(scale.shape, float32) if biasgrad is None else biasgrad
    if test:
        plan.frozenBackward(
            Contract.FrozenBackward(data, grad, ingrad, scale, mean, var, scalegrad, biasgrad, outdata, resgrad)
        )
    else:
        plan.backward(Contract.Backward(
            data, grad, ingrad, scale, savemean, saveinvvar, scalegrad, biasgrad, bias, outdata, resgrad
        ))
    return ingrad, scalegrad, biasgrad


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
    if out is not None:
        out = Contract.BatchMoments(*out)
    backend = commonBackend(data=data, **({} if out is None else {"mean": out.mean, "var": out.var}))
    axes = modeAxes(mode, data.ndim)
    layout = checkData("data", data, backend, axes)
    if out is None:
        arrays = backend.gpuarray
        out = Contract.BatchMoments(*(arrays.empty(layout.paramShape, statType(data.dtype)) for _ in range(2)))
    else:
        layout.checkPerMap("mean", out.mean, (float32, float64))
        layout.checkPerMap("var", out.var, (out.mean.dtype,))
    planOf(data, axes, Contract.PlanOptions(1.0)).batchStatistics(Contract.Moments(data, out.mean, out.var))
    return out


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
    axes = modeAxes(mode, data.ndim)
    layout = checkData("data", data, backend, axes)
    perMap = perMapTypes(data.dtype)
    for name, ary in (("scale", scale), ("bias", bias), ("savemean", savemean), ("saveinvvar", saveinvvar)):
        layout.checkPerMap(name, ary, perMap)
    if out is not None:
        checkArray("out", out, dtypes=(data.dtype,), shape=data.shape)
        if out.ptr == data.ptr and data.size:
            raise ValueError("batchNormNdNormalize cannot write its output over its input (out is data)")
    out = backend.gpuarray.emptyLike(data) if out is None else out
    planOf(data, axes, Contract.PlanOptions(1.0)).normalize(
        Contract.Normalize(data, out, scale, bias, savemean, saveinvvar)
    )
    return out


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
    axes = modeAxes(mode, data.ndim)
    layout = checkData("data", data, backend, axes)
    checkArray("grad", grad, dtypes=(data.dtype,), shape=data.shape)
    perMap = perMapTypes(data.dtype)
    for name, ary in (
        ("scale", scale), ("savemean", savemean), ("saveinvvar", saveinvvar), ("scalegrad", scalegrad),
        ("biasgrad", biasgrad),
    ):
        layout.checkPerMap(name, ary, perMap)
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)) or count <= 0:
        raise ValueError("count must be a positive int (the elements per map the sums span); got %r" % (count,))
    ingrad = backend.gpuarray.emptyLike(data)
    planOf(data, axes, Contract.PlanOptions(1.0)).inputGradient(
        Contract.InputGradient(data, grad, ingrad, scale, savemean, saveinvvar, scalegrad, biasgrad, int(count))
    )
    return ingrad
