"""Float64 numpy reference of batch normalization, written independently of the library's kernels.

The forward follows Ioffe & Szegedy 2015 (arXiv 1502.03167), Algorithm 1, with numpy's own mean and variance; the
backward is the paper's chain rule written out term by term (through dxhat, dvar and dmu), not the compact form the
kernels use, so the two derivations check each other. All arrays keep the normalized axes with size 1.
"""

from types import SimpleNamespace

import numpy as np


def spatialAxes(ndim):
    """Normalized axes of spatial batch norm: (0, 2, 3, ..., ndim - 1)."""
    return (0,) + tuple(range(2, ndim))


def elementsPerMap(shape, axes):
    return int(np.prod([shape[axis] for axis in axes]))


def activation(z, kind, slope=None):
    """The activations in float64, as their papers define them: `kind` one of relu, leakyRelu (slope * z below 0,
    default slope 0.01), elu (slope * (exp(z) - 1) below 0, Clevert et al. 2015, arXiv 1511.07289, default 1.0),
    sigmoid, tanh; "identity" or None gives z."""
    slope = {"leakyRelu": 0.01, "elu": 1.0}.get(kind, 0.0) if slope is None else slope
    if kind == "relu":
        return np.maximum(z, 0.0)
    if kind == "leakyRelu":
        return np.where(z > 0, z, slope * z)
    if kind == "elu":
        return np.where(z > 0, z, slope * np.expm1(np.minimum(z, 0.0)))
    if kind == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if kind == "tanh":
        return np.tanh(z)
    return z


def asParam(param, x, axes):
    """Reshapes a per-map parameter to the keepdims shape of `x` for `axes`, in float64."""
    shape = tuple(1 if axis in axes else dim for axis, dim in enumerate(x.shape))
    return np.asarray(param, dtype=np.float64).reshape(shape)


def batchNormTrain(x, scale, bias, axes, epsilon):
    """Training forward; returns a namespace with out, mean, var (biased), unbiasedVar, invstd, axes, m."""
    x = np.asarray(x, dtype=np.float64)
    axes = tuple(axes)
    scale, bias = asParam(scale, x, axes), asParam(bias, x, axes)

    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    invstd = 1.0 / np.sqrt(var + epsilon)
    m = elementsPerMap(x.shape, axes)

    return SimpleNamespace(
        out=(x - mean) * invstd * scale + bias,
        mean=mean,
        var=var,
        unbiasedVar=var * m / (m - 1),
        invstd=invstd,
        axes=axes,
        m=m,
    )


def batchNormEval(x, scale, bias, mean, var, epsilon, axes=None):
    """Evaluation forward with given statistics: (x - mean) / sqrt(var + epsilon) * scale + bias."""
    x = np.asarray(x, dtype=np.float64)
    axes = spatialAxes(x.ndim) if axes is None else tuple(axes)
    scale, bias, mean, var = (asParam(p, x, axes) for p in (scale, bias, mean, var))
    return (x - mean) / np.sqrt(var + epsilon) * scale + bias


def runningUpdate(mean, var, batchMean, batchVar, m, factor):
    """Running statistics after one training batch: exponential average with the unbiased batch variance."""
    return (1 - factor) * mean + factor * batchMean, (1 - factor) * var + factor * batchVar * m / (m - 1)


def normalizationBackward(x, dxhat, axes, epsilon):
    """The chain rule through xhat = (x - mean) / sqrt(var + epsilon), the batch's mean and biased var taken from `x`,
    written out term by term (dxhat -> dvar -> dmean -> dx, Ioffe & Szegedy 2015, section 3); returns (dx, xhat)."""
    m = elementsPerMap(x.shape, axes)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    xmu = x - mean

    dvar = np.sum(dxhat * xmu, axis=axes, keepdims=True) * -0.5 * (var + epsilon) ** -1.5
    dmean = np.sum(-dxhat / np.sqrt(var + epsilon), axis=axes, keepdims=True) + dvar * np.mean(
        -2.0 * xmu, axis=axes, keepdims=True
    )
    dx = dxhat / np.sqrt(var + epsilon) + dvar * 2.0 * xmu / m + dmean / m
    return dx, xmu / np.sqrt(var + epsilon)


def batchNormBackward(x, grad, scale, axes, epsilon):
    """Backward after a training forward; returns (dx, dscale, dbias), the parameter gradients in keepdims shape."""
    x, grad = np.asarray(x, dtype=np.float64), np.asarray(grad, dtype=np.float64)
    axes = tuple(axes)
    scale = asParam(scale, x, axes)

    dx, xhat = normalizationBackward(x, grad * scale, axes, epsilon)
    return dx, np.sum(grad * xhat, axis=axes, keepdims=True), np.sum(grad, axis=axes, keepdims=True)


def frozenBackward(x, grad, scale, mean, var, epsilon, axes=None):
    """Backward after an evaluation forward (statistics are constants); returns (dx, dscale, dbias)."""
    x, grad = np.asarray(x, dtype=np.float64), np.asarray(grad, dtype=np.float64)
    axes = spatialAxes(x.ndim) if axes is None else tuple(axes)
    scale, mean, var = (asParam(p, x, axes) for p in (scale, mean, var))

    xhat = (x - mean) / np.sqrt(var + epsilon)
    dx = grad * scale / np.sqrt(var + epsilon)
    return dx, np.sum(grad * xhat, axis=axes, keepdims=True), np.sum(grad, axis=axes, keepdims=True)


def batchRenormTrain(x, scale, bias, axes, epsilon, renormMean, renormStd, **clipping):
    """Batch Renormalization's training forward (Ioffe 2017, arXiv 1702.03275, Algorithm 1, with TensorFlow's floor
    of the moving standard deviation at sqrt(epsilon)), with the bounds `clipping` (``rmin`` default 0, ``rmax`` and
    ``dmax`` default inf); returns the namespace of `batchNormTrain` plus r, d, sigma (all keepdims, float64)."""
    rmin, rmax, dmax = clipping.pop("rmin", 0.0), clipping.pop("rmax", np.inf), clipping.pop("dmax", np.inf)
    assert not clipping, clipping
    ref = batchNormTrain(x, scale, bias, axes, epsilon)
    x = np.asarray(x, dtype=np.float64)
    renormMean, renormStd = asParam(renormMean, x, ref.axes), asParam(renormStd, x, ref.axes)
    std = np.maximum(renormStd, np.sqrt(epsilon))
    ref.sigma = np.sqrt(ref.var + epsilon)
    ref.r = np.clip(ref.sigma / std, rmin, rmax)
    ref.d = np.clip((ref.mean - renormMean) / std, -dmax, dmax)
    xhat = (x - ref.mean) / ref.sigma
    ref.out = (xhat * ref.r + ref.d) * asParam(scale, x, ref.axes) + asParam(bias, x, ref.axes)
    return ref


def batchRenormBackward(x, grad, scale, axes, epsilon, r, d):
    """Backward of `batchRenormTrain` with r and d constants; returns (dx, dscale, dbias), dx through the chain rule of
    `normalizationBackward` with dxhat = grad * scale * r."""
    x, grad = np.asarray(x, dtype=np.float64), np.asarray(grad, dtype=np.float64)
    axes = tuple(axes)
    scale, r, d = (asParam(p, x, axes) for p in (scale, r, d))

    dx, xhat = normalizationBackward(x, grad * scale * r, axes, epsilon)
    return dx, np.sum(grad * (xhat * r + d), axis=axes, keepdims=True), np.sum(grad, axis=axes, keepdims=True)


def checkModule(bn, shape, seed):
    """Self-test shared by the spatial modules: a training forward, backward and evaluation forward of `bn` (maps on
    axis 1) on seeded data of `shape`, each against the float64 reference. Returns (data, training reference)."""
    from PuzzleLib.Backend import gpuarray

    np.random.seed(seed)
    hostData = np.random.normal(2.0, 3.0, size=shape).astype(np.float32)
    out = bn(gpuarray.to_gpu(hostData)).get()
    ref = batchNormTrain(hostData, bn.scale.get(), bn.bias.get(), spatialAxes(hostData.ndim), bn.epsilon)
    assert np.allclose(out, ref.out, atol=1e-5)
    assert np.allclose(bn.mean.get(), ref.mean, rtol=1e-5)
    assert np.allclose(bn.var.get(), ref.unbiasedVar, rtol=1e-5)

    hostGrad = np.random.randn(*shape).astype(np.float32)
    bn.backward(gpuarray.to_gpu(hostGrad))
    dx, dscale, dbias = batchNormBackward(hostData, hostGrad, bn.scale.get(), ref.axes, bn.epsilon)
    assert np.allclose(bn.grad.get(), dx, atol=1e-5)
    assert np.allclose(bn.vars["scale"].grad.get(), dscale, atol=1e-4)
    assert np.allclose(bn.vars["bias"].grad.get(), dbias, atol=1e-4)

    bn.evalMode()
    out = bn(gpuarray.to_gpu(hostData)).get()
    refEval = batchNormEval(hostData, bn.scale.get(), bn.bias.get(), bn.mean.get(), bn.var.get(), bn.epsilon)
    assert np.allclose(out, refEval, atol=1e-5)
    return hostData, ref
