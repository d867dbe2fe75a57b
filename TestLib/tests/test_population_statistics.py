"""`recomputeStatistics` ("precise BN") against numpy's mean and var(ddof=1) of the whole set in float64, on every
backend: batches of unequal sizes, spatial, per-activation and channels-last modules, modules that see the final
statistics of the modules before them; and what it must leave alone (parameters, counters, modes, and everything when it
fails). Several processes are tested in test_sync_batchnorm.py."""

import numpy as np
import pytest

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Containers import Sequential
from PuzzleLib.Modules import Activation, BatchNorm, BatchNorm2D, Linear, ModuleError
from PuzzleLib.Modules.Activation import relu
from PuzzleLib.Modules.PopulationStatistics import recomputeStatistics
from PuzzleLib.TestLib import Reference

SIZES = (1, 6, 3, 10)


def hostSet(sample, sizes=SIZES):
    """Batches of `sizes` samples of shape `sample`, each batch at its own mean (batch k around 4k): the mean of their
    variances is far from the variance of the whole set."""
    rng = np.random.default_rng(3)
    return [(rng.standard_normal((size,) + sample) * (1.0 + k) + 4.0 * k).astype(np.float32)
            for k, size in enumerate(sizes)]


def assertStatistics(module, activations, axes):
    """The module's mean and var against numpy's over `activations` (float64, the whole set), float32 precision."""
    mean = activations.mean(axis=axes, keepdims=True)
    var = activations.var(axis=axes, ddof=1, keepdims=True)
    np.testing.assert_allclose(module.mean.get(), mean, rtol=2e-6, atol=1e-6)
    np.testing.assert_allclose(module.var.get(), var, rtol=2e-6)


def normalized(module, x, axes):
    """What `module` gives in evaluation (`Reference.batchNormEval`), in float64 from its float32 arrays."""
    scale, bias, mean, var = (ary.get() for ary in (module.scale, module.bias, module.mean, module.var))
    return Reference.batchNormEval(x, scale, bias, mean, var, module.epsilon, axes)


@pytest.mark.parametrize("axis", [1, -1], ids=["channels_first", "channels_last"])
def test_spatial_modules_get_the_statistics_of_the_whole_set(axis):
    net = Sequential()
    bn0 = net.append(BatchNorm2D(3, axis=axis))
    net.append(Activation(relu))
    bn1 = net.append(BatchNorm2D(3, axis=axis))
    sample = (3, 4, 5) if axis == 1 else (4, 5, 3)
    host = hostSet(sample)
    for bn in (bn0, bn1):
        bn.bias.set((np.random.randn(*bn.bias.shape) * 0.5).astype(np.float32))

    recomputeStatistics(net, [gpuarray.to_gpu(x) for x in host])

    axes = (0, 2, 3) if axis == 1 else (0, 1, 2)
    x = np.concatenate(host).astype(np.float64)
    assertStatistics(bn0, x, axes)
    assertStatistics(bn1, np.maximum(normalized(bn0, x, axes), 0.0), axes)

    # NOTE: what averaging the batches' variances (fvcore's precise BN) would give is far from it
    averaged = np.mean([v.astype(np.float64).var(axis=axes, ddof=1, keepdims=True) for v in host], axis=0)
    assert np.abs(averaged / bn0.var.get() - 1.0).min() > 0.5


def test_per_activation_modules_after_linear_layers():
    net = Sequential()
    fc0, bn0 = net.append(Linear(6, 4)), net.append(BatchNorm(4))
    net.append(Activation(relu))
    fc1, bn1 = net.append(Linear(4, 3)), net.append(BatchNorm(3))
    host = hostSet((6,))

    recomputeStatistics(net, [gpuarray.to_gpu(x) for x in host])

    x = np.concatenate(host).astype(np.float64)
    h = x @ fc0.W.get() + fc0.b.get()
    assertStatistics(bn0, h.reshape(-1, 4, 1, 1), (0, 2, 3))
    z = np.maximum(normalized(bn0, h.reshape(-1, 4, 1, 1), (0, 2, 3)).reshape(-1, 4), 0.0) @ fc1.W.get() + fc1.b.get()
    assertStatistics(bn1, z.reshape(-1, 3, 1, 1), (0, 2, 3))


def test_parameters_counters_and_modes_are_left_as_they_were():
    net = Sequential()
    bn0 = net.append(BatchNorm(4))
    fc = net.append(Linear(4, 4))
    bn1 = net.append(BatchNorm(4))
    host = hostSet((4,))
    net(gpuarray.to_gpu(host[1]))
    bn1.evalMode()
    before = {key: var.data.get() for key, var in net.namedVars().items()}

    returned = recomputeStatistics(net, host)

    assert returned == [bn0, bn1]
    assert (net.train, bn0.train, fc.train, bn1.train) == (True, True, True, False)
    assert (bn0.numOfProps, bn1.numOfProps) == (1, 1)
    for key, var in net.namedVars().items():
        assert np.array_equal(var.data.get(), before[key]), key
    # NOTE: no forward hook is left behind
    assert bn0.forwardHooks == () and bn1.forwardHooks == ()


class TwoPasses:
    """A re-iterable set whose second pass ends with a batch of the wrong width."""

    def __init__(self, batches, bad):
        self.batches, self.bad, self.passes = batches, bad, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches + ([self.bad] if self.passes == 2 else []))


def test_a_failing_pass_puts_back_every_statistic_already_set():
    net = Sequential()
    bn0 = net.append(BatchNorm(4))
    bn1 = net.append(BatchNorm(4))
    host = hostSet((4,))
    before = [ary.get() for ary in (bn0.mean, bn0.var, bn1.mean, bn1.var)]
    batches = TwoPasses([gpuarray.to_gpu(x) for x in host], gpuarray.zeros((2, 5), np.float32))

    with pytest.raises(ModuleError, match=r"BatchNorm: data has 5 features \(expected: 4\)"):
        recomputeStatistics(net, batches)

    assert batches.passes == 2 and net.train and bn0.train
    for ary, saved in zip((bn0.mean, bn0.var, bn1.mean, bn1.var), before, strict=True):
        assert np.array_equal(ary.get(), saved)


def test_a_one_shot_iterator_is_refused_for_several_modules_and_taken_for_one():
    net = Sequential()
    net.append(BatchNorm(4))
    host = hostSet((4,))
    recomputeStatistics(net, (gpuarray.to_gpu(x) for x in host))
    assertStatistics(net[0], np.concatenate(host).astype(np.float64).reshape(-1, 4, 1, 1), (0, 2, 3))

    net.append(BatchNorm(4))
    before = net[1].var.get()
    with pytest.raises(ValueError, match="one-shot iterator .generator.*2 batch-norm modules"):
        recomputeStatistics(net, (x for x in host))
    assert np.array_equal(net[1].var.get(), before)


def test_a_set_of_one_element_per_map_is_refused():
    net = Sequential()
    bn = net.append(BatchNorm(4))
    before = bn.var.get()
    with pytest.raises(ModuleError, match="received 1 elements per map over the set; an unbiased variance needs"):
        recomputeStatistics(net, [gpuarray.to_gpu(np.ones((1, 4), np.float32))])
    assert np.array_equal(bn.var.get(), before) and bn.train


def test_progress_bar_counts_every_batch_of_every_pass(capsys):
    net = Sequential()
    net.append(BatchNorm(4))
    net.append(BatchNorm(4))
    recomputeStatistics(net, hostSet((4,)), progress=True)
    last = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("recomputeStatistics") and "8/8" in last
