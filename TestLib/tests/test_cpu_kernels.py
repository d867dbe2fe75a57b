"""The CPU backend's two batch-norm implementations, the C kernels (`Backend.Cpu.CBatchNorm`, ``Kernels/BatchNorm.c``)
and the numpy ones (`Backend.Cpu.NumpyBatchNorm`), each plan called directly, against float64 formulas computed here or
in `TestLib.Reference`; the modules on either choice of `Config.cpuKernels`; the fallback when the C source cannot be
built; the run-time compilation (`Backend.Cpu.SourceLibrary`); the two settings of `Config`.

The shapes cover every way the C kernels cut the work (the path each case takes is in its name): one thread below 32768
elements; "fused" (whole maps or column groups per thread, shared unevenly); "split" (maps cut along the batch into
tiles merged per map), with tiles that end inside a segment or a 4096-element statistics block; rows layout (inner == 1)
with one and several column groups, the last one narrower, and with whole 64-column slices and a narrower last one.
The last map of every case has a mean 1e4 times its standard deviation (1e3 and 4 for float16 data, which cannot hold
1e4 + 1); the first, where there are two or more, a variance below epsilon.
"""

import ast
import ctypes
import fnmatch
import logging
import os
import shlex
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from PuzzleLib import Config
from PuzzleLib.Backend import BatchNormPlan, Contract, Dnn
from PuzzleLib.Backend.BatchNormLayout import layoutOf
from PuzzleLib.Backend.Cpu import BatchNormKernels, CBatchNorm, GPUArray, NumpyBatchNorm, SourceLibrary, backend
from PuzzleLib.Kernels import sourcePath
from PuzzleLib.Modules import BatchNorm2D
from PuzzleLib.TestLib import Reference

pytestmark = pytest.mark.backendIndependent

AXES = (0, 2)
EPS, FACTOR = 1e-5, 0.3

# name: (shape3, Config.cpuThreads)
CASES = {
    "rows_tiny_single": ((7, 5, 1), 1),
    "rows_slices_single": ((3, 300, 1), 2),
    "rows_split_2t": ((70001, 3, 1), 2),
    "rows_split_3t": ((70001, 3, 1), 3),
    "rows_wide_split_3t": ((2000, 300, 1), 3),
    "rows_groups_fused_3t": ((40, 3100, 1), 3),
    "rows_groups_split_5t": ((100, 4200, 1), 5),
    "one_segment_split_2t": ((1, 1, 100003), 2),
    "spatial_split_2t": ((5, 3, 9001), 2),
    "spatial_split_4t": ((5, 3, 9001), 4),
    "spatial_fused_3t": ((5, 3, 9001), 3),
    "spatial_fused_2t": ((64, 7, 81), 2),
    "spatial_single": ((64, 7, 81), 1),
    "tiny_maps_single": ((2, 513, 3), 2),
    "tiny_maps_fused_3t": ((4, 3001, 3), 3),
    "tiny_single": ((1, 2, 5), 1),
}
IMPLEMENTATIONS = {"c": CBatchNorm.CPlan, "numpy": NumpyBatchNorm.NumpyPlan}
LARGE = {np.float16: (1e3, 4.0), np.float32: (1e4, 1.0), np.float64: (1e4, 1.0)}

# NOTE: 4 to 11 times the worst errors measured over CASES (x86-64 with AVX-512; a C build for AVX2 measures the same,
# one without -march=native stays within 0.6 of each: float32 largeOut 3.0e-6, largeVar 1.2e-6, stats 6.1e-7).
# "data": data-shaped outputs other than the training forward's;
# "train": the training forward's output on the other maps; "stats": per-map statistics; these three as rtol = atol;
# "largeOut": the training output of the large map, absolute; "sums": scalegrad and biasgrad, relative to the sum of the
# absolute values of their terms; "largeVar": the large map's variance, relative (SPEC section 3 asks 1e-3). The C
# kernels subtract the mean as two floats, so their training output keeps its digits on the large map; numpy subtracts
# the mean rounded to float32 (half an ulp of 1e4 is 4.9e-4) and sums float32 columns one row after another.
# Worst measured (data, train, largeOut, stats, sums, largeVar); the C float64 statistics' worst is the 100-row
# rows_groups_split_5t:
#   C float32      2.9e-7   2.2e-7   9.2e-7   3.4e-7   1.5e-7   2.7e-7
#   C float64      8.8e-16  1.2e-15  3.7e-12  1.2e-13  4.4e-16  2.2e-13
#   C float16      4.3e-4   3.8e-4   1.8e-3   2.7e-6   1.6e-7   2.9e-6
#   numpy float32  3.8e-7   3.0e-6   7.6e-4   8.1e-6   3.2e-7   1.6e-5
#   numpy float64  8.5e-16  1.9e-15  3.4e-12  5.4e-16  6.4e-16  8.8e-16
#   numpy float16  9.8e-4   3.8e-4   1.8e-3   8.4e-6   4.5e-7   8.9e-6
TOLERANCES = {
    ("c", np.float32): dict(data=2e-6, train=1e-6, largeOut=5e-6, stats=2e-6, sums=1.5e-6, largeVar=3e-6),
    ("c", np.float64): dict(data=5e-15, train=1e-14, largeOut=2e-11, stats=5e-13, sums=3e-15, largeVar=1e-12),
    ("c", np.float16): dict(data=2e-3, train=2e-3, largeOut=8e-3, stats=2e-5, sums=1e-6, largeVar=2e-5),
    ("numpy", np.float32): dict(data=2e-6, train=2e-5, largeOut=3e-3, stats=5e-5, sums=2e-6, largeVar=1e-4),
    ("numpy", np.float64): dict(data=5e-15, train=1e-14, largeOut=1.5e-11, stats=3e-15, sums=5e-15, largeVar=5e-15),
    ("numpy", np.float16): dict(data=5e-3, train=2e-3, largeOut=8e-3, stats=5e-5, sums=2e-6, largeVar=5e-5),
}

# NOTE: BatchNorm2D (float32, moderate means) against `TestLib.Reference`, read as TOLERANCES; measured worst: C data
# 1.5e-7, stats 4.4e-8, sums 1.8e-8; numpy data 6.1e-7, stats 4.1e-7, sums 3.1e-7
MODULE_TOLERANCES = {"c": dict(data=1e-6, stats=3e-7, sums=1.5e-7), "numpy": dict(data=3e-6, stats=3e-6, sums=1.5e-6)}

cases = pytest.mark.parametrize("case", list(CASES))
dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16], ids=["f32", "f64", "f16"])
implementations = pytest.mark.parametrize("name", list(IMPLEMENTATIONS))


@pytest.fixture(autouse=True)
def cpuArrays(monkeypatch):
    """CPU arrays from a poisoned pool (every block served is NaN first: an output left unwritten fails)."""
    monkeypatch.setattr(GPUArray.memoryPool, "poison", True)
    with Config.useBackend("cpu"):
        yield


def cKernelsOrSkip():
    """Builds (or finds) the C kernels; skips where no compiler is installed, fails where one refuses the source."""
    problem = BatchNormKernels.cProblem()
    if problem is not None:
        if "no C compiler found" in problem:
            pytest.skip(problem)
        pytest.fail("the C kernels cannot be built: %s" % problem)


def kernelsFor(name, dtype, monkeypatch, threads, shape3):
    """The plan of implementation `name` for `shape3` data of `dtype` (normalized over axes (0, 2)), on `threads`."""
    if name == "c":
        cKernelsOrSkip()
        if np.dtype(dtype) not in CBatchNorm.dataTypes:
            pytest.skip("the C compiler has no _Float16: float16 runs on the numpy kernels")
    monkeypatch.setattr(Config, "cpuThreads", threads)
    return IMPLEMENTATIONS[name](backend, layoutOf(shape3, AXES), np.dtype(dtype), Contract.PlanOptions(EPS))


def mapTypeOf(dtype):
    return np.float64 if dtype == np.float64 else np.float32


def makeData(rng, shape3, dtype, extremes=True):
    """Per-map offsets and spreads. With `extremes`, the last map is the large-mean one and the first (of two or more)
    has a variance of 1e-6, a tenth of epsilon, which then sets its scale."""
    maps = shape3[1]
    loc, std = rng.uniform(-3.0, 3.0, maps), rng.uniform(0.5, 2.0, maps)
    if extremes:
        if maps > 1:
            loc[0], std[0] = 0.0, 1e-3
        loc[-1], std[-1] = LARGE[dtype]
    return (rng.standard_normal(shape3) * std[:, None] + loc[:, None]).astype(dtype)


def makeParams(rng, maps, dtype):
    """scale, bias, running mean and running variance (those of the first and the last map near their data, as
    `makeData` makes it), of the per-map type."""
    mapType = mapTypeOf(dtype)
    scale, bias = rng.normal(1.0, 0.2, maps), rng.normal(0.0, 0.5, maps)
    mean, var = rng.normal(0.0, 1.0, maps), rng.uniform(0.5, 2.0, maps)
    if maps > 1:
        mean[0], var[0] = mean[0] * 1e-3, var[0] * 1e-6
    mean[-1] += LARGE[dtype][0]
    var[-1] *= LARGE[dtype][1] ** 2
    return tuple(p.astype(mapType) for p in (scale, bias, mean, var))


def onCpu(*arrays):
    return tuple(GPUArray.to_gpu(ary) for ary in arrays)


def perMap(vector):
    """A per-map vector broadcast against the (outer, maps, inner) view, in float64."""
    return np.asarray(vector, np.float64).reshape(1, -1, 1)


def mapRows(ary):
    """The (maps, m) float64 copy of an (outer, maps, inner) array: each map's elements in one contiguous row, which
    numpy sums pairwise (a sum over the strided axis 0 would add 1e4-sized terms one after another)."""
    ary = np.asarray(ary, np.float64)
    return np.ascontiguousarray(np.moveaxis(ary, 1, 0)).reshape(ary.shape[1], -1)


def trainReference(host, scale, bias):
    """The training forward in float64: moments from the corrected two-pass algorithm (the deviations from a first
    mean repair it), out, invstd, and the biased variance."""
    rows = mapRows(host)
    mean = rows.mean(axis=1)
    mean += (rows - mean[:, None]).mean(axis=1)
    var = np.square(rows - mean[:, None]).mean(axis=1)
    invstd = 1.0 / np.sqrt(var + EPS)
    out = (host.astype(np.float64) - perMap(mean)) * perMap(invstd * scale) + perMap(bias)
    return out, mean, var, invstd


def mapSums(terms):
    return mapRows(terms).sum(axis=1)


def check(what, got, expected, tolerance):
    """assert_allclose with a tolerance t (rtol = atol = t) or (rtol, atol)."""
    rtol, atol = tolerance if isinstance(tolerance, tuple) else (tolerance, tolerance)
    np.testing.assert_allclose(np.asarray(got, np.float64), expected, rtol=rtol, atol=atol, err_msg=what)


def checkSums(what, got, expected, terms, tolerance):
    """A per-map sum within `tolerance` times the sum of the absolute values of its terms (what its rounding scales
    with)."""
    scale = mapSums(np.abs(terms))
    check(what, np.asarray(got, np.float64) / scale, np.asarray(expected).ravel() / scale, (0.0, tolerance))


def checkInputGradient(what, got, expected, gain, tolerance):
    """An input gradient in units of its per-map gain scale * invstd (the first map's invstd is 300): what remains is
    grad minus the sums' terms, of the order of grad."""
    gain = np.abs(perMap(gain))
    check(what, np.asarray(got, np.float64) / gain, expected / gain, tolerance)


def checkTrainOut(what, got, expected, tol):
    """The training output: the large (last) map within tol["largeOut"], the others within tol["train"]."""
    check(what, got[:, :-1], expected[:, :-1], tol["train"])
    check(what + " of the large map", got[:, -1], expected[:, -1], (0.0, tol["largeOut"]))


def checkLargeVariance(what, var, expected, tolerance):
    check(what + " of the large map", var.ravel()[-1], expected[-1], (tolerance, 0.0))


@implementations
@dtypes
@cases
def test_forward_primitives(monkeypatch, name, dtype, case):
    """trainForward (with and without running statistics), batchStatistics, normalize, evalForward and in place."""
    shape3, threads = CASES[case]
    plan = kernelsFor(name, dtype, monkeypatch, threads, shape3)
    tol, maps, mapType = TOLERANCES[name, dtype], shape3[1], mapTypeOf(dtype)
    rng = np.random.default_rng(11)
    host = makeData(rng, shape3, dtype)
    scale, bias, runMean, runVar = makeParams(rng, maps, dtype)
    data, gpuScale, gpuBias = onCpu(host, scale, bias)

    refOut, refMean, refVar, refInvstd = trainReference(host, scale, bias)
    m = shape3[0] * shape3[2]
    newMean, newVar = Reference.runningUpdate(runMean, runVar, refMean, refVar, m, FACTOR)
    for running in (onCpu(runMean, runVar), (None, None)):
        out = GPUArray.empty(shape3, dtype)
        saved = (GPUArray.empty((maps,), mapType), GPUArray.empty((maps,), mapType))
        plan.trainForward(Contract.TrainForward(data, out, gpuScale, gpuBias, *running, None, *saved, FACTOR))
        checkTrainOut("trainForward out", out.get(), refOut, tol)
        check("saved mean", saved[0].get(), refMean, tol["stats"])
        check("saved invstd", saved[1].get(), refInvstd, tol["stats"])
        checkLargeVariance("1 / invstd**2 - eps", 1.0 / saved[1].get().astype(np.float64) ** 2 - EPS, refVar,
                           tol["largeVar"])
        if running[0] is not None:
            check("running mean", running[0].get(), newMean, tol["stats"])
            check("running var", running[1].get(), newVar, tol["stats"])

    moments = Contract.Moments(data, GPUArray.empty((maps,), np.float64), GPUArray.empty((1, maps), np.float64))
    plan.batchStatistics(moments)
    check("batchStatistics mean", moments.mean.get(), refMean, tol["stats"])
    check("batchStatistics var", moments.var.get().ravel(), refVar, tol["stats"])
    checkLargeVariance("batchStatistics var", moments.var.get(), refVar, tol["largeVar"])

    givenMean = (refMean + rng.normal(0.0, 0.2, maps) * np.sqrt(refVar)).astype(mapType)
    givenInvstd = (refInvstd * rng.uniform(0.8, 1.25, maps)).astype(mapType)
    out = GPUArray.empty(shape3, dtype)
    plan.normalize(Contract.Normalize(data, out, gpuScale, gpuBias, *onCpu(givenMean, givenInvstd)))
    expected = (host.astype(np.float64) - perMap(givenMean)) * perMap(givenInvstd) * perMap(scale) + perMap(bias)
    check("normalize", out.get(), expected, tol["data"])

    expected = Reference.batchNormEval(host, scale, bias, runMean, runVar, EPS, axes=AXES)
    running = onCpu(runMean, runVar)
    out = GPUArray.empty(shape3, dtype)
    plan.evalForward(Contract.EvalForward(data, out, gpuScale, gpuBias, *running))
    check("evalForward", out.get(), expected, tol["data"])
    plan.evalForward(Contract.EvalForward(data, data, gpuScale, gpuBias, *running))
    check("evalForward in place", data.get(), expected, tol["data"])
    assert np.array_equal(running[0].get(), runMean) and np.array_equal(running[1].get(), runVar)


@implementations
def test_rows_statistics_where_the_first_rows_are_far_from_the_mean(monkeypatch, name):
    """Rows-layout moments of float32 columns whose first rows say little of the whole: a column rising steadily from
    1e4 (sorted data), one whose first 16 rows sit 1e3 standard deviations above the rest, and one of sorted normal
    values, against float64. The C kernels take a block of rows about the mean of the rows before it (the first block
    about its own mean), so the drift is merged exactly rather than cancelled."""
    outer = 20000
    plan = kernelsFor(name, np.float32, monkeypatch, 2, (outer, 3, 1))
    rng = np.random.default_rng(5)
    host = np.empty((outer, 3, 1), np.float32)
    host[:, 0, 0] = 1e4 + np.linspace(0.0, 100.0, outer) + rng.standard_normal(outer) * 0.01
    host[:, 1, 0] = rng.standard_normal(outer)
    host[:16, 1, 0] += 1e3
    host[:, 2, 0] = np.sort(rng.standard_normal(outer))

    rows = mapRows(host)
    mean = rows.mean(axis=1)
    var = np.square(rows - mean[:, None]).mean(axis=1)
    moments = Contract.Moments(onCpu(host)[0], GPUArray.empty((3,), np.float64), GPUArray.empty((3,), np.float64))
    plan.batchStatistics(moments)
    # NOTE: measured worst: C 1e-9 standard deviations and 1.7e-7 relative; numpy 1.1e-6 and 4.1e-5
    meanTolerance, varTolerance = {"c": (1e-8, 1e-6), "numpy": (1e-5, 4e-4)}[name]
    check("mean in standard deviations", (moments.mean.get() - mean) / np.sqrt(var), 0.0, (0.0, meanTolerance))
    check("var", moments.var.get(), var, (varTolerance, 0.0))


def test_concurrent_calls_each_get_their_own_workspace(monkeypatch):
    """The C kernels keep a call's per-map workspace for the next call; calls from several Python threads at once (the
    ctypes calls release the GIL), with map counts that need workspaces of different sizes, must each get a workspace
    of their own: every result is checked against float64."""
    rng = np.random.default_rng(3)
    shapes = [(64, 4100, 1), (3, 70000, 1), (40, 300, 9), (2, 1, 20000)]
    plans = [kernelsFor("c", np.float32, monkeypatch, 1, shape) for shape in shapes]
    hosts = [rng.standard_normal(shape).astype(np.float32) * 2.0 + 1.0 for shape in shapes]
    expected = []
    for host in hosts:
        rows = mapRows(host)
        expected.append((rows.mean(axis=1), rows.var(axis=1)))
    failures = []

    def work(index):
        host, plan = hosts[index % len(hosts)], plans[index % len(hosts)]
        maps = host.shape[1]
        data = onCpu(host)[0]
        for _ in range(30):
            moments = Contract.Moments(data, GPUArray.empty((maps,), np.float64), GPUArray.empty((maps,), np.float64))
            plan.batchStatistics(moments)
            mean, var = expected[index % len(hosts)]
            if not (np.allclose(moments.mean.get(), mean, rtol=1e-6, atol=1e-6)
                    and np.allclose(moments.var.get(), var, rtol=1e-6, atol=1e-6)):
                failures.append(host.shape)
                return

    workers = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert failures == []


@implementations
@dtypes
@cases
def test_backward_primitives(monkeypatch, name, dtype, case):
    """backward (with and without ingrad), inputGradient from given sums over more elements, frozenBackward."""
    shape3, threads = CASES[case]
    plan = kernelsFor(name, dtype, monkeypatch, threads, shape3)
    tol, maps, mapType = TOLERANCES[name, dtype], shape3[1], mapTypeOf(dtype)
    rng = np.random.default_rng(12)
    host = makeData(rng, shape3, dtype)
    hostGrad = rng.normal(0.1, 1.0, shape3).astype(dtype)
    scale, _, runMean, runVar = makeParams(rng, maps, dtype)
    data, grad, gpuScale = onCpu(host, hostGrad, scale)
    x, g = host.astype(np.float64), hostGrad.astype(np.float64)
    m = shape3[0] * shape3[2]

    def sums():
        return GPUArray.empty((maps,), mapType), GPUArray.empty((maps,), mapType)

    # NOTE: the statistics as a training forward saves them, rounded to the per-map type; the reference uses the same
    _, mean, _, invstd = trainReference(host, scale, np.zeros(maps))
    mean, invstd = mean.astype(mapType), invstd.astype(mapType)
    saved = onCpu(mean, invstd)
    xhat = (x - perMap(mean)) * perMap(invstd)
    dbias, dscale = mapSums(g), mapSums(g * xhat)
    dx = perMap(scale) * perMap(invstd) / m * (m * g - perMap(dbias) - xhat * perMap(dscale))

    ingrad, (scalegrad, biasgrad) = GPUArray.empty(shape3, dtype), sums()
    plan.backward(Contract.Backward(data, grad, ingrad, gpuScale, *saved, scalegrad, biasgrad))
    checkSums("biasgrad", biasgrad.get(), dbias, g, tol["sums"])
    checkSums("scalegrad", scalegrad.get(), dscale, g * xhat, tol["sums"])
    gain = scale * invstd.astype(np.float64)
    checkInputGradient("ingrad", ingrad.get(), dx, gain, tol["data"])

    scalegrad, biasgrad = sums()
    plan.backward(Contract.Backward(data, grad, None, gpuScale, *saved, scalegrad, biasgrad))
    checkSums("biasgrad without ingrad", biasgrad.get(), dbias, g, tol["sums"])
    checkSums("scalegrad without ingrad", scalegrad.get(), dscale, g * xhat, tol["sums"])

    count = 3 * m + 1
    givenBias = rng.normal(0.0, 2.0 * np.sqrt(count), maps).astype(mapType)
    givenScale = rng.normal(0.0, 2.0 * np.sqrt(count), maps).astype(mapType)
    ingrad = GPUArray.empty(shape3, dtype)
    gpuGivenScale, gpuGivenBias = onCpu(givenScale, givenBias)
    plan.inputGradient(Contract.InputGradient(data, grad, ingrad, gpuScale, *saved, gpuGivenScale, gpuGivenBias, count))
    expected = perMap(scale) * perMap(invstd) * (g - (perMap(givenBias) + xhat * perMap(givenScale)) / count)
    checkInputGradient("inputGradient", ingrad.get(), expected, gain, tol["data"])
    assert np.array_equal(gpuGivenScale.get(), givenScale) and np.array_equal(gpuGivenBias.get(), givenBias)

    frozenDx = Reference.frozenBackward(host, hostGrad, scale, runMean, runVar, EPS, AXES)[0]
    frozenXhat = (x - perMap(runMean)) / np.sqrt(perMap(runVar) + EPS)
    frozenScale, frozenBias = mapSums(g * frozenXhat), mapSums(g)
    running = onCpu(runMean, runVar)
    for ingrad in (GPUArray.empty(shape3, dtype), None):
        scalegrad, biasgrad = sums()
        plan.frozenBackward(Contract.FrozenBackward(data, grad, ingrad, gpuScale, *running, scalegrad, biasgrad))
        checkSums("frozen biasgrad", biasgrad.get(), frozenBias, g, tol["sums"])
        checkSums("frozen scalegrad", scalegrad.get(), frozenScale, g * frozenXhat, tol["sums"])
        if ingrad is not None:
            checkInputGradient("frozen ingrad", ingrad.get(), frozenDx, scale / np.sqrt(runVar + EPS), tol["data"])


# --- the modules on either choice of kernels


@pytest.fixture
def dispatched(monkeypatch):
    """The names of the implementations `BatchNormKernels` made plans on, in order (plans made before are forgotten,
    so that every plan is made anew)."""
    chosen = []
    choose = BatchNormKernels.implementation

    def recording(dtype, options):
        implementation = choose(dtype, options)
        chosen.append(implementation.name)
        return implementation

    monkeypatch.setattr(BatchNormKernels, "implementation", recording)
    BatchNormPlan.cachedPlan.cache_clear()
    yield chosen
    BatchNormPlan.cachedPlan.cache_clear()


@pytest.mark.parametrize("channelsLast", [False, True], ids=["channels_first", "channels_last"])
@pytest.mark.parametrize("choice", list(IMPLEMENTATIONS))
def test_batchnorm2d_on_either_kernels(monkeypatch, dispatched, choice, channelsLast):
    """Training forward, backward, evaluation forward and frozen backward of BatchNorm2D against the float64 reference;
    channels-last data is rows layout (split path on 2 threads), channels-first spatial."""
    if choice == "c":
        cKernelsOrSkip()
    monkeypatch.setattr(Config, "cpuThreads", 2)
    monkeypatch.setattr(Config, "cpuKernels", choice)

    maps, rng = 5, np.random.default_rng(13)
    host = makeData(rng, (6, maps, 41 * 37), np.float32, extremes=False).reshape(6, maps, 41, 37)
    if channelsLast:
        host = np.ascontiguousarray(np.moveaxis(host, 1, -1))
    bn = BatchNorm2D(maps, axis=-1 if channelsLast else 1)
    axes = tuple(axis for axis in range(4) if axis != bn.axis)
    paramShape = bn.scale.shape
    bn.scale.set(rng.normal(1.0, 0.2, paramShape).astype(np.float32))
    bn.bias.set(rng.normal(0.0, 0.5, paramShape).astype(np.float32))
    scale, bias = bn.scale.get(), bn.bias.get()
    hostGrad = rng.normal(0.1, 1.0, host.shape).astype(np.float32)

    tol = MODULE_TOLERANCES[choice]

    def checkSumsOver(what, got, expected, terms):
        scale = np.sum(np.abs(terms), axis=axes, keepdims=True)
        check(what, got / scale, expected / scale, (0.0, tol["sums"]))

    out = bn(GPUArray.to_gpu(host)).get()
    ref = Reference.batchNormTrain(host, scale, bias, axes, bn.epsilon)
    check("module out", out, ref.out, tol["data"])
    check("module running mean", bn.mean.get(), ref.mean, tol["stats"])
    check("module running var", bn.var.get(), ref.unbiasedVar, tol["stats"])

    bn.backward(GPUArray.to_gpu(hostGrad))
    dx, dscale, dbias = Reference.batchNormBackward(host, hostGrad, scale, axes, bn.epsilon)
    check("module grad", bn.grad.get(), dx, tol["data"])
    checkSumsOver("module scale grad", bn.vars["scale"].grad.get(), dscale, hostGrad * (host - ref.mean) * ref.invstd)
    checkSumsOver("module bias grad", bn.vars["bias"].grad.get(), dbias, hostGrad)

    bn.evalMode()
    out = bn(GPUArray.to_gpu(host)).get()
    runMean, runVar = bn.mean.get(), bn.var.get()
    check("module eval out", out, Reference.batchNormEval(host, scale, bias, runMean, runVar, bn.epsilon, axes),
          tol["data"])
    bn.backward(GPUArray.to_gpu(hostGrad))
    dx, dscale, dbias = Reference.frozenBackward(host, hostGrad, scale, runMean, runVar, bn.epsilon, axes)
    check("module frozen grad", bn.grad.get(), dx, tol["data"])
    frozenXhat = (host - runMean.astype(np.float64)) / np.sqrt(runVar.astype(np.float64) + bn.epsilon)
    checkSumsOver("module frozen scale grad", bn.vars["scale"].grad.get(), dscale, hostGrad * frozenXhat)
    checkSumsOver("module frozen bias grad", bn.vars["bias"].grad.get(), dbias, hostGrad)

    # NOTE: one plan serves the four calls: the implementation is chosen once, when it is made
    assert dispatched == [choice]


# --- the fallback where the C source cannot be built


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


@pytest.fixture
def noCompiler(monkeypatch, tmp_path):
    """No compiler, an empty cache, no library loaded, no build tried yet and no plan made in this process (all
    restored after); yields the warning lines logged on Config.logger."""
    monkeypatch.setenv("PUZZLELIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "/nonexistent/cc")
    monkeypatch.setitem(BatchNormKernels.cBuild, "outcome", None)
    monkeypatch.setattr(SourceLibrary, "libraries", {})
    BatchNormPlan.cachedPlan.cache_clear()
    records = Records()
    Config.logger.addHandler(records)
    try:
        yield records.lines
    finally:
        Config.logger.removeHandler(records)
        BatchNormPlan.cachedPlan.cache_clear()


def smallBatch(seed=14):
    """(host data (4, 3, 5, 5), per-map (1, 3, 1, 1) scale, bias, running mean, running variance), float32."""
    rng = np.random.default_rng(seed)
    host = makeData(rng, (4, 3, 25), np.float32).reshape(4, 3, 5, 5)
    return host, *(p.reshape(1, 3, 1, 1) for p in makeParams(rng, 3, np.float32))


def test_auto_falls_back_to_numpy_with_one_warning(monkeypatch, noCompiler):
    monkeypatch.setattr(Config, "cpuKernels", "auto")
    host, scale, bias, runMean, runVar = smallBatch()
    tol = TOLERANCES["numpy", np.float32]
    for _ in range(3):
        mean, var = onCpu(runMean, runVar)
        out, savemean, _ = Dnn.batchNormNd(GPUArray.to_gpu(host), *onCpu(scale, bias), mean, var, EPS, FACTOR)
        refOut, refMean, refVar, _ = trainReference(host.reshape(4, 3, 25), scale.ravel(), bias.ravel())
        checkTrainOut("fallback out", out.get().reshape(4, 3, 25), refOut, tol)
        check("fallback mean", savemean.get().ravel(), refMean, tol["stats"])
        newMean, newVar = Reference.runningUpdate(runMean.ravel(), runVar.ravel(), refMean, refVar, 25 * 4, FACTOR)
        check("fallback running var", var.get().ravel(), newVar, tol["stats"])

    assert len(noCompiler) == 1, noCompiler
    assert "numpy" in noCompiler[0] and "no C compiler found" in noCompiler[0] and "/nonexistent/cc" in noCompiler[0]
    assert BatchNormKernels.implementation(np.dtype(np.float32), Contract.PlanOptions(EPS)) is NumpyBatchNorm.NumpyPlan
    assert "/nonexistent/cc" in BatchNormKernels.cProblem()
    assert len(noCompiler) == 1


def test_asking_for_c_without_a_compiler_raises_and_writes_nothing(monkeypatch, noCompiler):
    monkeypatch.setattr(Config, "cpuKernels", "c")
    host, scale, bias, runMean, runVar = smallBatch()
    mean, var = onCpu(runMean, runVar)
    out = GPUArray.empty(host.shape, np.float32).fill(7.0)
    for _ in range(2):
        with pytest.raises(Config.ConfigError, match="cannot be built.*no C compiler found.*/nonexistent/cc"):
            Dnn.batchNormNd(GPUArray.to_gpu(host), *onCpu(scale, bias), mean, var, EPS, FACTOR, out=out)
    assert np.all(out.get() == 7.0)
    assert np.array_equal(mean.get(), runMean) and np.array_equal(var.get(), runVar)

    bn = BatchNorm2D(3)
    before = {key: getattr(bn, key).get() for key in ("scale", "bias", "mean", "var")}
    with pytest.raises(Config.ConfigError, match="/nonexistent/cc"):
        bn(GPUArray.to_gpu(host))
    assert bn.numOfProps == 0 and all(np.array_equal(getattr(bn, key).get(), v) for key, v in before.items())
    assert noCompiler == [], "asking for C must raise, not log a fallback"

    with Config.useCpuKernels("numpy"):
        out, _, _ = Dnn.batchNormNd(GPUArray.to_gpu(host), *onCpu(scale, bias), mean, var, EPS, FACTOR)
    refOut = trainReference(host.reshape(4, 3, 25), scale.ravel(), bias.ravel())[0]
    checkTrainOut("numpy out while C cannot be built", out.get().reshape(4, 3, 25), refOut,
                  TOLERANCES["numpy", np.float32])


def test_the_c_kernels_serve_again_after_the_fallback_tests():
    cKernelsOrSkip()
    with Config.useCpuKernels("auto"):
        assert BatchNormKernels.implementation(np.dtype(np.float32), Contract.PlanOptions(EPS)) is CBatchNorm.CPlan


# --- run-time compilation (three real compiles in all)


@pytest.fixture
def compiles(monkeypatch):
    """The option lists SourceLibrary.compileInto is called with (the real compiler still runs)."""
    try:
        SourceLibrary.compilerCommand()
    except SourceLibrary.CompileError as e:
        pytest.skip(str(e))
    calls = []
    compileInto = SourceLibrary.compileInto

    def recording(command, source, options, folder, name):
        calls.append(list(options))
        return compileInto(command, source, options, folder, name)

    monkeypatch.setattr(SourceLibrary, "compileInto", recording)
    return calls


def test_a_second_build_with_the_same_cache_folder_compiles_nothing(monkeypatch, tmp_path, compiles):
    cache = tmp_path / "cache"
    monkeypatch.setenv("PUZZLELIB_CACHE_DIR", str(cache))
    first = SourceLibrary.buildLibrary("BatchNorm.c")
    assert len(compiles) == 1 and os.path.dirname(first) == str(cache) and os.path.isfile(first)
    assert SourceLibrary.buildLibrary("BatchNorm.c") == first
    assert len(compiles) == 1, "the second build compiled again"
    assert sorted(os.listdir(cache)) == [os.path.basename(first)], "a temporary file was left behind"


def test_an_unwritable_cache_folder_builds_into_a_temporary_one(monkeypatch, tmp_path, compiles):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("PUZZLELIB_CACHE_DIR", str(blocker / "cache"))
    monkeypatch.setattr(SourceLibrary.tempfile, "tempdir", str(tmp_path))
    path = SourceLibrary.buildLibrary("BatchNorm.c")
    assert len(compiles) == 1
    assert os.path.basename(os.path.dirname(path)).startswith("PuzzleLib-") and os.path.dirname(path).startswith(
        str(tmp_path)
    )
    assert ctypes.CDLL(path).bnHasOpenMP() in (0, 1)


def test_a_compiler_that_refuses_the_optional_options_still_builds_working_kernels(monkeypatch, tmp_path, compiles):
    real = " ".join(shlex.quote(part) for part in shlex.split(os.environ.get("CC", "cc")))
    wrapper = tmp_path / "picky-cc"
    wrapper.write_text(
        "#!/bin/sh\n"
        'for arg in "$@"; do\n'
        '  case "$arg" in -fopenmp|-march=native) echo "picky-cc: error: unrecognized option $arg" >&2; exit 1;; esac\n'
        "done\n"
        'exec %s "$@"\n' % real
    )
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("CC", str(wrapper))
    monkeypatch.setenv("PUZZLELIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(SourceLibrary, "libraries", {})
    monkeypatch.setattr(CBatchNorm, "kernels", {})
    monkeypatch.setattr(CBatchNorm, "dataTypes", CBatchNorm.dataTypes)

    library = CBatchNorm.load()
    base = list(SourceLibrary.COMPILER_OPTIONS)
    assert compiles == [base + ["-march=native", "-fopenmp"], base + ["-march=native"], base]
    assert library.bnHasOpenMP() == 0

    # NOTE: without OpenMP the split path's tiles all run on the calling thread. Without -march=native (no FMA, four
    # SIMD lanes) the float block sums lose more: measured 3.5e-6 relative on the large map's variance (5e-7 native;
    # the bound is the 1e-5 the C kernels promise), 5.1e-6 on its output, 8.8e-7 on invstd
    tol = dict(TOLERANCES["c", np.float32], largeOut=3e-5, stats=5e-6, largeVar=1e-5)
    monkeypatch.setattr(Config, "cpuThreads", 2)
    shape3, rng = (5, 3, 9001), np.random.default_rng(15)
    host = makeData(rng, shape3, np.float32)
    scale, bias, _, _ = makeParams(rng, 3, np.float32)
    data, out = GPUArray.to_gpu(host), GPUArray.empty(shape3, np.float32)
    saved = (GPUArray.empty((3,)), GPUArray.empty((3,)))
    plan = CBatchNorm.CPlan(backend, layoutOf(shape3, AXES), np.dtype(np.float32), Contract.PlanOptions(EPS))
    plan.trainForward(Contract.TrainForward(data, out, *onCpu(scale, bias), None, None, None, *saved, FACTOR))
    moments = Contract.Moments(data, GPUArray.empty((3,), np.float64), GPUArray.empty((3,), np.float64))
    plan.batchStatistics(moments)

    refOut, refMean, refVar, refInvstd = trainReference(host, scale, bias)
    checkTrainOut("out without OpenMP", out.get(), refOut, tol)
    check("invstd without OpenMP", saved[1].get(), refInvstd, tol["stats"])
    check("mean without OpenMP", moments.mean.get(), refMean, tol["stats"])
    checkLargeVariance("variance without OpenMP", moments.var.get(), refVar, tol["largeVar"])


# --- Config


@pytest.mark.parametrize(
    "variable, value, message",
    [
        ("PUZZLELIB_CPU_KERNELS", "gpu", "PUZZLELIB_CPU_KERNELS must be one of 'auto', 'c', 'numpy'; got 'gpu'"),
        ("PUZZLELIB_CPU_THREADS", "0", "PUZZLELIB_CPU_THREADS must be a positive integer; got '0'"),
        ("PUZZLELIB_CPU_THREADS", "x", "PUZZLELIB_CPU_THREADS must be a positive integer; got 'x'"),
    ],
)
def test_a_malformed_cpu_setting_is_an_error_on_import_naming_the_variable(variable, value, message):
    result = subprocess.run([sys.executable, "-c", "import PuzzleLib.Config"], capture_output=True, text=True,
                            env=dict(os.environ, **{variable: value}), cwd="/", timeout=120)
    assert result.returncode != 0 and "ConfigError" in result.stderr and message in result.stderr, result.stderr


def test_cpu_settings_are_read_leniently_and_checked():
    assert Config.checkedCpuKernelsName(" NumPy ", "PUZZLELIB_CPU_KERNELS") == "numpy"
    assert Config.checkedThreads("3", "PUZZLELIB_CPU_THREADS") == 3
    with pytest.raises(Config.ConfigError, match="PUZZLELIB_CPU_THREADS must be a positive integer; got -2"):
        Config.checkedThreads(-2, "PUZZLELIB_CPU_THREADS")
    before = Config.cpuKernels
    with pytest.raises(Config.ConfigError, match="useCpuKernels's name must be one of 'auto', 'c', 'numpy'"):
        Config.useCpuKernels("fortran")
    with Config.useCpuKernels("NUMPY"):
        assert Config.cpuKernels == "numpy"
    assert Config.cpuKernels == before


def test_an_installed_package_carries_every_kernel_source():
    """A regular (not editable) install copies only setup.py's package_data besides the Python files: every source
    the backends compile at run time (``Kernels/*.c``, ``Kernels/*.cu``) must match one of its patterns."""
    tree = ast.parse((Path(sourcePath("BatchNorm.c")).parents[1] / "setup.py").read_text())
    patterns = next(
        ast.literal_eval(keyword.value)["PuzzleLib.Kernels"]
        for node in ast.walk(tree) if isinstance(node, ast.Call)
        for keyword in node.keywords if keyword.arg == "package_data"
    )
    sources = sorted(path.name for path in Path(sourcePath("BatchNorm.c")).parent.iterdir()
                     if path.suffix in (".c", ".cu"))
    assert "BatchNorm.c" in sources
    assert [name for name in sources if not any(fnmatch.fnmatch(name, pattern) for pattern in patterns)] == []
