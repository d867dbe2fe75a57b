"""How other frameworks' knobs map onto ours (README, "Coming from another framework"): each test writes the other
framework's documented rule in a few lines of float64 numpy, feeds the same batches to it and to our module, and
compares the running statistics (and, for renorm, the outputs).
"""

import numpy as np
import pytest

from PuzzleLib.Backend import Dnn, gpuarray
from PuzzleLib.Modules import BatchNorm, BatchNorm1D, BatchNorm2D

BATCHES = 7


def batches(shape, seed):
    rng = np.random.default_rng(seed)
    return [rng.normal(rng.uniform(-3, 3), rng.uniform(0.5, 3), size=shape).astype(np.float32) for _ in range(BATCHES)]


def feed(bn, data):
    for x in data:
        bn(gpuarray.to_gpu(x))
    return bn.mean.get().astype(np.float64).ravel(), bn.var.get().astype(np.float64).ravel()


def moments(x, axes):
    x = x.astype(np.float64)
    m = int(np.prod([x.shape[axis] for axis in axes]))
    return x.mean(axis=axes).ravel(), x.var(axis=axes).ravel(), m


@pytest.mark.parametrize("momentum", [0.99, 0.9])
def test_tensorflow_momentum(momentum):
    """TF: moving = momentum * moving + (1 - momentum) * batch, initialised to 0 and 1, channels last (axis=-1).

    TF's moving variance averages the *biased* batch variance; ours averages the unbiased one, so the means agree
    exactly and the variances differ by at most the factor m / (m - 1)."""
    data = batches((4, 5, 6, 3), seed=1)
    bn = BatchNorm2D(3, axis=-1, epsilon=1e-3, initFactor=1 - momentum, minFactor=1 - momentum)
    ourMean, ourVar = feed(bn, data)

    movingMean, movingVar, movingUnbiased = np.zeros(3), np.ones(3), np.ones(3)
    for x in data:
        mu, sigma2, m = moments(x, (0, 1, 2))
        movingMean = momentum * movingMean + (1 - momentum) * mu
        movingVar = momentum * movingVar + (1 - momentum) * sigma2
        movingUnbiased = momentum * movingUnbiased + (1 - momentum) * sigma2 * m / (m - 1)

    np.testing.assert_allclose(ourMean, movingMean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ourVar, movingUnbiased, rtol=1e-5)
    assert np.all(ourVar >= movingVar) and np.all(ourVar <= movingVar * m / (m - 1) * (1 + 1e-6))


@pytest.mark.parametrize("alpha", [0.5, 0.1])
def test_lasagne_alpha(alpha):
    """Lasagne's gist: running = (1 - alpha) * running + alpha * batch, from mean 0 (and std 1), per feature.

    The gist averages standard deviations (biased, with epsilon added to the std); we average unbiased variances, so
    only the mean is the same quantity; the variance follows the same constant-factor rule."""
    data = batches((16, 5), seed=2)
    bn = BatchNorm(5, initFactor=alpha, minFactor=alpha)
    ourMean, ourVar = feed(bn, data)

    runningMean, runningVar = np.zeros(5), np.ones(5)
    for x in data:
        mu, sigma2, m = moments(x, (0,))
        runningMean = (1 - alpha) * runningMean + alpha * mu
        runningVar = (1 - alpha) * runningVar + alpha * sigma2 * m / (m - 1)

    np.testing.assert_allclose(ourMean, runningMean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ourVar, runningVar, rtol=1e-5)


@pytest.mark.parametrize("factor", [0.1, 0.6])
def test_theano_running_average_factor(factor):
    """Theano: running_mean * (1 - f) + mean * f and running_var * (1 - f) + m / (m - 1) * var * f; the same factor as a
    module's constant factor and through the functional API, on (N, T, C) sequences normalized over axes (0, 1)."""
    data = batches((4, 6, 3), seed=3)
    bn = BatchNorm1D(3, axis=-1, initFactor=factor, minFactor=factor)
    ourMean, ourVar = feed(bn, data)

    runningMean, runningVar = np.zeros(3), np.ones(3)
    fnMean, fnVar = gpuarray.zeros((3,), np.float32), gpuarray.to_gpu(np.ones(3, np.float32))
    gamma, beta = gpuarray.to_gpu(np.ones(3, np.float32)), gpuarray.zeros((3,), np.float32)
    for x in data:
        mu, sigma2, m = moments(x, (0, 1))
        runningMean = runningMean * (1 - factor) + mu * factor
        runningVar = runningVar * (1 - factor) + m / (m - 1) * sigma2 * factor
        _, _, _, fnMean, fnVar = Dnn.batchNormTrain(
            gpuarray.to_gpu(x), gamma, beta, (0, 1), 1e-4, factor, runningMean=fnMean, runningVar=fnVar
        )

    for mean, var in ((ourMean, ourVar), (fnMean.get().ravel(), fnVar.get().ravel())):
        np.testing.assert_allclose(mean, runningMean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(var, runningVar, rtol=1e-5)


def test_pytorch_momentum_none_is_a_cumulative_average():
    """PyTorch with momentum=None: the running statistics are the plain average of every batch's mean and unbiased
    variance; ours with initFactor=1, minFactor=0 (factor = 1 / numOfProps)."""
    data = batches((5, 4, 3, 3), seed=4)
    bn = BatchNorm2D(4, initFactor=1.0, minFactor=0.0)
    ourMean, ourVar = feed(bn, data)

    stats = [moments(x, (0, 2, 3)) for x in data]
    m = stats[0][2]
    np.testing.assert_allclose(ourMean, np.mean([s[0] for s in stats], axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ourVar, np.mean([s[1] * m / (m - 1) for s in stats], axis=0), rtol=1e-5)


def test_pytorch_momentum():
    """PyTorch with momentum=0.1: running = (1 - momentum) * running + momentum * batch (unbiased variance), from 0 and
    1; ours with initFactor = minFactor = momentum."""
    momentum = 0.1
    data = batches((5, 4, 3, 3), seed=5)
    bn = BatchNorm2D(4, initFactor=momentum, minFactor=momentum)
    ourMean, ourVar = feed(bn, data)

    runningMean, runningVar = np.zeros(4), np.ones(4)
    for x in data:
        mu, sigma2, m = moments(x, (0, 2, 3))
        runningMean = (1 - momentum) * runningMean + momentum * mu
        runningVar = (1 - momentum) * runningVar + momentum * sigma2 * m / (m - 1)

    np.testing.assert_allclose(ourMean, runningMean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ourVar, runningVar, rtol=1e-5)


def test_tensorflow_renorm():
    """TF's renorm, written from its documentation: r = stddev / max(renorm_stddev, sqrt(eps)) clipped to
    [rmin, rmax] with a missing rmin taken as 0, d = (mean - renorm_mean) / that stddev clipped to [-dmax, dmax], both
    moving statistics updated with renorm_momentum, starting at 0 and 1; channels last. Ours with rmin=0 gives the same
    outputs and renorm statistics."""
    data = batches((4, 5, 6, 3), seed=6)
    eps, renormMomentum = 1e-3, 0.9
    bn = BatchNorm2D(
        3, axis=-1, epsilon=eps, renorm=True, renormMomentum=renormMomentum,
        renormClipping={"rmax": 1.3, "dmax": 0.4, "rmin": 0},
    )
    gamma, beta = bn.scale.get().astype(np.float64).ravel(), bn.bias.get().astype(np.float64).ravel()

    renormMean, renormStddev = np.zeros(3), np.ones(3)
    for x in data:
        out = bn(gpuarray.to_gpu(x)).get()
        mu, sigma2, _ = moments(x, (0, 1, 2))
        stddev = np.sqrt(sigma2 + eps)
        floor = np.maximum(renormStddev, np.sqrt(eps))
        r = np.minimum(np.maximum(stddev / floor, 0.0), 1.3)
        d = np.minimum(np.maximum((mu - renormMean) / floor, -0.4), 0.4)
        expected = ((x - mu) / stddev * r + d) * gamma + beta
        np.testing.assert_allclose(out, expected, atol=5e-5)
        renormMean = renormMomentum * renormMean + (1 - renormMomentum) * mu
        renormStddev = renormMomentum * renormStddev + (1 - renormMomentum) * stddev

    np.testing.assert_allclose(bn.renormMean.get().ravel(), renormMean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.renormStd.get().ravel(), renormStddev, rtol=1e-5)


def test_keras_virtual_batch_size():
    """Keras's virtual_batch_size normalizes each ghost batch by itself, as ours does, but moves the moving statistics
    once per batch by the ghost batches' averaged moments; ours moves them once per ghost batch (Hoffer et al.'s
    Algorithm 1). With the same per-step weight the two running means differ, and ours equals the sequential rule."""
    data = batches((12, 3), seed=7)
    factor = 0.1
    bn = BatchNorm(3, initFactor=factor, minFactor=factor, virtualBatch=4)
    ourMean, _ = feed(bn, data)

    sequential, averaged = np.zeros(3), np.zeros(3)
    for x in data:
        ghostMeans = [moments(x[k : k + 4], (0,))[0] for k in (0, 4, 8)]
        for mu in ghostMeans:
            sequential = (1 - factor) * sequential + factor * mu
        averaged = (1 - factor) * averaged + factor * np.mean(ghostMeans, axis=0)

    np.testing.assert_allclose(ourMean, sequential, rtol=1e-5, atol=1e-6)
    assert np.abs(ourMean - averaged).max() > 0.1
