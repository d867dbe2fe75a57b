"""Batch Renormalization as stateless functions (Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch
Dependence in Batch-Normalized Models", arXiv 1702.03275; TensorFlow's ``renorm=True``): `batchRenormNd` and
`batchRenormNdBackward`, exported by `Backend.Dnn` beside batch normalization's functions, whose checks they share.
"""

from PuzzleLib.Backend.BatchNormChecks import checkBackward, checkCounter, float32, perMapTypes, statType
from PuzzleLib.Backend.BatchNormLayout import checkData, modeAxes
from PuzzleLib.Backend.BatchNormPlan import planOf
from PuzzleLib.Backend.Checks import checkArray, checkEpsilon, checkFactor, commonBackend, renormClipping
from PuzzleLib.Backend.Contract import PlanOptions, RenormBackward, RenormForward


def batchRenormNd(
    data, scale, bias, mean, var, renormMean, renormStd, epsilon=1e-5, factor=1.0, renormMomentum=0.99, mode="spatial",
    *, rmax=None, rmin=None, dmax=None, out=None, skipped=None,
):
    """Batch Renormalization's training forward (Ioffe 2017, arXiv 1702.03275, Algorithm 1; TensorFlow's
    ``renorm=True``).

    With the batch's mu and biased sigma2 per map, ``sigma = sqrt(sigma2 + epsilon)`` and
    ``std = max(renormStd, sqrt(epsilon))`` (TensorFlow's floor), the moving values before this batch::

        r = clip(sigma / std, rmin, rmax)                   # constants in backward
        d = clip((mu - renormMean) / std, -dmax, dmax)
        out = ((x - mu) / sigma * r + d) * scale + bias
        renormMean = renormMomentum * renormMean + (1 - renormMomentum) * mu
        renormStd  = renormMomentum * renormStd  + (1 - renormMomentum) * sigma

    and `mean` and `var`, the statistics evaluation normalizes with, move as in `Dnn.batchNormNd` with `factor` (batch
    normalization's unbiased update; TensorFlow too keeps them apart from the renorm ones). With r = 1 and d = 0 (rmax
    = 1, dmax = 0: the paper's first steps) this is `Dnn.batchNormNd`'s training forward.

    Args:
        data, scale, bias, epsilon, factor, mode, out: as in `Dnn.batchNormNd` (training).
        mean, var (GPUArray or None): the running statistics, updated in place; both None for no update.
        renormMean, renormStd (GPUArray): the moving statistics r and d are taken from, updated in place (per-map
            arrays as `mean`; a model starts them at 0 and 1, as TensorFlow does).
        renormMomentum (float): in [0, 1], the weight of the old value in their update. Default 0.99 (TensorFlow's).
        rmax, rmin, dmax (float or None): the clipping bounds, None for none; a missing rmin is 1 / rmax (the paper's
            [1 / rmax, rmax]; TensorFlow takes 0). rmax >= 1, rmin in [0, 1], dmax >= 0.
        skipped (GPUArray or None): a float32 per-map counter: a map whose batch mean or variance is not finite keeps
            its running and renorm statistics, and gains 1 there (as in `Dnn.batchNormNd`, here with or without
            `mean`).

    Returns:
        ``(out, savemean, saveinvvar, r, d)``: the output, the batch mean and 1 / sigma, and the correction, per-map
        arrays of float32 (float64 for float64 data) shaped like `renormMean`; pass them to `batchRenormNdBackward`.

    Raises:
        TypeError, ValueError: as `Dnn.batchNormNd` (training), and for a missing or misshapen renormMean or
            renormStd, renormMomentum outside [0, 1], bad clipping bounds, or a `skipped` that overlaps another
            argument. Nothing is written when it raises.
    """
    backend = commonBackend(
        data=data, scale=scale, bias=bias, mean=mean, var=var, renormMean=renormMean, renormStd=renormStd, out=out,
        skipped=skipped,
    )
    axes = modeAxes(mode, data.ndim)
    layout = checkData("data", data, backend, axes)
    perMap = perMapTypes(data.dtype)
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

    arrays = backend.gpuarray
    out = arrays.emptyLike(data) if out is None else out
    savemean, saveinvvar, r, d = (arrays.empty(renormMean.shape, statType(data.dtype)) for _ in range(4))
    planOf(data, axes, PlanOptions(epsilon)).renormForward(RenormForward(
        data, out, scale, bias, mean, var, renormMean, renormStd, skipped, savemean, saveinvvar, r, d, factor,
        renormMomentum, clipping,
    ))
    return out, savemean, saveinvvar, r, d


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
        data, grad, mode, updGrad, scalegrad, biasgrad, ingrad: as in `Dnn.batchNormNdBackward` (after a training
            forward).
        scale, savemean, saveinvvar, r, d (GPUArray): per-map arrays: the parameters and what `batchRenormNd`
            returned.

    Returns:
        ``(ingrad, scalegrad, biasgrad)`` as `Dnn.batchNormNdBackward`.

    Raises:
        TypeError, ValueError: as `Dnn.batchNormNdBackward`. Nothing is written when it raises.
    """
    stats = {"savemean": savemean, "saveinvvar": saveinvvar, "r": r, "d": d}
    outs = {"scalegrad": scalegrad, "biasgrad": biasgrad}
    layout, backend = checkBackward(None, data, grad, scale, mode, stats, outs, ingrad=ingrad, updGrad=updGrad)

    arrays = backend.gpuarray
    ingrad = (arrays.emptyLike(grad) if ingrad is None else ingrad) if updGrad else None
    scalegrad = arrays.empty(scale.shape, float32) if scalegrad is None else scalegrad
    biasgrad = arrays.empty(scale.shape, float32) if biasgrad is None else biasgrad
    planOf(data, layout.axes, PlanOptions(1.0)).renormBackward(
        RenormBackward(data, grad, ingrad, scale, savemean, saveinvvar, r, d, scalegrad, biasgrad)
    )
    return ingrad, scalegrad, biasgrad
