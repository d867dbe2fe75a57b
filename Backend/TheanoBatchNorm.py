"""Theano's functional batch normalization, on the backend of the arrays given (re-exported from `Backend.Dnn`).

`batchNormTrain`, `batchNormTest` and `batchNormalization` have the semantics of Theano's
``batch_normalization_train``, ``batch_normalization_test`` and ``batch_normalization`` (``theano.tensor.nnet.bn``);
`batchNormTrainBackward`, `batchNormTestBackward` and `batchNormalizationBackward` are their gradients. All are pure:
no argument is modified, every result is a new pool array of the inputs' backend. Per-map arrays have the inputs'
dimensionality with the normalized axes set to 1 (keepdims) or removed; float32, float64 too with float64 inputs (CPU
backend), whose statistics and gradients are then float64. Any axes work (`Backend.BatchNormLayout`); the passes are
the plans' (`Backend.BatchNormPlan`), as for the modules.
"""

import numpy as np

from PuzzleLib.Backend.BatchNormChecks import perMapTypes, statType
from PuzzleLib.Backend.BatchNormLayout import checkData, layoutOf, normalizeAxes
from PuzzleLib.Backend.BatchNormPlan import planOf
from PuzzleLib.Backend.Checks import checkArray, checkEpsilon, checkFactor, commonBackend
from PuzzleLib.Backend.Contract import Backward, EvalForward, FrozenBackward, PlanOptions, TrainForward

__all__ = [
    "batchNormTrain", "batchNormTest", "batchNormalization",
    "batchNormTrainBackward", "batchNormTestBackward", "batchNormalizationBackward",
]


def checkPerMaps(layout, inputs, **arrays):
    for name, ary in arrays.items():
        layout.checkPerMap(name, ary, perMapTypes(inputs.dtype))


def newArrays(like, count, shape, dtype):
    """`count` new pool arrays of `shape` and `dtype` on the backend of `like`."""
    return [like.backend.gpuarray.empty(shape, dtype) for _ in range(count)]


def batchNormTrain(
    inputs, gamma, beta, axes="per-activation", epsilon=1e-4, runningAverageFactor=0.1, runningMean=None,
    runningVar=None,
):
    """Batch normalization with the batch's own statistics; Theano's ``batch_normalization_train``.

    With m the number of elements averaged per map (the product of the normalized axes' sizes)::

        mean   = inputs.mean(axes)                  var = inputs.var(axes)      (biased: divide by m)
        invstd = 1 / sqrt(var + epsilon)
        out    = (inputs - mean) * gamma * invstd + beta
        newRunningMean = runningMean * (1 - runningAverageFactor) + mean * runningAverageFactor
        newRunningVar  = runningVar  * (1 - runningAverageFactor) + m / (m - 1) * var * runningAverageFactor

    Args:
        inputs (GPUArray): float32 or float16 (float64 too on the CPU backend), any shape.
        gamma, beta (GPUArray): scale and shift, of the shape of `inputs` with the normalized axes set to 1 (keepdims)
            or removed (``ndim == inputs.ndim - len(axes)``); float32 (float64 allowed with float64 inputs).
        axes (str or tuple of int): ``"per-activation"`` / ``"peractivation"`` = (0,), ``"spatial"`` = (0, 2, 3, ...),
            or any tuple of axes (negative ones count from the end). Default ``"per-activation"``, as in Theano.
        epsilon (float): > 0, added to the variance. Default 1e-4, as in Theano; unlike Theano (whose 1e-5 floor comes
            from cuDNN) any positive value is accepted, since the project's own kernels have no such limit.
        runningAverageFactor (float): in [0, 1], the weight of this batch in the new running averages.
        runningMean, runningVar (GPUArray or None): previous running statistics, both or neither, each of the keepdims
            or the dropped shape.

    Returns:
        ``(out, mean, invstd)``, plus ``(newRunningMean, newRunningVar)`` when the running statistics are given.
        `out` is like `inputs`; `mean` and `invstd` are shaped like `gamma` (float32, or float64 for float64 inputs);
        the new running statistics are shaped and typed like the given ones.

    Raises:
        TypeError: an argument is not a GPUArray, or the arrays live on two backends.
        ValueError: bad `axes` (unknown name, empty, not ints, out of range, repeated), a per-map array of another
            shape (the message names both allowed shapes) or dtype, only one of `runningMean`/`runningVar`,
            epsilon <= 0, a factor outside [0, 1], or fewer than 2 elements per map.

    Example:
        >>> out, mean, invstd = Dnn.batchNormTrain(x, gamma, beta, axes="spatial")      # x: (N, C, H, W); gamma: (C,)
    """
    backend = commonBackend(inputs=inputs, gamma=gamma, beta=beta, runningMean=runningMean, runningVar=runningVar)
    axes = normalizeAxes(axes, inputs.ndim)
    layout = checkData("inputs", inputs, backend, axes)
    if (runningMean is None) != (runningVar is None):
        raise ValueError(
            "runningMean and runningVar must be given together or not at all; got only %s"
            % ("runningMean" if runningVar is None else "runningVar")
        )

    running = runningMean is not None
    if running:
        checkPerMaps(layout, inputs, runningMean=runningMean, runningVar=runningVar)
    checkPerMaps(layout, inputs, gamma=gamma, beta=beta)
    checkFactor(runningAverageFactor, "runningAverageFactor")
    checkEpsilon(epsilon)
    layout.checkBatch()

    # NOTE: the primitive updates running statistics in place; updating copies keeps this function pure
    newRunning = (runningMean.copy(), runningVar.copy()) if running else (None, None)
    (out,) = newArrays(inputs, 1, inputs.shape, inputs.dtype)
    mean, invstd = newArrays(inputs, 2, gamma.shape, statType(inputs.dtype))
    planOf(inputs, axes, PlanOptions(epsilon)).trainForward(
        TrainForward(inputs, out, gamma, beta, *newRunning, None, mean, invstd, runningAverageFactor)
    )
    return (out, mean, invstd) + (newRunning if running else ())


def batchNormTest(inputs, gamma, beta, mean, var, axes="per-activation", epsilon=1e-4):
    """Batch normalization with given statistics; Theano's ``batch_normalization_test``::

        out = (inputs - mean) * gamma / sqrt(var + epsilon) + beta

    Args:
        inputs (GPUArray): float32 or float16 (float64 too on the CPU backend), any shape.
        gamma, beta, mean, var (GPUArray): per-map arrays, each of the keepdims or the dropped shape (as in
            `batchNormTrain`); usually the running statistics of training.
        axes (str or tuple of int): as in `batchNormTrain`.
        epsilon (float): > 0. Default 1e-4, as in Theano.

    Returns:
        ``out``, a new array like `inputs`.

    Raises:
        TypeError, ValueError: as `batchNormTrain`.
    """
    backend = commonBackend(inputs=inputs, gamma=gamma, beta=beta, mean=mean, var=var)
    axes = normalizeAxes(axes, inputs.ndim)
    layout = checkData("inputs", inputs, backend, axes)
    checkPerMaps(layout, inputs, gamma=gamma, beta=beta, mean=mean, var=var)
    checkEpsilon(epsilon)
    (out,) = newArrays(inputs, 1, inputs.shape, inputs.dtype)
    planOf(inputs, axes, PlanOptions(epsilon)).evalForward(EvalForward(inputs, out, gamma, beta, mean, var))
    return out


def batchNormTrainBackward(inputs, grad, gamma, mean, invstd, axes="per-activation"):
    """Gradients of `batchNormTrain`'s `out` with respect to `inputs`, `gamma` and `beta`.

    With xhat = (inputs - mean) * invstd and m elements per map (Ioffe & Szegedy 2015, section 3)::

        dbeta   = sum(grad)
        dgamma  = sum(grad * xhat)
        dinputs = gamma * invstd / m * (m * grad - dbeta - xhat * dgamma)

    Sums run over the normalized axes. Only the gradient of `out` is propagated: `mean` and `invstd` are returned by
    the forward for inspection and for this function, not as differentiable outputs.

    Args:
        inputs, grad (GPUArray): the forward's inputs and the gradient of its `out` (same shape and dtype).
        gamma, mean, invstd (GPUArray): the forward's `gamma` and the `mean` and `invstd` it returned.
        axes (str or tuple of int): the forward's axes.

    Returns:
        ``(dinputs, dgamma, dbeta)``: `dinputs` like `inputs`; `dgamma` and `dbeta` shaped like `gamma` (float32, or
        float64 for float64 inputs).

    Raises:
        TypeError, ValueError: as `batchNormTrain`, and when `grad` differs from `inputs` in shape or dtype.
    """
    backend = commonBackend(inputs=inputs, grad=grad, gamma=gamma, mean=mean, invstd=invstd)
    axes = normalizeAxes(axes, inputs.ndim)
    layout = checkData("inputs", inputs, backend, axes)
    checkArray("grad", grad, dtypes=(inputs.dtype,), shape=inputs.shape)
    checkPerMaps(layout, inputs, gamma=gamma, mean=mean, invstd=invstd)
    (dinputs,) = newArrays(inputs, 1, inputs.shape, inputs.dtype)
    dgamma, dbeta = newArrays(inputs, 2, gamma.shape, statType(inputs.dtype))
    planOf(inputs, axes, PlanOptions(1.0)).backward(Backward(inputs, grad, dinputs, gamma, mean, invstd, dgamma, dbeta))
    return dinputs, dgamma, dbeta


def batchNormTestBackward(inputs, grad, gamma, mean, var, axes="per-activation", epsilon=1e-4):
    """Gradients of `batchNormTest` with respect to each of its arrays (the statistics are inputs here).

    With invstd = 1 / sqrt(var + epsilon) and xhat = (inputs - mean) * invstd; sums over the normalized axes::

        dinputs = grad * gamma * invstd
        dgamma  = sum(grad * xhat)                  dbeta = sum(grad)
        dmean   = -gamma * invstd * dbeta           dvar  = -gamma * invstd**2 * dgamma / 2

    The two sums come from the backend's frozen-statistics primitive; `dmean` and `dvar` are combined from them per map
    on the host (O(maps) work).

    Args:
        inputs, grad (GPUArray): the forward's inputs and the gradient of its output (same shape and dtype).
        gamma, mean, var (GPUArray): the forward's per-map arrays.
        axes, epsilon: the forward's.

    Returns:
        ``(dinputs, dgamma, dbeta, dmean, dvar)``: `dinputs` like `inputs`; `dgamma`, `dbeta` shaped like `gamma`,
        `dmean` like `mean`, `dvar` like `var` (float32, or float64 for float64 inputs).

    Raises:
        TypeError, ValueError: as `batchNormTest`.
    """
    backend = commonBackend(inputs=inputs, grad=grad, gamma=gamma, mean=mean, var=var)
    axes = normalizeAxes(axes, inputs.ndim)
    layout = checkData("inputs", inputs, backend, axes)
    checkArray("grad", grad, dtypes=(inputs.dtype,), shape=inputs.shape)
    checkPerMaps(layout, inputs, gamma=gamma, mean=mean, var=var)
    checkEpsilon(epsilon)

    stype = statType(inputs.dtype)
    (dinputs,) = newArrays(inputs, 1, inputs.shape, inputs.dtype)
    dgamma, dbeta = newArrays(inputs, 2, gamma.shape, stype)
    planOf(inputs, axes, PlanOptions(epsilon)).frozenBackward(
        FrozenBackward(inputs, grad, dinputs, gamma, mean, var, dgamma, dbeta)
    )

    host = lambda ary: ary.get().astype(np.float64).reshape(layout.maps)
    invstd = 1.0 / np.sqrt(host(var) + epsilon)
    dmean = -host(gamma) * invstd * host(dbeta)
    dvar = -0.5 * host(gamma) * invstd**2 * host(dgamma)
    toDevice = lambda vector, like: backend.gpuarray.to_gpu(vector.astype(stype).reshape(like.shape))
    return dinputs, dgamma, dbeta, toDevice(dmean, mean), toDevice(dvar, var)


class Broadcast:
    """The arrays of `batchNormalization`, checked and prepared for the evaluation primitive.

    An axis is kept when any of the four arrays varies along it, normalized otherwise. The per-map gain
    ``gamma / std`` is formed on the host in float64 (O(maps) work, one correctly rounded division per map, as Theano's
    graph computes it).

    Attributes:
        backend, layout: the inputs' backend and the broadcast layout.
        gamma, beta, mean, std (ndarray): the four arrays per map, float64, on the host.
        gain (ndarray): gamma / std per map.
        statType (numpy.dtype): dtype of the per-map arrays handed to the primitives and returned.
    """

    names = ("gamma", "beta", "mean", "std")

    def __init__(self, inputs, arrays, grad=None):
        self.backend = commonBackend(inputs=inputs, grad=grad, **dict(zip(self.names, arrays, strict=True)))
        checkArray("inputs", inputs, dtypes=self.backend.batchNorm.dataTypes)
        if grad is not None:
            checkArray("grad", grad, dtypes=(inputs.dtype,), shape=inputs.shape)

        ndim = inputs.ndim
        for name, ary in zip(self.names, arrays, strict=True):
            checkArray(name, ary, dtypes=perMapTypes(inputs.dtype))
            if ary.ndim != ndim or any(dim not in (1, full) for dim, full in zip(ary.shape, inputs.shape, strict=True)):
                raise ValueError(
                    "%s must have the dimensionality of inputs (%dD) and broadcast against its shape %s (each axis 1 "
                    "or the inputs' size); got shape %s" % (name, ndim, inputs.shape, ary.shape)
                )
        kept = {axis for ary in arrays for axis, dim in enumerate(ary.shape) if dim > 1}
        self.layout = layoutOf(inputs.shape, tuple(axis for axis in range(ndim) if axis not in kept))
        self.inputs = inputs

        paramShape, maps = self.layout.paramShape, self.layout.maps
        hostArrays = [np.broadcast_to(ary.get().astype(np.float64), paramShape).reshape(maps) for ary in arrays]
        self.gamma, self.beta, self.mean, self.std = hostArrays
        with np.errstate(divide="ignore", invalid="ignore"):
            self.gain = self.gamma / self.std
        self.statType = statType(inputs.dtype)

    def toDevice(self, vector):
        """A per-map host vector as a device array of the layout's keepdims shape."""
        return self.backend.gpuarray.to_gpu(vector.astype(self.statType).reshape(self.layout.paramShape))

    def unitStatistics(self, mean):
        """The given mean and variance 0, on the device: with epsilon 1 the primitives' invstd is exactly 1."""
        return self.toDevice(mean), self.backend.gpuarray.zeros(self.layout.paramShape, self.statType)

    def plan(self):
        """The plan of the inputs over the broadcast layout's normalized axes, with epsilon 1 (see `unitStatistics`)."""
        return planOf(self.inputs, self.layout.axes, PlanOptions(1.0))

    def reduceTo(self, vector, like):
        """Sums a per-map vector over the axes `like` broadcasts along; a device array of like's shape."""
        full = vector.reshape(self.layout.paramShape)
        axes = tuple(axis for axis, dim in enumerate(like.shape) if dim == 1 and full.shape[axis] > 1)
        summed = full.sum(axis=axes, keepdims=True).astype(self.statType).reshape(like.shape)
        return self.backend.gpuarray.to_gpu(summed)


def batchNormalization(inputs, gamma, beta, mean, std):
    """Normalization with given statistics as a broadcast expression; Theano's ``batch_normalization``::

        out = (inputs - mean) * (gamma / std) + beta

    Every array has the dimensionality of `inputs` and, along each axis, either its size or 1. The axes along which
    any of them varies are the kept axes (one "map" per combination); the others are normalized axes. The data pass
    runs on the backend's evaluation primitive with the gain ``gamma / std`` (formed on the host), variance 0 and
    epsilon 1, which divides by exactly sqrt(1) = 1: no ``var = std**2 - epsilon`` round trip, so no precision is lost.

    Args:
        inputs (GPUArray): float32 or float16 (float64 too on the CPU backend), at least 1D.
        gamma, beta, mean, std (GPUArray): float32 (float64 allowed with float64 inputs), broadcastable as above.

    Returns:
        ``out``, a new array like `inputs`.

    Raises:
        TypeError: an argument is not a GPUArray, or the arrays live on two backends.
        ValueError: a wrong dtype, or an array of another dimensionality or not broadcastable against `inputs`.
    """
    params = Broadcast(inputs, (gamma, beta, mean, std))
    (out,) = newArrays(inputs, 1, inputs.shape, inputs.dtype)
    params.plan().evalForward(EvalForward(
        inputs, out, params.toDevice(params.gain), params.toDevice(params.beta), *params.unitStatistics(params.mean)
    ))
    return out


def batchNormalizationBackward(inputs, grad, gamma, beta, mean, std):
    """Gradients of `batchNormalization` with respect to each of its arrays, as Theano's graph gives them.

    Sums run over the axes along which each array broadcasts::

        dinputs = grad * gamma / std
        dgamma  = sum(grad * (inputs - mean)) / std       dbeta = sum(grad)
        dmean   = -sum(grad) * gamma / std                dstd  = -sum(grad * (inputs - mean)) * gamma / std**2

    The data pass (dinputs and the two sums) runs on the backend's frozen-statistics primitive; the per-map products
    are formed on the host.

    Args:
        inputs, grad (GPUArray): the forward's inputs and the gradient of its output (same shape and dtype).
        gamma, beta, mean, std (GPUArray): the forward's arrays.

    Returns:
        ``(dinputs, dgamma, dbeta, dmean, dstd)``, each shaped like its array (per-map gradients float32, or float64 for
        float64 inputs).

    Raises:
        TypeError, ValueError: as `batchNormalization`, and when `grad` differs from `inputs` in shape or dtype.
    """
    arrays = (gamma, beta, mean, std)
    params = Broadcast(inputs, arrays, grad=grad)
    # NOTE: variance 0 and epsilon 1 make the primitive's invstd exactly 1: the sums come back unscaled
    (dinputs,) = newArrays(inputs, 1, inputs.shape, inputs.dtype)
    sumXmu, sumGrad = newArrays(inputs, 2, params.layout.paramShape, params.statType)
    params.plan().frozenBackward(FrozenBackward(
        inputs, grad, dinputs, params.toDevice(params.gain), *params.unitStatistics(params.mean), sumXmu, sumGrad
    ))

    maps = params.layout.maps
    sumXmu, sumGrad = (ary.get().astype(np.float64).reshape(maps) for ary in (sumXmu, sumGrad))
    with np.errstate(divide="ignore", invalid="ignore"):
        grads = (sumXmu / params.std, sumGrad, -sumGrad * params.gain, -sumXmu * params.gain / params.std)
    return (dinputs,) + tuple(params.reduceTo(d, like) for d, like in zip(grads, arrays, strict=True))
