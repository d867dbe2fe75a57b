"""Batch-normalization primitives of the CPU backend, over numpy. Twin of `Backend.Cuda.BatchNormKernels`.

Every tensor is viewed as ``shape3 = (outer, maps, inner)`` and normalized per map over ``outer`` and ``inner``
(``m = outer * inner`` elements per map): per-activation data ``(N, C)`` is ``(N, C, 1)``, spatial data
``(N, C, d1, ..., dk)`` is ``(N, C, d1 * ... * dk)``, channels-last data ``(N, d1, ..., C)`` is
``(N * d1 * ..., C, 1)``.
Data, output and gradients are float32, float16 (computed in float32) or float64 (computed in float64, for
finite-difference gradient checks); per-map parameters and statistics are float32.

Statistics are two-pass (mean, then the mean of squared deviations) with float32 partial sums over short runs combined
in float64, as PyTorch's CPU kernels accumulate in double: a map whose mean is 1e4 times its standard deviation keeps
its variance to ~1e-6 relative. Formulas: Ioffe & Szegedy 2015 (arXiv 1502.03167), Algorithm 1 and section 3.
"""

import numpy as np

from PuzzleLib.Backend.Cpu.GPUArray import empty, hostView

ROWS_PER_CHUNK = 1024


def view3(ary, shape3):
    return hostView(ary).reshape(shape3)


def mapVector(ary, maps):
    return hostView(ary).reshape(maps)


dataTypes = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))


def computeType(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def asCompute(x3):
    ctype = computeType(x3.dtype)
    return x3 if x3.dtype == ctype else x3.astype(ctype)


def mapSums(x3, y3=None):
    """Per-map float64 sums of x (or of x * y) over axes 0 and 2 of (outer, maps, inner) float32 arrays.

    Runs of at most `ROWS_PER_CHUNK` rows (or one row of `inner` elements, summed pairwise by numpy) are added in
    float32, and those partial sums in float64, which bounds the rounding error by the run length, not by m.
    """
    outer, maps, inner = x3.shape
    if inner > 1:
        rows = np.add.reduce(x3, axis=2) if y3 is None else np.einsum("ijk,ijk->ij", x3, y3)
        return rows.sum(axis=0, dtype=np.float64)

    x2 = x3.reshape(outer, maps)
    y2 = None if y3 is None else y3.reshape(outer, maps)
    total = np.zeros(maps, dtype=np.float64)
    for start in range(0, outer, ROWS_PER_CHUNK):
        xs = x2[start : start + ROWS_PER_CHUNK]
        total += (
            np.add.reduce(xs, axis=0) if y2 is None else np.einsum("ij,ij->j", xs, y2[start : start + ROWS_PER_CHUNK])
        )
    return total


def perMap(vector, ctype=np.float32):
    return vector.astype(ctype).reshape(1, -1, 1)


def trainForward(data, out, shape3, scale, bias, mean, var, savemean, saveinvvar, epsilon, factor):
    """Training forward: batch statistics, normalization, running-statistics update.

    mu = mean(x), sigma2 = mean((x - mu)^2) (biased, divide by m), invstd = 1 / sqrt(sigma2 + epsilon),
    out = (x - mu) * invstd * scale + bias; savemean = mu, saveinvvar = invstd; when `mean` is not None (then `var`
    is given too): mean = (1 - factor) * mean + factor * mu, var = (1 - factor) * var + factor * sigma2 * m / (m - 1)
    (unbiased, as Theano and cuDNN do). The caller guarantees m >= 2 and that `out` is not `data`.
    """
    outer, maps, inner = shape3
    m = outer * inner
    x = asCompute(view3(data, shape3))

    mu = mapSums(x) / m
    y = view3(out, shape3)
    # NOTE: float32 output doubles as the workspace for the deviations; float16 output needs a float32 one
    workspace = None if y.dtype == x.dtype else empty(shape3, x.dtype)
    centered = y if workspace is None else hostView(workspace)
    np.subtract(x, perMap(mu, x.dtype), out=centered)
    sigma2 = mapSums(centered, centered) / m
    invstd = 1.0 / np.sqrt(sigma2 + epsilon)

    centered *= perMap(invstd * mapVector(scale, maps), x.dtype)
    np.add(centered, perMap(mapVector(bias, maps), x.dtype), out=y, casting="same_kind")

    mapVector(savemean, maps)[...] = mu
    mapVector(saveinvvar, maps)[...] = invstd

    if mean is not None:
        runningMean, runningVar = mapVector(mean, maps), mapVector(var, maps)
        runningMean[...] = (1.0 - factor) * runningMean + factor * mu
        runningVar[...] = (1.0 - factor) * runningVar + factor * sigma2 * (m / (m - 1))


def evalForward(data, out, shape3, scale, bias, mean, var, epsilon):
    """Evaluation forward: out = (x - mean) / sqrt(var + epsilon) * scale + bias. `out` may be `data` (in place)."""
    maps = shape3[1]
    gain = mapVector(scale, maps) / np.sqrt(mapVector(var, maps).astype(np.float64) + epsilon)
    shift = mapVector(bias, maps) - mapVector(mean, maps) * gain

    y = view3(out, shape3)
    ctype = computeType(y.dtype)
    np.multiply(view3(data, shape3), perMap(gain, ctype), out=y, casting="same_kind")
    np.add(y, perMap(shift, ctype), out=y, casting="same_kind")


def reduceGradients(x, g, shape3, center, invstd, scalegrad, biasgrad):
    """biasgrad = sum(g), scalegrad = sum(g * (x - center) * invstd); returns (centered workspace, dbias, dscale)."""
    maps = shape3[1]
    workspace = empty(shape3, x.dtype)
    centered = hostView(workspace)
    np.subtract(x, perMap(center, x.dtype), out=centered)

    dbias = mapSums(g)
    dscale = mapSums(g, centered) * invstd
    mapVector(biasgrad, maps)[...] = dbias
    mapVector(scalegrad, maps)[...] = dscale
    return workspace, dbias, dscale


def backward(data, grad, ingrad, shape3, scale, savemean, saveinvvar, scalegrad, biasgrad):
    """Backward after a training forward, with xhat = (x - savemean) * saveinvvar:

    biasgrad = sum(grad), scalegrad = sum(grad * xhat) (both overwritten),
    ingrad = scale * invstd / m * (m * grad - biasgrad - xhat * scalegrad); `ingrad` may be None to skip it.
    """
    outer, maps, inner = shape3
    m = outer * inner
    x, g = asCompute(view3(data, shape3)), asCompute(view3(grad, shape3))
    mu = mapVector(savemean, maps).astype(np.float64)
    invstd = mapVector(saveinvvar, maps).astype(np.float64)

    workspace, dbias, dscale = reduceGradients(x, g, shape3, mu, invstd, scalegrad, biasgrad)
    if ingrad is None:
        return

    gain = mapVector(scale, maps) * invstd
    centered = hostView(workspace)
    centered *= perMap(-gain * invstd * dscale / m, x.dtype)
    centered += perMap(-gain * dbias / m, x.dtype)
    np.multiply(g, perMap(gain, x.dtype), out=view3(ingrad, shape3), casting="same_kind")
    np.add(view3(ingrad, shape3), centered, out=view3(ingrad, shape3), casting="same_kind")


def frozenBackward(data, grad, ingrad, shape3, scale, mean, var, epsilon, scalegrad, biasgrad):
    """Backward after an evaluation forward (statistics are constants), invstd = 1 / sqrt(var + epsilon):

    biasgrad = sum(grad), scalegrad = sum(grad * (x - mean) * invstd), ingrad = grad * scale * invstd.
    """
    maps = shape3[1]
    x, g = asCompute(view3(data, shape3)), asCompute(view3(grad, shape3))
    invstd = 1.0 / np.sqrt(mapVector(var, maps).astype(np.float64) + epsilon)

    reduceGradients(x, g, shape3, mapVector(mean, maps).astype(np.float64), invstd, scalegrad, biasgrad)
    if ingrad is not None:
        gain = perMap(mapVector(scale, maps) * invstd, x.dtype)
        np.multiply(g, gain, out=view3(ingrad, shape3), casting="same_kind")
