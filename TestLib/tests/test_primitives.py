"""Each backend's batch-normalization primitives (the methods of its `Backend.BatchNormPlan`) on the
``(outer, maps, inner)`` view, against the float64 reference of `TestLib.Reference`, on every backend.

The cases cover both layouts the CUDA kernels distinguish: spatial (inner > 1; scalar and 16-byte vector paths, one and
many blocks per map, a thread per map on small maps, maps whose extent the vector does not divide: 7x7, in float16
14x14, and maps of 2, 3 and 5 elements, whose float16 vectors hold elements of several maps) and rows (inner == 1:
per-activation and channels-last data, few maps, one map; on CUDA 3, 50 and 131075 maps over rows of several rows,
in 16-byte vectors: the elementwise passes, and the reductions where a block's lanes span such a row), in float32 and
float16; on CUDA, reductions of more columns of blocks than the kernels have counters (`Kernels.BatchNorm.
COLUMN_COUNTERS`: the columns that share one are finished together), and the resident passes: a block per map (more
maps than the 132 multiprocessors the stand-in driver reports, a map's slice in one block: every number of vectors a
thread holds, over aligned and unaligned segments), a map split over 2 blocks where one does not hold it (the `_most`
cases' residual forward and backward), and maps split over as many blocks as fill the multiprocessors where they are
fewer (the spatial cases of fewer than 132 maps, one map included, of at least 128 vectors a map); over rows of maps
that 16 bytes divide (`rows_vector`, `rows_wide`, `rows_resident_*`), columns of channels of one block each (6 rows),
split over many blocks (1144 rows: 72 of 16 rows in float32, the last with 8), of idle lanes (280 maps: 3 columns of 24
lanes in float32, 2 of 18 in float16), of 16 and 8 lanes where 32 would take more blocks a column than
multiprocessors (8500 rows of 256 maps), and rows whose columns do not fit (`rows_past_resident`: the reductions).
"""

import gc

import numpy as np
import pytest

from PuzzleLib.Backend import Contract
from PuzzleLib.Backend.BatchNormLayout import layoutOf
from PuzzleLib.TestLib import Reference

AXES = (0, 2)
CASES = {
    "spatial_odd_inner": (4, 3, 35),
    "spatial_vector": (8, 16, 64),
    "spatial_many_splits": (64, 4, 1024),
    "spatial_small_outer": (2, 5, 4096),
    "spatial_unaligned": (8, 6, 49),
    "spatial_unaligned_splits": (512, 2, 49),
    "spatial_unaligned_half_vectors": (4, 6, 196),
    "spatial_small_maps": (2, 1000, 2),
    "spatial_short_maps": (8, 512, 3),
    "spatial_five_maps": (4, 64, 5),
    "spatial_more_maps_than_counters": (1, 4099, 257),
    "spatial_resident": (8, 136, 400),
    "spatial_resident_held": (8, 136, 1200),
    "spatial_resident_most": (16, 136, 1200),
    "spatial_resident_unaligned": (64, 136, 49),
    "spatial_resident_unaligned_most": (400, 136, 49),
    "spatial_resident_short": (32, 136, 49),
    "one_map": (3000, 1, 1),
    "rows_few_maps": (5000, 3, 1),
    "rows_vector": (64, 24, 1),
    "rows_odd_maps": (33, 10, 1),
    "rows_many_splits": (20000, 50, 1),
    "rows_wide": (256, 4096, 1),
    "rows_more_columns_than_counters": (8, 131075, 1),
    "rows_resident_one_block": (6, 280, 1),
    "rows_resident_split": (1144, 96, 1),
    "rows_resident_columns": (300, 280, 1),
    "rows_resident_narrow": (8500, 256, 1),
    "rows_past_resident": (70000, 16, 1),
}
TOL = {np.float32: dict(rtol=1e-4, atol=1e-4), np.float16: dict(rtol=1e-2, atol=2e-2)}
STAT_TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float16: dict(rtol=1e-3, atol=1e-4)}

cases = pytest.mark.parametrize("name", sorted(CASES))
dtypes = pytest.mark.parametrize("dtype", [np.float32, np.float16])


def planOf(backend, shape3, dtype, epsilon=1e-5):
    """The backend's own plan of ``(outer, maps, inner)`` data normalized over axes (0, 2)."""
    return backend.batchNorm.plan(backend, layoutOf(shape3, AXES), np.dtype(dtype), Contract.PlanOptions(epsilon))


def sumTolerance(dtype, shape3):
    m = shape3[0] * shape3[2]
    return dict(rtol=1e-3, atol=1e-3 * np.sqrt(m)) if dtype == np.float16 else dict(rtol=1e-4, atol=1e-4 * np.sqrt(m))


def makeParams(rng, maps):
    """scale, bias, running mean and running variance, float32 per-map vectors."""
    return (rng.normal(1.0, 0.1, maps).astype(np.float32), rng.normal(0.0, 0.1, maps).astype(np.float32),
            rng.normal(0.0, 0.1, maps).astype(np.float32), rng.uniform(0.5, 2.0, maps).astype(np.float32))


def makeData(rng, shape3, dtype, loc=0.5, std=2.0):
    return rng.normal(loc, std, shape3).astype(dtype)


@dtypes
@cases
def test_train_forward(backend, name, dtype):
    shape3 = CASES[name]
    rng = np.random.default_rng(1)
    arrays, maps = backend.gpuarray, shape3[1]
    host = makeData(rng, shape3, dtype)
    scale, bias, mean, var = makeParams(rng, maps)
    eps, factor = 1e-5, 0.3

    out = arrays.empty(shape3, dtype)
    running = (arrays.to_gpu(mean), arrays.to_gpu(var))
    saved = (arrays.empty((maps,)), arrays.empty((maps,)))
    params = (arrays.to_gpu(scale), arrays.to_gpu(bias))
    planOf(backend, shape3, dtype, eps).trainForward(
        Contract.TrainForward(arrays.to_gpu(host), out, *params, *running, None, *saved, factor)
    )

    ref = Reference.batchNormTrain(host, scale, bias, AXES, eps)
    newMean, newVar = Reference.runningUpdate(mean, var, ref.mean.ravel(), ref.var.ravel(), ref.m, factor)
    np.testing.assert_allclose(out.get().astype(np.float64), ref.out, **TOL[dtype], err_msg=name)
    np.testing.assert_allclose(saved[0].get(), ref.mean.ravel(), **STAT_TOL[dtype])
    np.testing.assert_allclose(saved[1].get(), ref.invstd.ravel(), **STAT_TOL[dtype])
    np.testing.assert_allclose(running[0].get(), newMean, **STAT_TOL[dtype])
    np.testing.assert_allclose(running[1].get(), newVar, **STAT_TOL[dtype])


@dtypes
@cases
def test_eval_forward_and_in_place(backend, name, dtype):
    shape3 = CASES[name]
    rng = np.random.default_rng(2)
    arrays = backend.gpuarray
    host = makeData(rng, shape3, dtype)
    scale, bias, mean, var = makeParams(rng, shape3[1])
    params = (arrays.to_gpu(scale), arrays.to_gpu(bias), arrays.to_gpu(mean), arrays.to_gpu(var))
    ref = Reference.batchNormEval(host, scale, bias, mean, var, 1e-5, axes=AXES)

    data, out = arrays.to_gpu(host), arrays.empty(shape3, dtype)
    plan = planOf(backend, shape3, dtype)
    plan.evalForward(Contract.EvalForward(data, out, *params))
    np.testing.assert_allclose(out.get().astype(np.float64), ref, **TOL[dtype], err_msg=name)

    gc.collect()
    before = arrays.memoryPool.stats()["allocations"]
    plan.evalForward(Contract.EvalForward(data, data, *params))
    assert arrays.memoryPool.stats()["allocations"] == before, "in-place evaluation took a pool block"
    np.testing.assert_allclose(data.get().astype(np.float64), ref, **TOL[dtype], err_msg=name)


def backwardCase(backend, name, dtype, seed):
    """(shape3, data and grad on the host, the same on the backend, an output for ingrad, fresh scalegrad/biasgrad
    filled with 7: the sums are overwritten, not accumulated, so stale values must not leak into them)."""
    shape3, arrays, rng = CASES[name], backend.gpuarray, np.random.default_rng(seed)
    host, grad = makeData(rng, shape3, dtype), makeData(rng, shape3, dtype, loc=0.1, std=1.0)
    onDevice = (arrays.to_gpu(host), arrays.to_gpu(grad), arrays.empty(shape3, dtype))
    sums = (arrays.zeros((shape3[1],)).fill(7.0), arrays.zeros((shape3[1],)).fill(7.0))
    return shape3, host, grad, onDevice, sums, rng


def checkGradients(name, dtype, ingrad, scalegrad, biasgrad, reference, sumTol):
    refIn, refScale, refBias = reference
    np.testing.assert_allclose(biasgrad.get(), refBias.ravel(), **sumTol)
    np.testing.assert_allclose(scalegrad.get(), refScale.ravel(), **sumTol)
    np.testing.assert_allclose(ingrad.get().astype(np.float64), refIn, **TOL[dtype], err_msg=name)


@dtypes
@cases
def test_backward_after_training(backend, name, dtype):
    shape3, host, grad, (data, dy, ingrad), (scalegrad, biasgrad), rng = backwardCase(backend, name, dtype, 3)
    arrays, maps = backend.gpuarray, shape3[1]
    scale = rng.normal(1.0, 0.1, maps).astype(np.float32)
    ref = Reference.batchNormTrain(host, scale, np.zeros(maps), AXES, 1e-5)
    saved = (arrays.to_gpu(ref.mean.ravel().astype(np.float32)), arrays.to_gpu(ref.invstd.ravel().astype(np.float32)))

    plan = planOf(backend, shape3, dtype)
    plan.backward(Contract.Backward(data, dy, ingrad, arrays.to_gpu(scale), *saved, scalegrad, biasgrad))
    reference = Reference.batchNormBackward(host, grad, scale, AXES, 1e-5)
    checkGradients(name, dtype, ingrad, scalegrad, biasgrad, reference, sumTolerance(dtype, shape3))

    biasgrad.fill(7.0)
    plan.backward(Contract.Backward(data, dy, None, arrays.to_gpu(scale), *saved, scalegrad, biasgrad))
    np.testing.assert_allclose(biasgrad.get(), reference[2].ravel(), **sumTolerance(dtype, shape3))


@dtypes
@cases
def test_frozen_backward(backend, name, dtype):
    shape3, host, grad, (data, dy, ingrad), (scalegrad, biasgrad), rng = backwardCase(backend, name, dtype, 4)
    arrays = backend.gpuarray
    scale, _, mean, var = makeParams(rng, shape3[1])

    planOf(backend, shape3, dtype).frozenBackward(Contract.FrozenBackward(
        data, dy, ingrad, arrays.to_gpu(scale), arrays.to_gpu(mean), arrays.to_gpu(var), scalegrad, biasgrad
    ))
    reference = Reference.frozenBackward(host, grad, scale, mean, var, 1e-5, axes=AXES)
    frozenTol = dict(rtol=1e-3, atol=1e-3 * np.sqrt(shape3[0] * shape3[2]))
    checkGradients(name, dtype, ingrad, scalegrad, biasgrad, reference, frozenTol)


@pytest.mark.parametrize("statType", [np.float32, np.float64])
@dtypes
@cases
def test_batch_statistics(backend, name, dtype, statType):
    """The moments synchronized batch norm exchanges: the mean and the biased variance, nothing else written."""
    shape3 = CASES[name]
    rng = np.random.default_rng(5)
    arrays, maps = backend.gpuarray, shape3[1]
    host = makeData(rng, shape3, dtype, loc=3.0)
    saved = Contract.Moments(arrays.to_gpu(host), arrays.empty((maps,), statType), arrays.empty((1, maps), statType))
    planOf(backend, shape3, dtype).batchStatistics(saved)

    ref = Reference.batchNormTrain(host, np.ones(maps), np.zeros(maps), AXES, 1e-5)
    np.testing.assert_allclose(saved.mean.get(), ref.mean.ravel(), **STAT_TOL[dtype], err_msg=name)
    np.testing.assert_allclose(saved.var.get().ravel(), ref.var.ravel(), **STAT_TOL[dtype], err_msg=name)


def test_batch_statistics_of_one_element_and_large_mean(backend):
    """One element per map: variance 0; a map at 1e4 with standard deviation 1: the mean to 1e-5 standard deviations on
    the CPU backend (the merge across processes needs it: a process's error in the mean enters the merged variance), to
    the float32 rounding of the kernels' mean on CUDA; the variance to 1e-5."""
    arrays = backend.gpuarray
    saved = Contract.Moments(arrays.to_gpu(np.array([[2.5, -1.0, 1e4]], np.float32)), arrays.empty((3,), np.float64),
                    arrays.empty((3,), np.float64))
    planOf(backend, (1, 3, 1), np.float32).batchStatistics(saved)
    np.testing.assert_array_equal(saved.var.get(), 0.0)
    np.testing.assert_allclose(saved.mean.get(), [2.5, -1.0, 1e4])

    # NOTE: a mean 3e-4 away from the nearest float32 (their spacing is 9.8e-4 at 1e4), so a mean that is rounded to
    # float32 anywhere on the way is off by far more than the tolerance; 4001 rows, as a sum divided by a power of two
    # would be a float32 again
    noise = np.random.default_rng(2).normal(0.0, 1.0, (4001, 2))
    host = (noise - noise.mean(axis=0) + (1e4 + 3e-4)).astype(np.float32)
    saved = Contract.Moments(arrays.to_gpu(host), arrays.empty((2,), np.float64), arrays.empty((2,), np.float64))
    planOf(backend, (4001, 2, 1), np.float32).batchStatistics(saved)
    exact = host.astype(np.float64)
    meanTolerance = 1e-5 if backend.name == "cpu" else 2 * 2.0**-24 * 1e4
    np.testing.assert_allclose(saved.mean.get(), exact.mean(axis=0), rtol=0, atol=meanTolerance)
    np.testing.assert_allclose(saved.var.get(), exact.var(axis=0), rtol=1e-5)


@dtypes
@cases
def test_normalize_with_given_statistics(backend, name, dtype):
    shape3 = CASES[name]
    rng = np.random.default_rng(6)
    arrays, maps = backend.gpuarray, shape3[1]
    host = makeData(rng, shape3, dtype)
    scale, bias, mean, _ = makeParams(rng, maps)
    invstd = rng.uniform(0.5, 2.0, maps).astype(np.float32)

    out = arrays.empty(shape3, dtype)
    planOf(backend, shape3, dtype).normalize(Contract.Normalize(
        arrays.to_gpu(host), out, arrays.to_gpu(scale), arrays.to_gpu(bias), arrays.to_gpu(mean), arrays.to_gpu(invstd)
    ))
    expected = (host.astype(np.float64) - mean[:, None]) * (invstd * scale)[:, None] + bias[:, None]
    np.testing.assert_allclose(out.get().astype(np.float64), expected, **TOL[dtype], err_msg=name)


@dtypes
@cases
def test_input_gradient_from_sums_over_more_elements(backend, name, dtype):
    """Sums over `count` elements (a global batch larger than this data) enter as ``/ count``."""
    shape3, host, grad, (data, dy, ingrad), _, rng = backwardCase(backend, name, dtype, 8)
    arrays, maps = backend.gpuarray, shape3[1]
    scale, _, mean, _ = makeParams(rng, maps)
    invstd = rng.uniform(0.5, 2.0, maps).astype(np.float32)
    dbias, dscale = rng.normal(0, 5, maps).astype(np.float32), rng.normal(0, 5, maps).astype(np.float32)
    count = 3 * shape3[0] * shape3[2] + 1

    planOf(backend, shape3, dtype).inputGradient(Contract.InputGradient(
        data, dy, ingrad, arrays.to_gpu(scale), arrays.to_gpu(mean), arrays.to_gpu(invstd), arrays.to_gpu(dscale),
        arrays.to_gpu(dbias), count,
    ))
    xhat = (host.astype(np.float64) - mean[:, None]) * invstd[:, None]
    expected = (scale * invstd)[:, None] * (grad - (dbias[:, None] + xhat * dscale[:, None]) / count)
    np.testing.assert_allclose(ingrad.get().astype(np.float64), expected, **TOL[dtype], err_msg=name)


@pytest.mark.parametrize("shape3", [(16, 2, 4096), (65536, 2, 1), (8, 136, 400)], ids=["spatial", "rows", "resident"])
def test_large_mean(backend, shape3):
    """large_mean: a channel of mean 1e4 and standard deviation 1 keeps its variance within 1e-3 relative (SPEC 3)."""
    rng = np.random.default_rng(5)
    arrays, maps = backend.gpuarray, shape3[1]
    host = rng.normal(1e4, 1.0, shape3).astype(np.float32)
    ref = Reference.batchNormTrain(host, np.ones(maps), np.zeros(maps), AXES, 0.0)

    running = (arrays.zeros((maps,)), arrays.zeros((maps,)))
    saved = (arrays.empty((maps,)), arrays.empty((maps,)))
    planOf(backend, shape3, np.float32, 0.0).trainForward(Contract.TrainForward(
        arrays.to_gpu(host), arrays.empty(shape3), arrays.zeros((maps,)).fill(1.0), arrays.zeros((maps,)), *running,
        None, *saved, 1.0,
    ))

    np.testing.assert_allclose(running[1].get(), ref.unbiasedVar.ravel(), rtol=1e-3)
    np.testing.assert_allclose(1.0 / saved[1].get().astype(np.float64) ** 2, ref.var.ravel(), rtol=1e-3)
    np.testing.assert_allclose(saved[0].get(), ref.mean.ravel(), rtol=1e-6)


@dtypes
@cases
def test_train_forward_guard_keeps_running_statistics_of_non_finite_maps(backend, name, dtype):
    """Maps 0 and 1 hold a NaN and an inf: with a counter they keep their running statistics and count 1, the others
    take the reference update; without one, NaN enters the two maps' running statistics (cuDNN's and PyTorch's
    update). The outputs of the finite maps are the reference's either way."""
    shape3 = CASES[name]
    if shape3[1] < 3:
        pytest.skip("the case needs two non-finite maps and a finite one")
    rng = np.random.default_rng(4)
    arrays, maps = backend.gpuarray, shape3[1]
    host = makeData(rng, shape3, dtype)
    host[shape3[0] - 1, 0, shape3[2] - 1] = np.nan
    host[0, 1, 0] = np.inf
    scale, bias, mean, var = makeParams(rng, maps)
    counts = np.zeros(maps, np.float32)
    counts[1] = 2.0

    ref = Reference.batchNormTrain(host[:, 2:], scale[2:], bias[2:], AXES, 1e-5)
    newMean, newVar = Reference.runningUpdate(mean[2:], var[2:], ref.mean.ravel(), ref.var.ravel(), ref.m, 0.3)
    for guarded in (True, False):
        out = arrays.empty(shape3, dtype)
        runMean, runVar = arrays.to_gpu(mean), arrays.to_gpu(var)
        saved = (arrays.empty((maps,)), arrays.empty((maps,)))
        skipped = arrays.to_gpu(counts) if guarded else None
        planOf(backend, shape3, dtype).trainForward(Contract.TrainForward(
            arrays.to_gpu(host), out, arrays.to_gpu(scale), arrays.to_gpu(bias), runMean, runVar, skipped, *saved, 0.3
        ))
        np.testing.assert_allclose(out.get()[:, 2:].astype(np.float64), ref.out, **TOL[dtype], err_msg=name)
        np.testing.assert_allclose(runMean.get()[2:], newMean, **STAT_TOL[dtype], err_msg=name)
        np.testing.assert_allclose(runVar.get()[2:], newVar, **STAT_TOL[dtype], err_msg=name)
        if guarded:
            assert np.array_equal(runMean.get()[:2], mean[:2]) and np.array_equal(runVar.get()[:2], var[:2])
            assert skipped.get().tolist() == [1.0, 3.0] + [0.0] * (maps - 2)
        else:
            assert not np.isfinite(runVar.get()[:2]).any()


@cases
@pytest.mark.parametrize("guarded", [True, False], ids=["with_counts", "without_counts"])
def test_train_forward_saves_what_its_running_update_overwrites(backend, name, guarded):
    """With a backup, the running statistics and skip counts as they were before the call (0 for absent counts), then
    the stamp, whatever the backup held; with a mirror of the counts, the count of the map skipped (map 0, with a NaN),
    the others left as they were; the update itself is the one without either."""
    shape3 = CASES[name]
    rng = np.random.default_rng(5)
    arrays, maps = backend.gpuarray, shape3[1]
    host = makeData(rng, shape3, np.float32)
    host[0, 0, 0] = np.nan
    scale, bias, mean, var = makeParams(rng, maps)
    counts = rng.integers(0, 3, maps).astype(np.float32)
    backup = arrays.to_gpu(np.full(3 * maps + 1, -7.0, np.float32))
    runMean, runVar = arrays.to_gpu(mean), arrays.to_gpu(var)
    skipped = arrays.to_gpu(counts) if guarded else None
    mirror = arrays.to_gpu(np.full(maps, -1.0, np.float32)) if guarded else None
    saved = (arrays.empty((maps,)), arrays.empty((maps,)))
    planOf(backend, shape3, np.float32).trainForward(Contract.TrainForward(
        arrays.to_gpu(host), arrays.empty(shape3), arrays.to_gpu(scale), arrays.to_gpu(bias), runMean, runVar, skipped,
        *saved, 0.3, None, backup, 12345, mirror,
    ))
    expected = np.concatenate([mean, var, counts if guarded else np.zeros(maps, np.float32), [12345.0]])
    assert np.array_equal(backup.get(), expected.astype(np.float32))
    if guarded:
        assert mirror.get().tolist() == [counts[0] + 1.0] + [-1.0] * (maps - 1)
    ref = Reference.batchNormTrain(host[:, 1:], scale[1:], bias[1:], AXES, 1e-5)
    newMean, _ = Reference.runningUpdate(mean[1:], var[1:], ref.mean.ravel(), ref.var.ravel(), ref.m, 0.3)
    np.testing.assert_allclose(runMean.get()[1:], newMean, **STAT_TOL[np.float32], err_msg=name)
    assert np.isnan(runMean.get()[0]) != guarded


def test_training_loop_makes_no_raw_allocation(backend):
    rng = np.random.default_rng(6)
    arrays, shape3 = backend.gpuarray, (8, 32, 256)
    maps = shape3[1]
    data, grad = arrays.to_gpu(makeData(rng, shape3, np.float32)), arrays.to_gpu(makeData(rng, shape3, np.float32))
    scale, bias, mean, var = (arrays.to_gpu(p) for p in makeParams(rng, maps))

    plan = planOf(backend, shape3, np.float32)

    def step():
        out, ingrad = arrays.empty(shape3), arrays.empty(shape3)
        saved = (arrays.empty((maps,)), arrays.empty((maps,)))
        scalegrad, biasgrad = arrays.empty((maps,)), arrays.empty((maps,))
        plan.trainForward(Contract.TrainForward(data, out, scale, bias, mean, var, None, *saved, 0.1))
        plan.backward(Contract.Backward(data, grad, ingrad, scale, *saved, scalegrad, biasgrad))

    step()
    gc.collect()
    misses = arrays.memoryPool.stats()["misses"]
    for _ in range(5):
        step()
    assert arrays.memoryPool.stats()["misses"] == misses
