"""Batch normalization as stateless functions (cuDNN-like and Theano-like), on whichever backend is in use.

This file is backend-independent: it validates arguments, maps the normalized axes onto the three-axis view
``(outer, maps, inner)`` and calls the backend's primitives (`Backend.Cpu.BatchNormKernels` or
`Backend.Cuda.BatchNormKernels`), so CPU and CUDA agree on every check and every shape. Modules own the state
(parameters, running statistics, the factor schedule); these functions own the math.

Two families of functions:

- cuDNN-like, used by the modules: `batchNormNd`, `batchNormNdBackward` (mode ``spatial`` / ``perActivation``, or
  any ``axes``; running statistics updated in place).
- Theano-like, pure (no argument is modified; results are new arrays): `batchNormTrain`, `batchNormTest`,
  `batchNormalization` with the semantics of Theano's ``batch_normalization_train``, ``batch_normalization_test`` and
  ``batch_normalization`` (``theano.tensor.nnet.bn``), and their gradients `batchNormTrainBackward`,
  `batchNormTestBackward`, `batchNormalizationBackward`.

Any set of normalized axes works. When the kept (not normalized) axes are adjacent, which covers per-activation,
spatial, channels-last ``(N, d1, ..., C)`` with axes ``(0, ..., nd)``, ``(0, 1)`` on ``(N, T, C)`` and ``(0, 2)`` on
``(N, C, T)``, the data is only *viewed* as ``(outer, maps, inner)``: no copy. When they are not adjacent (e.g. axes
``(1,)`` on ``(N, C, T)`` or ``(0, 2)`` on 4D data), no such view exists: the data (and the gradient) are permuted into
a pool buffer of layout ``(kept axes..., normalized axes...)``, normalized as ``(1, maps, m)``, and the result is
permuted back (`Backend.Permute`). That fallback costs two extra passes over the data; the modules never take it.

Formulas: Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", arXiv 1502.03167, Algorithm 1; the running variance is unbiased (m / (m - 1)) as in Theano and cuDNN.
"""

import numpy as np

from PuzzleLib.Backend import Permute, gpuarray
from PuzzleLib.Backend.Checks import checkArray
from PuzzleLib.Backend.Loader import backendModule

_kernels = backendModule("BatchNormKernels")

# NOTE: float32 and float16 on every backend; the CPU backend adds float64 for finite-difference gradient checks
dataTypes = _kernels.dataTypes
modes = ("spatial", "perActivation")
axesNames = ("per-activation", "peractivation", "spatial")

float32, float64 = np.dtype(np.float32), np.dtype(np.float64)


class BatchNormLayout:
    """How a data shape splits into (outer, maps, inner) for a set of normalized axes.

    Attributes:
        axes (tuple of int): normalized axes, sorted, non-negative.
        shape3 (tuple of int): (outer, maps, inner); m = outer * inner elements are averaged per map.
        paramShape (tuple of int): the data shape with normalized axes set to 1 (the keepdims form).
        droppedShape (tuple of int): the data shape with normalized axes removed.
        perm (tuple of int or None): None when the kept axes are adjacent (the data is viewed in place); else the
            permutation ``kept axes + normalized axes`` the data goes through first (then shape3 is (1, maps, m)).
        inverse (tuple of int or None): the permutation that brings permuted results back.
    """

    def __init__(self, shape, axes):
        ndim = len(shape)
        axes = tuple(sorted(axes))
        kept = [axis for axis in range(ndim) if axis not in axes]
        prod = lambda dims: int(np.prod(dims, dtype=np.int64))

        self.shape, self.axes = tuple(shape), axes
        self.paramShape = tuple(1 if axis in axes else dim for axis, dim in enumerate(shape))
        self.droppedShape = tuple(shape[axis] for axis in kept)

        if kept and kept != list(range(kept[0], kept[-1] + 1)):
            # NOTE: per-map vectors are the kept axes in row-major order both ways, so parameters need no permutation
            self.perm = tuple(kept) + axes
            self.inverse = tuple(int(axis) for axis in np.argsort(self.perm))
            self.shape3 = (1, prod([shape[axis] for axis in kept]), prod([shape[axis] for axis in axes]))
        else:
            first, last = (kept[0], kept[-1] + 1) if kept else (ndim, ndim)
            self.perm, self.inverse = None, None
            self.shape3 = (prod(shape[:first]), prod(shape[first:last]), prod(shape[last:]))

    @property
    def maps(self):
        return self.shape3[1]

    @property
    def m(self):
        return self.shape3[0] * self.shape3[2]

    def toWork(self, ary):
        """The array the primitives read: `ary` itself, or its permuted copy (a new pool array)."""
        return ary if self.perm is None else Permute.permute(ary, self.perm)

    def workBuffer(self, out, dtype):
        """Where the primitives write: `out` itself when no permutation is needed, else a pool buffer."""
        if self.perm is None:
            return out
        return gpuarray.empty(tuple(self.shape[axis] for axis in self.perm), dtype)

    def fromWork(self, work, out):
        """Brings a result written into `workBuffer` back into `out`."""
        if self.perm is not None and work is not None:
            Permute.permute(work, self.inverse, out=out)
        return out


def normalizeAxes(axes, ndim):
    """Normalized axes, sorted and non-negative, from Theano's ``axes`` argument.

    ``"per-activation"`` (or Theano's spelling ``"peractivation"``) is (0,); ``"spatial"`` is (0, 2, 3, ..., ndim - 1);
    a tuple or list of ints is taken as is, negative entries counting from the end as in numpy.

    Raises:
        ValueError: an unknown name, an empty tuple, an entry that is not an int, an axis out of range for `ndim`, or
            an axis given twice; the message names what was expected and what was given.
    """
    if isinstance(axes, str):
        if axes not in axesNames:
            raise ValueError(
                "axes must be one of %s or a tuple of ints; got %r" % (", ".join(map(repr, axesNames)), axes)
            )
        return (0,) if axes != "spatial" else (0,) + tuple(range(2, ndim))

    if not isinstance(axes, (tuple, list)) or any(
        isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) for axis in axes
    ):
        raise ValueError("axes must be %s or a tuple of ints; got %r" % (", ".join(map(repr, axesNames)), axes))
    if len(axes) == 0:
        raise ValueError("axes must name at least one axis to normalize over; got an empty %s" % type(axes).__name__)

    outside = [int(axis) for axis in axes if not -ndim <= axis < ndim]
    if outside:
        raise ValueError(
            "axes must lie in [%d, %d] for %dD inputs; got %s (out of range: %s)"
            % (-ndim, ndim - 1, ndim, tuple(int(a) for a in axes), ", ".join(map(str, outside)))
        )

    result = [int(axis) % ndim for axis in axes]
    if len(set(result)) != len(result):
        repeated = sorted({axis for axis in result if result.count(axis) > 1})
        raise ValueError(
            "axes must not name an axis twice; got %s (repeated: %s)"
            % (tuple(int(a) for a in axes), ", ".join(map(str, repeated)))
        )
    return tuple(sorted(result))


def modeAxes(mode, ndim):
    """Normalized axes of a mode: ``spatial`` -> (0, 2, ..., ndim - 1), ``perActivation`` -> (0,).

    Raises:
        ValueError: for another mode, or for data of fewer than 2 dimensions.
    """
    if mode not in modes:
        raise ValueError("mode must be one of %s; got %r" % (modes, mode))
    if ndim < 2:
        raise ValueError("batch normalization expects data of at least 2 dimensions (batch, maps, ...); got %dD" % ndim)
    return (0,) + tuple(range(2, ndim)) if mode == "spatial" else (0,)


def paramTypes(dtype):
    """Dtypes allowed for per-map arrays with data of `dtype`: float32; float64 too for float64 data (CPU backend)."""
    return (float32, float64) if dtype == float64 else (float32,)


def statType(dtype):
    """Dtype of the statistics and parameter gradients the Theano-like functions return."""
    return float64 if dtype == float64 else float32


def checkParam(name, ary, layout, dtypes=(float32,)):
    checkArray(name, ary, dtypes=dtypes)
    if ary.shape not in (layout.paramShape, layout.droppedShape):
        raise ValueError(
            "%s must have shape %s (or %s without the normalized axes); got %s"
            % (name, layout.paramShape, layout.droppedShape, ary.shape)
        )


def checkData(data, axes, name="data"):
    checkArray(name, data, dtypes=dataTypes)
    return BatchNormLayout(data.shape, axes)


def checkEpsilon(epsilon):
    if not epsilon > 0:
        raise ValueError("epsilon must be > 0; got %r" % (epsilon,))


def checkFactor(factor, name="factor"):
    if not 0.0 <= factor <= 1.0:
        raise ValueError("%s must be in [0, 1]; got %r" % (name, factor))


def checkBatch(layout):
    if layout.m < 2:
        raise ValueError(
            "training batch normalization needs at least 2 elements per map to estimate a variance; data of shape %s "
            "has %d" % (layout.shape, layout.m)
        )


def dataAxes(ndim, mode, axes):
    return modeAxes(mode, ndim) if axes is None else normalizeAxes(axes, ndim)


# cuDNN-like functions (the modules' entry points) --------------------------------------------------------------------


def batchNormNd(
    data, scale, bias, mean, var, epsilon=1e-5, factor=1.0, test=False, mode="spatial", out=None, axes=None
):
    """Batch-normalization forward.

    Args:
        data (GPUArray): float32 or float16 (float64 too on the CPU backend: `dataTypes`), shape (N, C, d1, ..., dk)
            for ``spatial`` (k >= 0) or (N, C, ...) for ``perActivation``; any shape with `axes`.
        scale, bias, mean, var (GPUArray): float32 per-map parameters and running statistics, of the data shape with
            the normalized axes set to 1 (e.g. (1, C, 1, 1)) or removed.
        epsilon (float): > 0, added to the variance.
        factor (float): weight of the new batch in the running averages (training only).
        test (bool): False for training (batch statistics; `mean` and `var` updated in place), True for evaluation.
        mode (str): ``spatial`` normalizes over all axes but 1; ``perActivation`` over axis 0 only.
        out (GPUArray or None): where to write the output (same shape and dtype as `data`; in evaluation it may be
            `data` itself, for in-place normalization); a new pool array when None.
        axes (tuple of int, str or None): the normalized axes, as in `batchNormTrain`; overrides `mode` when given
            (e.g. ``(0, 1, 2)`` for channels-last (N, H, W, C) data).

    Returns:
        training: ``(out, savemean, saveinvvar)``, the batch mean and inverse standard deviation 1 / sqrt(sigma2 + eps)
        (float32, shaped like `mean`); evaluation: ``out``.

    Raises:
        TypeError: an argument is not a GPUArray of the backend in use.
        ValueError: wrong dtype or shape, a mode other than the two, bad `axes`, epsilon <= 0, or (training) m < 2
            elements per map. Nothing is written when it raises.
    """
    checkArray("data", data, dtypes=dataTypes)
    layout = BatchNormLayout(data.shape, dataAxes(data.ndim, mode, axes))
    return forward(data, scale, bias, mean, var, layout, epsilon, factor, test, out)


def forward(data, scale, bias, mean, var, layout, epsilon, factor, test, out, statShape=None, names=None):
    """Shared forward of every entry point. In training `mean`/`var` may both be None (no running update); the saved
    statistics then take `statShape`."""
    names = names or ("scale", "bias", "mean", "var")
    dtypes = paramTypes(data.dtype)
    for name, param in zip(names, (scale, bias, mean, var), strict=True):
        if param is not None or test:
            checkParam(name, param, layout, dtypes)
    checkEpsilon(epsilon)

    if out is not None:
        checkArray("out", out, dtypes=(data.dtype,), shape=data.shape)

    if test:
        out = gpuarray.empty(data.shape, data.dtype) if out is None else out
        work = layout.workBuffer(out, data.dtype)
        _kernels.evalForward(layout.toWork(data), work, layout.shape3, scale, bias, mean, var, epsilon)
        return layout.fromWork(work, out)

    if (mean is None) != (var is None):
        raise ValueError("%s and %s must be given together or not at all" % names[2:])
    checkBatch(layout)
    if out is not None and out.ptr == data.ptr:
        raise ValueError("training batch normalization cannot write its output over its input (out is data)")
    checkFactor(factor)

    out = gpuarray.empty(data.shape, data.dtype) if out is None else out
    if statShape is None:
        statShape, stype = (scale.shape if mean is None else mean.shape), float32
    else:
        stype = statType(data.dtype)
    savemean, saveinvvar = gpuarray.empty(statShape, stype), gpuarray.empty(statShape, stype)

    work = layout.workBuffer(out, data.dtype)
    _kernels.trainForward(
        layout.toWork(data), work, layout.shape3, scale, bias, mean, var, savemean, saveinvvar, epsilon, factor
    )
    return layout.fromWork(work, out), savemean, saveinvvar


def batchNormNdBackward(
    data,
    grad,
    scale,
    savemean=None,
    saveinvvar=None,
    epsilon=1e-5,
    mode="spatial",
    test=False,
    mean=None,
    var=None,
    updGrad=True,
    axes=None,
):
    """Batch-normalization backward.

    After a training forward (``test=False``), with xhat = (x - savemean) * saveinvvar and m elements per map:
    ``biasgrad = sum(grad)``, ``scalegrad = sum(grad * xhat)``,
    ``ingrad = scale * saveinvvar / m * (m * grad - biasgrad - xhat * scalegrad)`` (Ioffe & Szegedy 2015, section 3).
    After an evaluation forward (``test=True``, frozen statistics: pass the running `mean` and `var`;
    `savemean`/`saveinvvar` are not used): invstd = 1 / sqrt(var + epsilon), ``ingrad = grad * scale * invstd``,
    ``scalegrad = sum(grad * (x - mean) * invstd)``, ``biasgrad = sum(grad)``.

    Args:
        data, grad (GPUArray): the forward's input and the gradient of its output; same shape, float32 or float16.
        scale, savemean, saveinvvar, mean, var (GPUArray): float32 per-map arrays (shapes as in `batchNormNd`).
        epsilon (float): the forward's epsilon (used when ``test``).
        mode (str): ``spatial`` or ``perActivation``, as in the forward.
        updGrad (bool): compute `ingrad`; when False it is returned as None.
        axes (tuple of int, str or None): the forward's normalized axes; overrides `mode` when given.

    Returns:
        ``(ingrad, scalegrad, biasgrad)``: `ingrad` like `data`; the parameter gradients float32, shaped like `scale`.

    Raises:
        TypeError, ValueError: as `batchNormNd`, and when `grad` differs from `data` in shape or dtype, or a needed
            statistic is missing.
    """
    checkArray("data", data, dtypes=dataTypes)
    layout = BatchNormLayout(data.shape, dataAxes(data.ndim, mode, axes))
    return backwardLayout(data, grad, scale, savemean, saveinvvar, layout, epsilon, test, mean, var, updGrad)


def backwardLayout(
    data, grad, scale, savemean, saveinvvar, layout, epsilon, test, mean, var, updGrad, gradType=float32, names=None
):
    names = names or ("data", "grad", "scale", "savemean", "saveinvvar", "mean", "var")
    dtypes = paramTypes(data.dtype)
    checkArray(names[1], grad, dtypes=(data.dtype,), shape=data.shape)
    checkParam(names[2], scale, layout, dtypes)
    stats = ((names[5], mean), (names[6], var)) if test else ((names[3], savemean), (names[4], saveinvvar))
    for name, stat in stats:
        if stat is None:
            raise ValueError(
                "%s is needed for the backward pass after %s forward"
                % (name, "an evaluation" if test else "a training")
            )
        checkParam(name, stat, layout, dtypes)
    if test:
        checkEpsilon(epsilon)

    ingrad = gpuarray.empty(data.shape, data.dtype) if updGrad else None
    scalegrad, biasgrad = gpuarray.empty(scale.shape, gradType), gpuarray.empty(scale.shape, gradType)

    # NOTE: sums over no elements are zero; handled here once, so the backends' primitives never see empty data
    if data.size == 0:
        return ingrad, scalegrad.fill(0), biasgrad.fill(0)

    x, dy = layout.toWork(data), layout.toWork(grad)
    work = layout.workBuffer(ingrad, data.dtype) if updGrad else None
    if test:
        _kernels.frozenBackward(x, dy, work, layout.shape3, scale, mean, var, epsilon, scalegrad, biasgrad)
    else:
        _kernels.backward(x, dy, work, layout.shape3, scale, savemean, saveinvvar, scalegrad, biasgrad)

    return layout.fromWork(work, ingrad), scalegrad, biasgrad


# Theano-like functions -----------------------------------------------------------------------------------------------


def batchNormTrain(
    inputs,
    gamma,
    beta,
    axes="per-activation",
    epsilon=1e-4,
    runningAverageFactor=0.1,
    runningMean=None,
    runningVar=None,
):
    """Batch normalization with the batch's own statistics; Theano's ``batch_normalization_train``.

    With m the number of elements averaged per map (the product of the normalized axes' sizes)::

        mean   = inputs.mean(axes)                  var = inputs.var(axes)      (biased: divide by m)
        invstd = 1 / sqrt(var + epsilon)
        out    = (inputs - mean) * gamma * invstd + beta
        newRunningMean = runningMean * (1 - runningAverageFactor) + mean * runningAverageFactor
        newRunningVar  = runningVar  * (1 - runningAverageFactor) + m / (m - 1) * var * runningAverageFactor

    Pure: no argument is modified, every result is a new pool array.

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
        TypeError: an argument is not a GPUArray of the backend in use.
        ValueError: bad `axes` (unknown name, empty, not ints, out of range, repeated), a per-map array of another
            shape (the message names both allowed shapes) or dtype, only one of `runningMean`/`runningVar`,
            epsilon <= 0, a factor outside [0, 1], or fewer than 2 elements per map.

    Example:
        >>> out, mean, invstd = Dnn.batchNormTrain(x, gamma, beta, axes="spatial")      # x: (N, C, H, W); gamma: (C,)
    """
    checkArray("inputs", inputs, dtypes=dataTypes)
    layout = BatchNormLayout(inputs.shape, normalizeAxes(axes, inputs.ndim))
    if (runningMean is None) != (runningVar is None):
        raise ValueError(
            "runningMean and runningVar must be given together or not at all; got only %s"
            % ("runningMean" if runningVar is None else "runningVar")
        )

    running = runningMean is not None
    if running:
        for name, stat in (("runningMean", runningMean), ("runningVar", runningVar)):
            checkParam(name, stat, layout, paramTypes(inputs.dtype))
    checkParam("gamma", gamma, layout, paramTypes(inputs.dtype))
    checkFactor(runningAverageFactor, "runningAverageFactor")

    # NOTE: the primitive updates running statistics in place; updating copies keeps this function pure
    newMean, newVar = (runningMean.copy(), runningVar.copy()) if running else (None, None)
    out, mean, invstd = forward(
        inputs,
        gamma,
        beta,
        newMean,
        newVar,
        layout,
        epsilon,
        runningAverageFactor,
        False,
        None,
        statShape=gamma.shape,
        names=("gamma", "beta", "runningMean", "runningVar"),
    )
    return (out, mean, invstd, newMean, newVar) if running else (out, mean, invstd)


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
    checkArray("inputs", inputs, dtypes=dataTypes)
    layout = BatchNormLayout(inputs.shape, normalizeAxes(axes, inputs.ndim))
    return forward(
        inputs, gamma, beta, mean, var, layout, epsilon, 0.0, True, None, names=("gamma", "beta", "mean", "var")
    )


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
    checkArray("inputs", inputs, dtypes=dataTypes)
    layout = BatchNormLayout(inputs.shape, normalizeAxes(axes, inputs.ndim))
    return backwardLayout(
        inputs,
        grad,
        gamma,
        mean,
        invstd,
        layout,
        1.0,
        False,
        None,
        None,
        True,
        gradType=statType(inputs.dtype),
        names=("inputs", "grad", "gamma", "mean", "invstd", None, None),
    )


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
    checkArray("inputs", inputs, dtypes=dataTypes)
    layout = BatchNormLayout(inputs.shape, normalizeAxes(axes, inputs.ndim))
    stype = statType(inputs.dtype)
    dinputs, dgamma, dbeta = backwardLayout(
        inputs,
        grad,
        gamma,
        None,
        None,
        layout,
        epsilon,
        True,
        mean,
        var,
        True,
        gradType=stype,
        names=("inputs", "grad", "gamma", None, None, "mean", "var"),
    )

    host = lambda ary: ary.get().astype(np.float64).reshape(layout.maps)
    invstd = 1.0 / np.sqrt(host(var) + epsilon)
    dmean = -host(gamma) * invstd * host(dbeta)
    dvar = -0.5 * host(gamma) * invstd**2 * host(dgamma)
    toDevice = lambda vector, like: gpuarray.to_gpu(vector.astype(stype).reshape(like.shape))
    return dinputs, dgamma, dbeta, toDevice(dmean, mean), toDevice(dvar, var)


def broadcastLayout(inputs, arrays, names):
    """Layout of `batchNormalization`: an axis is kept when any of `arrays` varies along it, normalized otherwise."""
    ndim = inputs.ndim
    for name, ary in zip(names, arrays, strict=True):
        checkArray(name, ary, dtypes=paramTypes(inputs.dtype))
        if ary.ndim != ndim or any(dim not in (1, full) for dim, full in zip(ary.shape, inputs.shape, strict=True)):
            raise ValueError(
                "%s must have the dimensionality of inputs (%dD) and broadcast against its shape %s (each axis 1 or "
                "the inputs' size); got shape %s" % (name, ndim, inputs.shape, ary.shape)
            )
    kept = {axis for ary in arrays for axis, dim in enumerate(ary.shape) if dim > 1}
    return BatchNormLayout(inputs.shape, tuple(axis for axis in range(ndim) if axis not in kept))


def hostParams(layout, arrays):
    """The arrays in float64 on the host, broadcast to the layout's keepdims shape and flattened per map."""
    return [np.broadcast_to(ary.get().astype(np.float64), layout.paramShape).reshape(layout.maps) for ary in arrays]


def normalizationParams(inputs, gamma, beta, mean, std):
    """Checks the arrays of `batchNormalization` and prepares them for the eval primitive.

    Returns ``(layout, (g, b, mu, s), gain, toDevice, stype)``: the broadcast layout, the four arrays per map in
    float64 on the host, gain = g / s, a function that puts a per-map vector on the device in the layout's keepdims
    shape, and the per-map dtype.
    """
    checkArray("inputs", inputs, dtypes=dataTypes)
    arrays = (gamma, beta, mean, std)
    layout = broadcastLayout(inputs, arrays, ("gamma", "beta", "mean", "std"))
    hostArrays = hostParams(layout, arrays)

    stype = statType(inputs.dtype)
    with np.errstate(divide="ignore", invalid="ignore"):
        gain = hostArrays[0] / hostArrays[3]

    def toDevice(vector):
        return gpuarray.to_gpu(vector.astype(stype).reshape(layout.paramShape))

    return layout, hostArrays, gain, toDevice, stype


def reduceTo(vector, layout, like, dtype):
    """Sums a per-map vector of the layout's keepdims shape over the axes `like` broadcasts along; a device array."""
    full = vector.reshape(layout.paramShape)
    axes = tuple(axis for axis, dim in enumerate(like.shape) if dim == 1 and full.shape[axis] > 1)
    return gpuarray.to_gpu(full.sum(axis=axes, keepdims=True).astype(dtype).reshape(like.shape))


def batchNormalization(inputs, gamma, beta, mean, std):
    """Normalization with given statistics as a broadcast expression; Theano's ``batch_normalization``::

        out = (inputs - mean) * (gamma / std) + beta

    Every array has the dimensionality of `inputs` and, along each axis, either its size or 1. The axes along which
    any of them varies are the kept axes (one "map" per combination); the others are normalized axes. The per-map
    gain ``gamma / std`` is formed on the host (O(maps) work, one correctly rounded division per map, as Theano's graph
    computes it) and the data pass runs on the backend's evaluation primitive with variance 0 and epsilon 1, which
    divides by exactly sqrt(1) = 1: no ``var = std**2 - epsilon`` round trip, so no precision is lost.

    Args:
        inputs (GPUArray): float32 or float16 (float64 too on the CPU backend), at least 1D.
        gamma, beta, mean, std (GPUArray): float32 (float64 allowed with float64 inputs), broadcastable as above.

    Returns:
        ``out``, a new array like `inputs`.

    Raises:
        TypeError: an argument is not a GPUArray of the backend in use.
        ValueError: a wrong dtype, or an array of another dimensionality or not broadcastable against `inputs`.
    """
    layout, (_, b, mu, _), gain, toDevice, stype = normalizationParams(inputs, gamma, beta, mean, std)
    zeros = gpuarray.zeros(layout.paramShape, stype)
    return forward(inputs, toDevice(gain), toDevice(b), toDevice(mu), zeros, layout, 1.0, 0.0, True, None)


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
    layout, (g, _, mu, s), gain, toDevice, stype = normalizationParams(inputs, *arrays)
    zeros = gpuarray.zeros(layout.paramShape, stype)
    # NOTE: variance 0 and epsilon 1 make the primitive's invstd exactly 1: the sums come back unscaled
    dinputs, sumXmu, sumGrad = backwardLayout(
        inputs,
        grad,
        toDevice(gain),
        None,
        None,
        layout,
        1.0,
        True,
        toDevice(mu),
        zeros,
        True,
        gradType=stype,
        names=("inputs", "grad", "gamma", None, None, "mean", "std"),
    )

    sumXmu, sumGrad = (ary.get().astype(np.float64).reshape(layout.maps) for ary in (sumXmu, sumGrad))
    with np.errstate(divide="ignore", invalid="ignore"):
        grads = (sumXmu / s, sumGrad, -sumGrad * gain, -sumXmu * gain / s)
    return (dinputs,) + tuple(reduceTo(d, layout, like, stype) for d, like in zip(grads, arrays, strict=True))
