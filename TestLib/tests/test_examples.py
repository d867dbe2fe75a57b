"""The seed example and the running-statistics demonstration on the digits data set."""

import numpy as np
import pytest

from PuzzleLib.Examples import RunningStatistics
from PuzzleLib.TestLib import Reference


def test_seed_example_prints_the_documented_values():
    lines = []
    bn = RunningStatistics.seedExample(out=lines.append)
    host = np.arange(18).reshape(3, 6).astype(np.float64)

    for name in ("mean", "var", "scale", "bias"):
        assert getattr(bn, name).shape == (1, 6, 1, 1)
    assert np.array_equal(bn.mean.get().ravel(), np.arange(6, 12, dtype=np.float32))
    assert np.array_equal(bn.var.get().ravel(), np.full(6, 36.0, np.float32))
    ref = Reference.batchNormTrain(host, bn.scale.get().reshape(1, 6), np.zeros((1, 6)), (0,), bn.epsilon)
    np.testing.assert_allclose(bn.data.get(), ref.out, rtol=1e-6)
    assert any("bn.mean, shape (1, 6, 1, 1): [ 6.  7.  8.  9. 10. 11.]" in line for line in lines)


@pytest.mark.backendIndependent
def test_digits_split_is_fixed():
    trainX, trainY, testX, testY = RunningStatistics.loadDigits()
    assert trainX.shape == (1500, 64) and testX.shape == (297, 64) and trainX.dtype == np.float32
    again = RunningStatistics.loadDigits()
    assert np.array_equal(trainX, again[0]) and np.array_equal(testY, again[3])
    assert 0 <= trainX.min() and trainX.max() <= 16 and set(np.unique(trainY)) == set(range(10))


def test_running_statistics_follow_the_cumulative_rule_then_average_exponentially():
    result = RunningStatistics.runningStatistics(out=lambda *args: None)
    history = result["history"]
    assert len(history) == 25
    assert [round(h["factor"], 6) for h in history[:10]] == [round(1 / n, 6) for n in range(1, 11)]
    assert all(h["seenMeanError"] < 1e-4 for h in history[:10])
    assert all(h["factor"] == 0.1 for h in history[10:])
    assert max(h["seenMeanError"] for h in history[10:]) > 1e-3
    assert history[-1]["setMeanError"] < history[0]["setMeanError"] / 4
    assert result["heldOutMedianAbsMean"] < 0.2 and 0.8 < result["heldOutMedianStd"] < 1.2
