"""Synchronized batch normalization on real MPI ranks (``mpiexec -n 2`` and ``-n 3``, oversubscribed on few cores).

Each run (`TestLib.SyncBatchNormRanks`) trains every case on unequal local batches, an empty and a one-element batch
among them, and writes each rank's results; here they are compared with the float64 reference of a single process on
the concatenated global batch (`TestLib.Reference`). The tests skip where mpi4py or mpiexec is missing, unless
``PUZZLELIB_REQUIRE_MPI=1`` (as `.ci/run` sets it), which turns the skip into a failure.
"""

import json

import numpy as np
import pytest

from PuzzleLib.TestLib import MpiLauncher, Reference
from PuzzleLib.TestLib.SyncBatchNormRanks import EPSILON, STEPS, cases, localBatches, recomputeSet

# ranks -> the batch of each rank: unequal, with a one-element rank (2 ranks) and an empty one (3 ranks)
LAYOUTS = {2: (6, 1), 3: (4, 0, 1)}
TIMEOUT = 300

runs = {}


def rankResults(backendName, ranks, tmp_path_factory):
    """Every rank's (arrays, messages) for one backend and rank count, from one mpiexec run per pytest run."""
    key = (backendName, ranks)
    if key not in runs:
        MpiLauncher.skipUnlessAvailable()
        out = tmp_path_factory.mktemp("sync%s%d" % (backendName, ranks))
        sizes = [str(size) for size in LAYOUTS[ranks]]
        args = ["-m", "PuzzleLib.TestLib.SyncBatchNormRanks", str(out), *sizes]
        done = MpiLauncher.run(ranks, args, TIMEOUT, backend=backendName)
        assert done.returncode == 0, "mpiexec failed (%d):\n%s\n%s" % (done.returncode, done.stdout, done.stderr)

        results = []
        for rank in range(ranks):
            with np.load(out / ("rank%d.npz" % rank)) as arrays:
                values = dict(arrays)
            with open(out / ("rank%d.json" % rank), encoding="utf-8") as file:
                results.append((values, json.load(file)))
        runs[key] = results
    return runs[key]


def referenceAxes(case):
    _, _, sample, axis, _ = cases()[case]
    return tuple(a for a in range(len(sample) + 1) if a != axis)


def tolerance(case):
    """(atol on normalized outputs and input gradients, rtol on them and on statistics and parameter gradients) per data
    type; float64 data has float32 parameter-gradient sums (the module's gradients are float32)."""
    dtype = np.dtype(cases()[case][4])
    return {np.float16: (2e-3, 1e-3), np.float32: (2e-5, 2e-6), np.float64: (1e-7, 1e-6)}[dtype.type]


# NOTE: map 0 has mean 1e4 and standard deviation 1; its mean is kept in a float32 per-map array, rounded by up to
# 2**-24 * 1e4 = 6e-4 standard deviations (the float32 data itself is only known to half its ulp at 1e4, 4.9e-4)
MEAN_ROUNDING = 2.0**-24 * 1e4


def outputTolerance(case, atol):
    """The atol per element of an output or input gradient: `atol`, and on map 0 also twice `MEAN_ROUNDING`."""
    _, _, sample, axis, _ = cases()[case]
    shape = [1] * (len(sample) + 1)
    shape[axis] = sample[axis - 1]
    perMap = np.full(shape, atol)
    perMap.reshape(-1)[0] += 2.0 * MEAN_ROUNDING
    return perMap


def scaleGradTolerance(grad, axes, atol):
    """The atol per map of the scale gradient sum(grad * xhat): `atol` per element summed in quadrature, and on map 0
    the rounding of its mean times sum(|grad|)."""
    m = Reference.elementsPerMap(grad.shape, axes)
    perMap = np.full(np.sum(grad, axis=axes).size, atol * np.sqrt(m))
    perMap[0] += 2.0 * MEAN_ROUNDING * np.sum(np.abs(grad), axis=axes).ravel()[0]
    return perMap


def assertClose(actual, desired, atol, message, rtol=0.0):
    """``|actual - desired| <= atol + rtol * |desired|`` elementwise, atol broadcast against the arrays."""
    excess = np.abs(np.asarray(actual, np.float64) - desired) - atol - rtol * np.abs(desired)
    assert actual.shape == desired.shape, message
    assert excess.max(initial=-1.0) <= 0, "%s: off by up to %g past the tolerance" % (message, excess.max())


def storedData(case, step, sizes):
    """The global batch as the ranks stored it (cast to the case's data type), and the global gradient, in float64."""
    dtype = cases()[case][4]
    parts = localBatches(case, step, sizes)
    data = np.concatenate([d.astype(dtype) for d, _ in parts]).astype(np.float64)
    grad = np.concatenate([g.astype(dtype) for _, g in parts]).astype(np.float64)
    return data, grad


def splitRows(ary, sizes):
    bounds = np.cumsum([0] + list(sizes))
    return [ary[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@pytest.mark.parametrize("ranks", sorted(LAYOUTS))
@pytest.mark.parametrize("case", sorted(cases()))
def test_every_rank_computes_what_one_process_computes_on_the_global_batch(backend, tmp_path_factory, ranks, case):
    results = rankResults(backend.name, ranks, tmp_path_factory)
    if "%s.scale" % case not in results[0][0]:
        pytest.skip("%s data is not computed on the %s backend" % (np.dtype(cases()[case][4]), backend.name))
    sizes = LAYOUTS[ranks]
    atol, rtol = tolerance(case)
    axes = referenceAxes(case)
    scale = results[0][0]["%s.scale" % case]
    runMean, runVar = 0.0, 1.0

    for step in range(STEPS):
        data, grad = storedData(case, step, sizes)
        ref = Reference.batchNormTrain(data, scale, np.zeros_like(scale), axes, EPSILON)
        dx, dscale, dbias = Reference.batchNormBackward(data, grad, scale, axes, EPSILON)
        # NOTE: initFactor 1 and minFactor 0.1: the first three batches are averaged cumulatively
        runMean, runVar = Reference.runningUpdate(runMean, runVar, ref.mean, ref.var, ref.m, 1.0 / (step + 1))

        for rank, ((values, _), out, dxRows) in enumerate(
            zip(results, splitRows(ref.out, sizes), splitRows(dx, sizes), strict=True)
        ):
            prefix = "%s.%d." % (case, step)
            where = "rank %d of %d, step %d" % (rank, ranks, step)
            assertClose(values[prefix + "out"], out, outputTolerance(case, atol), where + ", output", rtol)
            assertClose(values[prefix + "dx"], dxRows, outputTolerance(case, atol), where + ", input gradient", rtol)
            np.testing.assert_allclose(values[prefix + "mean"].ravel(), runMean.ravel(), rtol=rtol, err_msg=where)
            np.testing.assert_allclose(values[prefix + "var"].ravel(), runVar.ravel(), rtol=rtol, err_msg=where)
            assertClose(
                values[prefix + "dscale"].ravel(), dscale.ravel(), scaleGradTolerance(grad, axes, atol) + rtol *
                np.abs(dscale.ravel()), where + ", scale gradient",
            )
            np.testing.assert_allclose(
                values[prefix + "dbias"].ravel(), dbias.ravel(), rtol=rtol, atol=atol * np.sqrt(ref.m), err_msg=where
            )
            assert int(values[prefix + "numOfProps"]) == step + 1

    data, _ = storedData(case, 0, sizes)
    expected = Reference.batchNormEval(data, scale, np.zeros_like(scale), results[0][0]["%s.%d.mean" % (case, 2)],
                                       results[0][0]["%s.%d.var" % (case, 2)], EPSILON, axes)
    for (values, _), rows in zip(results, splitRows(expected, sizes), strict=True):
        assertClose(values["%s.eval" % case], rows, outputTolerance(case, atol), "evaluation", rtol)


@pytest.mark.parametrize("ranks", sorted(LAYOUTS))
def test_the_large_mean_map_keeps_its_variance(backend, tmp_path_factory, ranks):
    """Map 0 has mean 1e4 and standard deviation 1, split unequally over the ranks: the merged running variance is
    within 1e-6 relative on the CPU backend (float64 moments) and SPEC section 3's 1e-3 on CUDA (float32 kernels)."""
    results = rankResults(backend.name, ranks, tmp_path_factory)
    data, _ = storedData("perActivation", 0, LAYOUTS[ranks])
    expected = data[:, 0].var(ddof=1)
    rtol = 1e-6 if backend.name == "cpu" else 1e-3
    for values, _ in results:
        np.testing.assert_allclose(values["perActivation.0.var"].ravel()[0], expected, rtol=rtol)


@pytest.mark.parametrize("ranks", sorted(LAYOUTS))
def test_every_rank_holds_the_same_statistics_and_parameter_gradients_bit_for_bit(backend, tmp_path_factory, ranks):
    results = rankResults(backend.name, ranks, tmp_path_factory)
    first = results[0][0]
    for values, _ in results[1:]:
        for key in first:
            if key.endswith((".mean", ".var", ".dscale", ".dbias", ".numOfProps")):
                assert np.array_equal(values[key], first[key]), key


@pytest.mark.parametrize("ranks", sorted(LAYOUTS))
def test_errors_are_raised_on_every_rank_alike_and_change_nothing(backend, tmp_path_factory, ranks):
    results = rankResults(backend.name, ranks, tmp_path_factory)
    expected = {
        "mapCount": "ModuleError: SyncBatchNorm: the processes have different map counts (per rank: [4, %s])"
        % ", ".join(["5"] * (ranks - 1)),
        "dataType": "ModuleError: SyncBatchNorm: the processes' data types differ (per rank: ['float16', %s])"
        % ", ".join(["'float32'"] * (ranks - 1)),
        "localShape": "ModuleError: SyncBatchNorm: a process refused its part of the synchronized step (rank %d: "
        "SyncBatchNorm expects 2D data (batch, size); got shape (4, 5, 1))" % (ranks - 1),
        "tooFewElements": "ModuleError: SyncBatchNorm: training needs at least 2 elements per map in the global batch "
        "to estimate a variance; the processes hold [1, %s]" % ", ".join(["0"] * (ranks - 1)),
        "residual": "ModuleError: SyncBatchNorm: a process refused its part of the synchronized step (rank 0: "
        "SyncBatchNorm: a residual does not combine with the synchronized modules yet)",
        "communicator": "ValueError: SyncBatchNorm: comm must be an mpi4py intra-communicator (mpi4py.MPI.Intracomm, "
        "such as MPI.COMM_WORLD); got 'COMM_WORLD'",
        "backwardGrad": "ModuleError: SyncBatchNorm: a process refused its part of the synchronized step (rank 0: "
        "SyncBatchNorm expects grad of shape (4, 5) and dtype float32 (its output's); got shape (4, 6) and dtype "
        "float32)",
    }
    for rank, (_, messages) in enumerate(results):
        for name, message in expected.items():
            assert messages[name] == message, "rank %d, %s" % (rank, name)
            if name + ".unchanged" in messages:
                assert messages[name + ".unchanged"] is True, "rank %d, %s changed the module" % (rank, name)
        assert messages["inStepAfterErrors"] is True


@pytest.mark.parametrize("ranks", sorted(LAYOUTS))
def test_recomputed_statistics_are_those_of_the_whole_set_of_every_rank(backend, tmp_path_factory, ranks):
    """`recomputeStatistics` with synchronized modules, each rank feeding its own rows (none on an empty rank) in
    batches of at most 2: both modules' statistics equal numpy's mean and var(ddof=1) of the union, the second module's
    input computed in float64 with the first module's final statistics; the same bits on every rank."""
    results = rankResults(backend.name, ranks, tmp_path_factory)
    values = results[0][0]
    x = np.concatenate(recomputeSet(LAYOUTS[ranks])).astype(np.float64)
    mean0, var0 = values["recompute.mean0"].ravel(), values["recompute.var0"].ravel()
    # NOTE: map 0 sits at 1e4: its float32 mean is rounded by up to MEAN_ROUNDING
    assertClose(mean0, x.mean(axis=0), 2.0 * MEAN_ROUNDING, "mean of module 0", rtol=1e-6)
    assertClose(var0, x.var(axis=0, ddof=1), 0.0, "var of module 0", rtol=1e-6 if backend.name == "cpu" else 1e-3)

    gain = values["recompute.scale0"].ravel() / np.sqrt(var0.astype(np.float64) + EPSILON)
    a = 1.0 / (1.0 + np.exp(-((x - mean0) * gain + values["recompute.bias0"].ravel())))
    z = a @ values["recompute.W"].astype(np.float64) + values["recompute.b"].astype(np.float64)
    assertClose(values["recompute.mean1"].ravel(), z.mean(axis=0), 1e-6, "mean of module 1", rtol=1e-5)
    assertClose(values["recompute.var1"].ravel(), z.var(axis=0, ddof=1), 0.0, "var of module 1", rtol=1e-5)
    assert int(values["recompute.numOfProps"]) == 0
    for other, _ in results[1:]:
        for key in ("mean0", "var0", "mean1", "var1"):
            assert np.array_equal(other["recompute.%s" % key], values["recompute.%s" % key]), key
