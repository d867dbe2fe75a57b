"""Running statistics that survive bad batches (``skipNonFinite``): a map whose batch mean or variance is not finite
keeps its running statistics, is counted, and the module warns once; ``skipNonFinite=False`` is PyTorch's update. On
every backend, the other maps against the float64 reference; `Dnn.batchNormNd`'s ``skipped`` argument and its refusals.
"""

import warnings

import numpy as np
import pytest
from mpi4py import MPI

from PuzzleLib.Backend import Dnn, gpuarray
from PuzzleLib.Modules import BatchNorm, BatchNorm2D, SyncBatchNorm2D
from PuzzleLib.TestLib import Reference

SHAPE = (4, 3, 5, 6)
AXES = (0, 2, 3)


def poisoned(rng):
    """Data of SHAPE with a NaN in map 1 and an inf in map 2; map 0 is finite."""
    host = rng.normal(1.0, 2.0, SHAPE).astype(np.float32)
    host[3, 1, 4, 5], host[0, 2, 0, 0] = np.nan, np.inf
    return host


def forwardWarnings(bn, host):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = bn(gpuarray.to_gpu(host)).get()
    return out, [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]


@pytest.mark.parametrize("moduleType", [BatchNorm2D, SyncBatchNorm2D], ids=["BatchNorm2D", "SyncBatchNorm2D"])
def test_a_bad_batch_leaves_its_maps_running_statistics_and_warns_once(moduleType):
    rng = np.random.default_rng(2)
    bn = moduleType(3, comm=MPI.COMM_SELF) if moduleType is SyncBatchNorm2D else moduleType(3)
    first = rng.normal(-1.0, 3.0, SHAPE).astype(np.float32)
    bn(gpuarray.to_gpu(first))
    mean, var = bn.mean.get(), bn.var.get()
    assert bn.skippedUpdates == 0

    host = poisoned(rng)
    out, messages = forwardWarnings(bn, host)

    # NOTE: map 0 takes the second batch's update (factor 1/2), maps 1 and 2 keep the first batch's statistics
    ref = Reference.batchNormTrain(host[:, :1], bn.scale.get()[:, :1], bn.bias.get()[:, :1], AXES, bn.epsilon)
    newMean, newVar = Reference.runningUpdate(mean[:, :1], var[:, :1], ref.mean, ref.var, ref.m, 0.5)
    np.testing.assert_allclose(out[:, :1], ref.out, atol=1e-5)
    np.testing.assert_allclose(bn.mean.get()[:, :1], newMean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var.get()[:, :1], newVar, rtol=1e-5)
    assert np.array_equal(bn.mean.get()[:, 1:], mean[:, 1:]) and np.array_equal(bn.var.get()[:, 1:], var[:, 1:])
    assert bn.skippedUpdates == 2 and bn.skipCounts.get().ravel().tolist() == [0.0, 1.0, 1.0]
    assert bn.numOfProps == 2
    assert len(messages) == 1 and "non-finite mean or variance in 2 of 3 maps" in messages[0], messages

    # NOTE: the output is what the formula gives: NaN throughout the poisoned maps
    assert np.isnan(out[:, 1:]).all()

    _, messages = forwardWarnings(bn, poisoned(rng))
    assert messages == [] and bn.skippedUpdates == 4
    assert np.isfinite(bn.mean.get()).all() and np.isfinite(bn.var.get()).all()

    bn.evalMode()
    out = bn(gpuarray.to_gpu(first)).get()
    assert np.isfinite(out).all()


def test_without_the_guard_a_bad_batch_poisons_the_running_statistics_as_in_pytorch():
    bn = BatchNorm2D(3, skipNonFinite=False)
    _, messages = forwardWarnings(bn, poisoned(np.random.default_rng(2)))
    assert messages == [] and bn.skippedUpdates == 0 and bn.skipCounts is None
    assert np.isfinite(bn.mean.get()[:, 0]).all()
    assert not np.isfinite(bn.var.get()[:, 1:]).any()


def test_per_activation_module_counts_each_map():
    bn = BatchNorm(5)
    host = np.random.default_rng(3).normal(size=(8, 5)).astype(np.float32)
    host[2, 4] = -np.inf
    with pytest.warns(RuntimeWarning, match="in 1 of 5 maps"):
        bn(gpuarray.to_gpu(host))
    assert bn.skipCounts.get().ravel().tolist() == [0.0, 0.0, 0.0, 0.0, 1.0]
    assert bn.mean.get().ravel()[4] == 0.0 and bn.var.get().ravel()[4] == 1.0


@pytest.mark.parametrize("value", ["yes", 1, None])
def test_skip_non_finite_must_be_a_bool(value):
    with pytest.raises(ValueError, match="BatchNorm2D: skipNonFinite must be True or False; got %r" % (value,)):
        BatchNorm2D(3, skipNonFinite=value)


def test_dnn_counter_is_refused_where_it_counts_nothing_or_overlaps():
    data = gpuarray.to_gpu(np.random.default_rng(1).normal(size=(4, 3, 2, 2)).astype(np.float32))
    scale, bias, mean, var = (gpuarray.to_gpu(np.full((1, 3, 1, 1), v, np.float32)) for v in (1.0, 0.0, 0.0, 1.0))
    skipped = gpuarray.zeros((1, 3, 1, 1), np.float32)
    with pytest.raises(ValueError, match="skipped counts the running updates a training forward skips"):
        Dnn.batchNormNd(data, scale, bias, mean, var, test=True, skipped=skipped)
    with pytest.raises(ValueError, match="skipped counts the running updates"):
        Dnn.batchNormNd(data, scale, bias, None, None, skipped=skipped)
    with pytest.raises(ValueError, match="skipped must not share memory with mean"):
        Dnn.batchNormNd(data, scale, bias, mean, var, skipped=mean)
    with pytest.raises(ValueError, match="skipped"):
        Dnn.batchNormNd(data, scale, bias, mean, var, skipped=gpuarray.zeros((1, 3, 1, 1), np.float64))
    assert mean.get().ravel().tolist() == [0.0] * 3 and var.get().ravel().tolist() == [1.0] * 3
    assert skipped.get().ravel().tolist() == [0.0] * 3
