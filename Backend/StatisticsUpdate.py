"""The running statistics' update on host vectors, written once for the numpy kernels (`Backend.Cpu.NumpyBatchNorm`)
and the synchronized modules' merge (`Modules.SyncBatchNormND`), which both move per-map float vectors in place; the
C and CUDA kernels do the same where they finish their statistics (Ioffe & Szegedy 2015, arXiv 1502.03167; the
running variance unbiased, m / (m - 1), as in Theano and cuDNN)."""

import numpy as np


def runningUpdates(mean, var, mu, sigma2, m, factor):
    """The `guardedUpdate` steps of the running statistics `mean` and `var` (host views) toward a batch's `mu` and
    biased `sigma2` over `m` elements per map: ``mean -> mean + factor * (mu - mean)``, ``var`` toward the unbiased
    ``sigma2 * m / (m - 1)``."""
    return [(mean, mu, factor), (var, sigma2 * (m / (m - 1)), factor)]


def guardedUpdate(updates, finite):
    """Moves each ``(target, value, weight)`` of `updates` (float vectors, the target a host view written in place) to
    ``(1 - weight) * target + weight * value``, except where `finite` (a bool vector, or None for everywhere) is False:
    there the target keeps its value (the guard of ``skipNonFinite``)."""
    for target, value, weight in updates:
        new = (1.0 - weight) * target + weight * value
        target[...] = new if finite is None else np.where(finite, new, target)
