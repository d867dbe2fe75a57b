"""The CUDA backend against a float64 numpy reference: GPUArray on the pool, the batch-norm primitives, Blas.

Skipped, with the reason, where the CUDA backend cannot run (pycuda missing, no device) or PUZZLELIB_BACKEND=cpu.
The backend modules are imported inside the fixtures, after that check, so CPU-only machines never import pycuda.
"""

import os

import numpy as np
import pytest

from PuzzleLib import Config


def cudaSkipReason():
    if os.environ.get("PUZZLELIB_BACKEND", "auto").strip().lower() == "cpu":
        return "PUZZLELIB_BACKEND=cpu"
    problem = Config.cudaProblem()
    return None if problem is None else "CUDA backend unavailable: %s" % problem


reason = cudaSkipReason()
pytestmark = pytest.mark.skipif(reason is not None, reason=reason or "")


@pytest.fixture(scope="module")
def gpu():
    from PuzzleLib.Backend.Cuda import GPUArray

    return GPUArray


@pytest.fixture(scope="module")
def bn():
    from PuzzleLib.Backend.Cuda import BatchNormKernels

    return BatchNormKernels


@pytest.fixture(scope="module")
def blas():
    from PuzzleLib.Backend.Cuda import Blas

    return Blas


# float64 reference (Ioffe & Szegedy 2015) ----------------------------------------------------------------------------

def refTrain(x3, scale, bias, mean, var, eps, factor):
    m = x3.shape[0] * x3.shape[2]
    mu = x3.mean(axis=(0, 2))
    sigma2 = ((x3 - mu[None, :, None]) ** 2).mean(axis=(0, 2))
    invstd = 1.0 / np.sqrt(sigma2 + eps)
    out = (x3 - mu[None, :, None]) * (invstd * scale)[None, :, None] + bias[None, :, None]
    newMean = (1 - factor) * mean + factor * mu
    newVar = (1 - factor) * var + factor * sigma2 * m / (m - 1)
    return out, mu, invstd, newMean, newVar


def refEval(x3, scale, bias, mean, var, eps):
    return (x3 - mean[None, :, None]) / np.sqrt(var + eps)[None, :, None] * scale[None, :, None] + bias[None, :, None]


def refBackward(x3, g3, scale, mu, invstd):
    m = x3.shape[0] * x3.shape[2]
    xhat = (x3 - mu[None, :, None]) * invstd[None, :, None]
    biasgrad = g3.sum(axis=(0, 2))
    scalegrad = (g3 * xhat).sum(axis=(0, 2))
    ingrad = (scale * invstd)[None, :, None] / m * (m * g3 - biasgrad[None, :, None] - xhat * scalegrad[None, :, None])
    return ingrad, scalegrad, biasgrad


def refFrozen(x3, g3, scale, mean, var, eps):
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x3 - mean[None, :, None]) * invstd[None, :, None]
    return g3 * (scale * invstd)[None, :, None], (g3 * xhat).sum(axis=(0, 2)), g3.sum(axis=(0, 2))


# Cases: (name, shape3). Spatial cases cover the scalar (inner % vec != 0) and vector paths and split reductions; rows
# cases (inner == 1) cover per-activation and channels-last data.
CASES = [
    ("spatial_odd_inner", (4, 3, 35)),
    ("spatial_vector", (8, 16, 64)),
    ("spatial_many_splits", (64, 4, 1024)),
    ("spatial_small_outer", (2, 5, 4096)),
    ("rows_vector", (64, 24, 1)),
    ("rows_odd_maps", (33, 10, 1)),
    ("rows_many_splits", (20000, 50, 1)),
    ("rows_wide", (256, 4096, 1)),
]
TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float16: dict(rtol=1e-2, atol=2e-2)}
STAT_TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float16: dict(rtol=1e-3, atol=1e-4)}


def makeParams(rng, maps):
    scale = rng.normal(1.0, 0.1, maps).astype(np.float32)
    bias = rng.normal(0.0, 0.1, maps).astype(np.float32)
    mean = rng.normal(0.0, 0.1, maps).astype(np.float32)
    var = rng.uniform(0.5, 2.0, maps).astype(np.float32)
    return scale, bias, mean, var


def makeData(rng, shape3, dtype, loc=0.5, std=2.0):
    host = rng.normal(loc, std, shape3).astype(dtype)
    return host, host.astype(np.float64)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("name, shape3", CASES)
def test_train_forward(gpu, bn, name, shape3, dtype):
    rng = np.random.default_rng(1)
    maps = shape3[1]
    host, x64 = makeData(rng, shape3, dtype)
    scale, bias, mean, var = makeParams(rng, maps)
    eps, factor = 1e-5, 0.3

    data, out = gpu.to_gpu(host), gpu.empty(shape3, dtype)
    dMean, dVar = gpu.to_gpu(mean), gpu.to_gpu(var)
    savemean, saveinvvar = gpu.empty((maps,)), gpu.empty((maps,))
    bn.trainForward(data, out, shape3, gpu.to_gpu(scale), gpu.to_gpu(bias), dMean, dVar, savemean, saveinvvar,
                    eps, factor)

    refOut, mu, invstd, newMean, newVar = refTrain(x64, scale, bias, mean, var, eps, factor)
    np.testing.assert_allclose(out.get().astype(np.float64), refOut, **TOL[dtype], err_msg=name)
    np.testing.assert_allclose(savemean.get(), mu, **STAT_TOL[dtype])
    np.testing.assert_allclose(saveinvvar.get(), invstd, **STAT_TOL[dtype])
    np.testing.assert_allclose(dMean.get(), newMean, **STAT_TOL[dtype])
    np.testing.assert_allclose(dVar.get(), newVar, **STAT_TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("name, shape3", CASES)
def test_eval_forward(gpu, bn, name, shape3, dtype):
    rng = np.random.default_rng(2)
    maps = shape3[1]
    host, x64 = makeData(rng, shape3, dtype)
    scale, bias, mean, var = makeParams(rng, maps)
    params = [gpu.to_gpu(p) for p in (scale, bias, mean, var)]
    ref = refEval(x64, scale, bias, mean, var, 1e-5)

    data, out = gpu.to_gpu(host), gpu.empty(shape3, dtype)
    bn.evalForward(data, out, shape3, *params, 1e-5)
    np.testing.assert_allclose(out.get().astype(np.float64), ref, **TOL[dtype], err_msg=name)

    before = gpu.memoryPool.stats()["allocations"]
    bn.evalForward(data, data, shape3, *params, 1e-5)
    assert gpu.memoryPool.stats()["allocations"] == before, "in-place evaluation took a pool block"
    np.testing.assert_allclose(data.get().astype(np.float64), ref, **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("name, shape3", CASES)
def test_backward(gpu, bn, name, shape3, dtype):
    rng = np.random.default_rng(3)
    maps = shape3[1]
    host, x64 = makeData(rng, shape3, dtype)
    ghost, g64 = makeData(rng, shape3, dtype, loc=0.1, std=1.0)
    scale = rng.normal(1.0, 0.1, maps).astype(np.float32)
    mu = x64.mean(axis=(0, 2)).astype(np.float32)
    invstd = (1.0 / np.sqrt(x64.var(axis=(0, 2)) + 1e-5)).astype(np.float32)

    data, grad, ingrad = gpu.to_gpu(host), gpu.to_gpu(ghost), gpu.empty(shape3, dtype)
    scalegrad, biasgrad = gpu.zeros((maps,)).fill(7.0), gpu.zeros((maps,)).fill(7.0)
    bn.backward(data, grad, ingrad, shape3, gpu.to_gpu(scale), gpu.to_gpu(mu), gpu.to_gpu(invstd), scalegrad, biasgrad)

    refIn, refSg, refBg = refBackward(x64, g64, scale, mu.astype(np.float64), invstd.astype(np.float64))
    m = shape3[0] * shape3[2]
    sumTol = dict(rtol=1e-3, atol=1e-3 * np.sqrt(m)) if dtype == np.float16 else dict(rtol=1e-4, atol=1e-4 * np.sqrt(m))
    np.testing.assert_allclose(biasgrad.get(), refBg, **sumTol)
    np.testing.assert_allclose(scalegrad.get(), refSg, **sumTol)
    np.testing.assert_allclose(ingrad.get().astype(np.float64), refIn, **TOL[dtype], err_msg=name)

    bn.backward(data, grad, None, shape3, gpu.to_gpu(scale), gpu.to_gpu(mu), gpu.to_gpu(invstd), scalegrad, biasgrad)
    np.testing.assert_allclose(biasgrad.get(), refBg, **sumTol)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("name, shape3", CASES)
def test_frozen_backward(gpu, bn, name, shape3, dtype):
    rng = np.random.default_rng(4)
    maps = shape3[1]
    host, x64 = makeData(rng, shape3, dtype)
    ghost, g64 = makeData(rng, shape3, dtype, loc=0.1, std=1.0)
    scale, _, mean, var = makeParams(rng, maps)

    data, grad, ingrad = gpu.to_gpu(host), gpu.to_gpu(ghost), gpu.empty(shape3, dtype)
    scalegrad, biasgrad = gpu.empty((maps,)), gpu.empty((maps,))
    bn.frozenBackward(data, grad, ingrad, shape3, gpu.to_gpu(scale), gpu.to_gpu(mean), gpu.to_gpu(var), 1e-5,
                      scalegrad, biasgrad)

    refIn, refSg, refBg = refFrozen(x64, g64, scale, mean, var, 1e-5)
    m = shape3[0] * shape3[2]
    sumTol = dict(rtol=1e-3, atol=1e-3 * np.sqrt(m))
    np.testing.assert_allclose(biasgrad.get(), refBg, **sumTol)
    np.testing.assert_allclose(scalegrad.get(), refSg, **sumTol)
    np.testing.assert_allclose(ingrad.get().astype(np.float64), refIn, **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("shape3", [(16, 2, 4096), (65536, 2, 1)], ids=["spatial", "rows"])
def test_large_mean(gpu, bn, shape3):
    """large_mean: a channel of mean 1e4 and standard deviation 1 keeps its variance within 1e-3 relative."""
    rng = np.random.default_rng(5)
    host = rng.normal(1e4, 1.0, shape3).astype(np.float32)
    maps = shape3[1]
    ref = host.astype(np.float64).var(axis=(0, 2))

    savemean, saveinvvar = gpu.empty((maps,)), gpu.empty((maps,))
    mean, var = gpu.zeros((maps,)), gpu.zeros((maps,))
    ones, zeros = gpu.zeros((maps,)).fill(1.0), gpu.zeros((maps,))
    bn.trainForward(gpu.to_gpu(host), gpu.empty(shape3), shape3, ones, zeros, mean, var, savemean, saveinvvar,
                    0.0, 1.0)

    m = shape3[0] * shape3[2]
    sigma2 = var.get().astype(np.float64) * (m - 1) / m
    np.testing.assert_allclose(sigma2, ref, rtol=1e-3)
    np.testing.assert_allclose(1.0 / saveinvvar.get().astype(np.float64) ** 2, ref, rtol=1e-3)
    np.testing.assert_allclose(savemean.get(), host.astype(np.float64).mean(axis=(0, 2)), rtol=1e-6)


def test_training_loop_makes_no_raw_allocation(gpu, bn):
    rng = np.random.default_rng(6)
    shape3 = (8, 32, 256)
    maps = shape3[1]
    data = gpu.to_gpu(rng.normal(0, 1, shape3).astype(np.float32))
    grad = gpu.to_gpu(rng.normal(0, 1, shape3).astype(np.float32))
    scale, bias, mean, var = (gpu.to_gpu(p) for p in makeParams(rng, maps))

    def step():
        out, ingrad = gpu.empty(shape3), gpu.empty(shape3)
        savemean, saveinvvar = gpu.empty((maps,)), gpu.empty((maps,))
        scalegrad, biasgrad = gpu.empty((maps,)), gpu.empty((maps,))
        bn.trainForward(data, out, shape3, scale, bias, mean, var, savemean, saveinvvar, 1e-5, 0.1)
        bn.backward(data, grad, ingrad, shape3, scale, savemean, saveinvvar, scalegrad, biasgrad)

    step()
    misses = gpu.memoryPool.stats()["misses"]
    for _ in range(5):
        step()
    assert gpu.memoryPool.stats()["misses"] == misses


def test_rejects_bad_arguments(gpu, bn):
    shape3 = (4, 3, 5)
    x = gpu.empty(shape3)
    params = [gpu.empty((3,)) for _ in range(4)]
    with pytest.raises(TypeError):
        bn.evalForward(x, gpu.empty(shape3, np.float16), shape3, *params, 1e-5)
    with pytest.raises(ValueError):
        bn.evalForward(x, x, (4, 3, 6), *params, 1e-5)
    with pytest.raises(ValueError):
        bn.evalForward(x, x, shape3, gpu.empty((4,)), *params[1:], 1e-5)


# GPUArray ------------------------------------------------------------------------------------------------------------

def test_gpuarray_interface(gpu):
    host = np.arange(24, dtype=np.float32).reshape(4, 6)
    a = gpu.to_gpu(host)
    assert isinstance(a, gpu.GPUArray)
    assert (a.shape, a.dtype, a.size, a.nbytes, a.ndim, a.strides) == ((4, 6), np.float32, 24, 96, 2, (24, 4))
    np.testing.assert_array_equal(a.get(), host)

    r = a.reshape(6, 4)
    assert isinstance(r, gpu.GPUArray) and r.ptr == a.ptr and r.shape == (6, 4)
    assert a.reshape(-1, 3).shape == (8, 3) and a.ravel().shape == (24,) and a.ravel().ptr == a.ptr

    s = a[1:3]
    assert isinstance(s, gpu.GPUArray) and s.ptr == a.ptr + 24 and s.shape == (2, 6)
    np.testing.assert_array_equal(s.get(), host[1:3])
    np.testing.assert_array_equal(a[2].get(), host[2])

    c = a.copy()
    assert c.ptr != a.ptr
    np.testing.assert_array_equal(c.get(), host)

    with pytest.raises(ValueError, match="float64"):
        a.set(host.astype(np.float64))
    with pytest.raises(ValueError):
        a.set(host.reshape(6, 4))
    with pytest.raises(ValueError):
        a.reshape(5, 5)

    half = gpu.empty((3, 5), np.float16).fill(1.5)
    np.testing.assert_array_equal(half.get(), np.full((3, 5), 1.5, np.float16))
    assert str(gpu.zeros((2,))) == str(np.zeros(2, np.float32))
    assert repr(gpu.zeros((2,))).startswith("GPUArray(")


def test_view_keeps_memory_alive(gpu):
    host = np.arange(10, dtype=np.float32)
    view = gpu.to_gpu(host)[2:5]
    np.testing.assert_array_equal(view.get(), host[2:5])


# Blas ----------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("transpA", [False, True])
@pytest.mark.parametrize("transpB", [False, True])
def test_gemm(gpu, blas, transpA, transpB):
    rng = np.random.default_rng(7)
    M, K, N = 37, 19, 23
    A = rng.normal(size=(K, M) if transpA else (M, K)).astype(np.float32)
    B = rng.normal(size=(N, K) if transpB else (K, N)).astype(np.float32)
    C = rng.normal(size=(M, N)).astype(np.float32)
    ref = 0.5 * ((A.T if transpA else A).astype(np.float64) @ (B.T if transpB else B)) + 2.0 * C

    out = gpu.to_gpu(C)
    blas.gemm(gpu.to_gpu(A), gpu.to_gpu(B), out, transpA=transpA, transpB=transpB, alpha=0.5, beta=2.0)
    np.testing.assert_allclose(out.get(), ref, rtol=1e-4, atol=1e-4)


def test_vector_ops_and_sums(gpu, blas):
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    out = blas.addVectorToVector(gpu.to_gpu(x), gpu.to_gpu(y), alpha=2.0, beta=-1.0)
    np.testing.assert_allclose(out.get(), 2 * x - y, rtol=1e-6, atol=1e-6)

    dy = gpu.to_gpu(y)
    assert blas.toVectorAddVector(dy, gpu.to_gpu(x), alpha=0.5) is dy
    np.testing.assert_allclose(dy.get(), y + 0.5 * x, rtol=1e-6, atol=1e-6)

    A = rng.normal(size=(300, 7)).astype(np.float32)
    np.testing.assert_allclose(blas.sumOnMatrix(gpu.to_gpu(A)).get(), A.sum(axis=0), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(blas.sumOnMatrix(gpu.to_gpu(A), cols=False).get(), A.sum(axis=1), rtol=1e-5, atol=1e-4)
