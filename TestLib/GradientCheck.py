"""Finite-difference gradient checker (central differences, float64)."""

import numpy as np


def numericGradient(func, x, grad, step=1e-6):
    """d/dx of sum(func(x) * grad) by central differences.

    Args:
        func: maps a float64 ndarray of x's shape to an ndarray of grad's shape.
        x (ndarray): float64 point of evaluation (not modified).
        grad (ndarray): weights of the outputs (the "gradient of the output" a backward pass receives).
        step (float): the finite-difference step.

    Returns:
        float64 ndarray of x's shape.
    """
    x = np.array(x, dtype=np.float64)
    result = np.empty_like(x)
    flat, out = x.reshape(-1), result.reshape(-1)

    for i in range(flat.size):
        saved = flat[i]
        flat[i] = saved + step
        plus = np.sum(func(x) * grad)
        flat[i] = saved - step
        minus = np.sum(func(x) * grad)
        flat[i] = saved
        out[i] = (plus - minus) / (2.0 * step)

    return result


def relativeError(analytic, numeric):
    """max |analytic - numeric| / max(1, max |numeric|)."""
    analytic, numeric = np.asarray(analytic, dtype=np.float64), np.asarray(numeric, dtype=np.float64)
    return float(np.max(np.abs(analytic - numeric)) / max(1.0, float(np.max(np.abs(numeric)))))


def moduleInputGradientError(module, x, grad):
    """`relativeError` of a module's input gradient (one forward on the float64 host array `x`, then ``backward(grad)``)
    against the central differences of its forward; the module is left after that forward and backward."""
    from PuzzleLib.Backend import gpuarray

    numeric = numericGradient(lambda point: module(gpuarray.to_gpu(point)).get(), x, grad)
    module(gpuarray.to_gpu(x))
    module.backward(gpuarray.to_gpu(grad))
    return relativeError(module.grad.get(), numeric)
