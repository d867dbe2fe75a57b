"""Batch normalization as stateless functions (cuDNN-like), on whichever backend is in use.

This file is backend-independent: it validates arguments, maps the normalization mode onto the three-axis view
``(outer, maps, inner)`` and calls the backend's primitives (`Backend.Cpu.BatchNormKernels` or
`Backend.Cuda.BatchNormKernels`), so CPU and CUDA agree on every check and every shape. Modules own the state
(parameters, running statistics, the factor schedule); these functions own the math.

Formulas: Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", arXiv 1502.03167, Algorithm 1; the running variance is unbiased (m / (m - 1)) as in Theano and cuDNN.
"""

import numpy as np

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Backend.Loader import backendModule

_kernels = backendModule("BatchNormKernels")

# NOTE: float32 and float16 on every backend; the CPU backend adds float64 for finite-difference gradient checks
dataTypes = _kernels.dataTypes
modes = ("spatial", "perActivation")


class BatchNormLayout:
    """How a data shape splits into (outer, maps, inner) for a set of normalized axes.

    Attributes:
        axes (tuple of int): normalized axes, sorted, non-negative.
        shape3 (tuple of int): (outer, maps, inner); m = outer * inner elements are averaged per map.
        paramShape (tuple of int): the data shape with normalized axes set to 1 (the keepdims form).
        droppedShape (tuple of int): the data shape with normalized axes removed.
    """

    def __init__(self, shape, axes):
        ndim = len(shape)
        kept = [axis for axis in range(ndim) if axis not in axes]
        if kept and kept != list(range(kept[0], kept[-1] + 1)):
            raise ValueError(
                "the axes that are not normalized must be adjacent; got normalized axes %s for a %dD input"
                % (tuple(axes), ndim)
            )

        first, last = (kept[0], kept[-1] + 1) if kept else (ndim, ndim)
        prod = lambda dims: int(np.prod(dims, dtype=np.int64))

        self.shape, self.axes = tuple(shape), tuple(axes)
        self.shape3 = (prod(shape[:first]), prod(shape[first:last]), prod(shape[last:]))
        self.paramShape = tuple(1 if axis in axes else dim for axis, dim in enumerate(shape))
        self.droppedShape = tuple(shape[axis] for axis in kept)

    @property
    def maps(self):
        return self.shape3[1]

    @property
    def m(self):
        return self.shape3[0] * self.shape3[2]


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


def checkArray(name, ary, dtypes=None, shape=None):
    if not isinstance(ary, gpuarray.GPUArray):
        raise TypeError("%s must be a GPUArray of the backend in use; got %s" % (name, type(ary).__name__))
    if dtypes is not None and ary.dtype not in dtypes:
        raise ValueError("%s must have dtype %s; got %s" % (name, " or ".join(str(d) for d in dtypes), ary.dtype))
    if shape is not None and ary.shape != tuple(shape):
        raise ValueError("%s must have shape %s; got %s" % (name, tuple(shape), ary.shape))


def checkParam(name, ary, layout):
    checkArray(name, ary, dtypes=(np.dtype(np.float32),))
    if ary.shape not in (layout.paramShape, layout.droppedShape):
        raise ValueError(
            "%s must have shape %s (or %s without the normalized axes); got %s"
            % (name, layout.paramShape, layout.droppedShape, ary.shape)
        )


def checkData(data, axes):
    checkArray("data", data, dtypes=dataTypes)
    return BatchNormLayout(data.shape, axes)


def checkEpsilon(epsilon):
    if not epsilon > 0:
        raise ValueError("epsilon must be > 0; got %r" % (epsilon,))


def batchNormNd(data, scale, bias, mean, var, epsilon=1e-5, factor=1.0, test=False, mode="spatial", out=None):
    """Batch-normalization forward.

    Args:
        data (GPUArray): float32 or float16 (float64 too on the CPU backend: `dataTypes`), shape (N, C, d1, ..., dk)
            for ``spatial`` (k >= 0) or (N, C, ...) for ``perActivation``.
        scale, bias, mean, var (GPUArray): float32 per-map parameters and running statistics, of the data shape with
            the normalized axes set to 1 (e.g. (1, C, 1, 1)) or removed.
        epsilon (float): > 0, added to the variance.
        factor (float): weight of the new batch in the running averages (training only).
        test (bool): False for training (batch statistics; `mean` and `var` updated in place), True for evaluation.
        mode (str): ``spatial`` normalizes over all axes but 1; ``perActivation`` over axis 0 only.
        out (GPUArray or None): where to write the output (same shape and dtype as `data`; in evaluation it may be
            `data` itself, for in-place normalization); a new pool array when None.

    Returns:
        training: ``(out, savemean, saveinvvar)``, the batch mean and inverse standard deviation 1 / sqrt(sigma2 + eps)
        (float32, shaped like `mean`); evaluation: ``out``.

    Raises:
        TypeError: an argument is not a GPUArray of the backend in use.
        ValueError: wrong dtype or shape, a mode other than the two, epsilon <= 0, or (training) m < 2 elements per
            map. Nothing is written when it raises.
    """
    layout = checkData(data, modeAxes(mode, data.ndim))
    return forward(data, scale, bias, mean, var, layout, epsilon, factor, test, out)


def forward(data, scale, bias, mean, var, layout, epsilon, factor, test, out):
    for name, param in (("scale", scale), ("bias", bias), ("mean", mean), ("var", var)):
        checkParam(name, param, layout)
    checkEpsilon(epsilon)

    if out is None:
        out = gpuarray.empty(data.shape, data.dtype)
    else:
        checkArray("out", out, dtypes=(data.dtype,), shape=data.shape)

    if test:
        _kernels.evalForward(data, out, layout.shape3, scale, bias, mean, var, epsilon)
        return out

    if layout.m < 2:
        raise ValueError(
            "training batch normalization needs at least 2 elements per map to estimate a variance; data of shape %s "
            "has %d" % (data.shape, layout.m)
        )
    if out.ptr == data.ptr:
        raise ValueError("training batch normalization cannot write its output over its input (out is data)")
    if not 0.0 <= factor <= 1.0:
        raise ValueError("factor must be in [0, 1]; got %r" % (factor,))

    savemean, saveinvvar = gpuarray.empty(mean.shape, np.float32), gpuarray.empty(mean.shape, np.float32)
    _kernels.trainForward(data, out, layout.shape3, scale, bias, mean, var, savemean, saveinvvar, epsilon, factor)
    return out, savemean, saveinvvar


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

    Returns:
        ``(ingrad, scalegrad, biasgrad)``: `ingrad` like `data`; the parameter gradients float32, shaped like `scale`.

    Raises:
        TypeError, ValueError: as `batchNormNd`, and when `grad` differs from `data` in shape or dtype, or a needed
            statistic is missing.
    """
    layout = checkData(data, modeAxes(mode, data.ndim))
    return backwardLayout(data, grad, scale, savemean, saveinvvar, layout, epsilon, test, mean, var, updGrad)


def backwardLayout(data, grad, scale, savemean, saveinvvar, layout, epsilon, test, mean, var, updGrad):
    checkArray("grad", grad, dtypes=(data.dtype,), shape=data.shape)
    checkParam("scale", scale, layout)
    stats = (("mean", mean), ("var", var)) if test else (("savemean", savemean), ("saveinvvar", saveinvvar))
    for name, stat in stats:
        if stat is None:
            raise ValueError(
                "%s is needed for the backward pass after %s forward"
                % (name, "an evaluation" if test else "a training")
            )
        checkParam(name, stat, layout)
    if test:
        checkEpsilon(epsilon)

    ingrad = gpuarray.empty(data.shape, data.dtype) if updGrad else None
    scalegrad, biasgrad = gpuarray.empty(scale.shape, np.float32), gpuarray.empty(scale.shape, np.float32)

    if test:
        _kernels.frozenBackward(data, grad, ingrad, layout.shape3, scale, mean, var, epsilon, scalegrad, biasgrad)
    else:
        _kernels.backward(data, grad, ingrad, layout.shape3, scale, savemean, saveinvvar, scalegrad, biasgrad)

    return ingrad, scalegrad, biasgrad
