"""The main job's experiment (Ioffe & Szegedy 2015, Figure 1, on scikit-learn's digits): BatchNorm must make the same
sigmoid network learn much faster, and the reported accuracies must be what the trained networks really score.
Short runs of the same code path as ``python -m PuzzleLib``."""

import json

import numpy as np
import pytest

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Containers import Sequential
from PuzzleLib.Examples import DigitsExperiment
from PuzzleLib.Examples.RunningStatistics import loadDigits
from PuzzleLib.Modules import Activation, BatchNorm, Linear
from PuzzleLib.Modules.PopulationStatistics import recomputeStatistics

pytest.importorskip("sklearn", reason="the digits set ships with scikit-learn (extra 'test')")


@pytest.fixture(scope="module")
def fiveEpochs():
    return DigitsExperiment.runExperiment(epochs=5, keepNets=True)


def referenceScores(net, x):
    """A float64 numpy forward of a trained network in evaluation mode, from its parameters alone."""
    h = x.astype(np.float64)
    for module in net:
        if isinstance(module, Linear):
            h = h @ module.W.get().astype(np.float64) + module.b.get().astype(np.float64)
        elif isinstance(module, BatchNorm):
            mean, var = module.mean.get().ravel(), module.var.get().ravel()
            scale, bias = module.scale.get().ravel(), module.bias.get().ravel()
            h = (h - mean) / np.sqrt(var + module.epsilon) * scale + bias
        elif isinstance(module, Activation):
            h = 1.0 / (1.0 + np.exp(-h))
        else:
            raise AssertionError("unexpected module %r" % module)
    return h


def test_batchnorm_reaches_93_percent_within_5_epochs_with_defaults(fiveEpochs):
    accuracy = fiveEpochs["networks"]["batchnorm"]["testAccuracy"]
    assert len(accuracy) == 5
    assert max(accuracy) >= 0.93, accuracy


def test_batchnorm_gives_a_clear_gain(fiveEpochs):
    plain = np.array(fiveEpochs["networks"]["plain"]["testAccuracy"])
    bn = np.array(fiveEpochs["networks"]["batchnorm"]["testAccuracy"])
    assert np.all(bn[1:] > plain[1:] + 0.3), (plain, bn)
    assert fiveEpochs["networks"]["batchnorm"]["trainLoss"][-1] < 0.5 * fiveEpochs["networks"]["plain"]["trainLoss"][-1]


def test_reported_accuracy_is_what_the_networks_score(fiveEpochs):
    _, _, testX, testY = loadDigits(0)
    for key, net in fiveEpochs["nets"].items():
        scores = referenceScores(net, testX / 16.0)
        accuracy = np.mean(np.argmax(scores, axis=1) == testY)
        assert abs(accuracy - fiveEpochs["networks"][key]["testAccuracy"][-1]) < 1.5 / len(testY), key
    exact = fiveEpochs["exactStatistics"]
    assert exact["runningTestAccuracy"] == fiveEpochs["networks"]["batchnorm"]["testAccuracy"][-1]


def test_reported_exact_accuracy_is_what_the_network_scores_with_the_training_set_statistics(fiveEpochs):
    """The kept network (running statistics) given the exact statistics of the 1500 training images: the first
    BatchNorm's are numpy's mean and var(ddof=1) of its input, and the network scores the reported exact accuracy."""
    trainX, _, testX, testY = loadDigits(0)
    images = (trainX / 16.0).astype(np.float32)
    net = fiveEpochs["nets"]["batchnorm"]
    running = [(module, module.mean.get(), module.var.get()) for module in net if isinstance(module, BatchNorm)]
    try:
        recomputeStatistics(net, [gpuarray.to_gpu(images[k : k + 60]) for k in range(0, len(images), 60)])
        fc0, bn0 = net["fc0"], net["bn0"]
        h = images.astype(np.float64) @ fc0.W.get().astype(np.float64) + fc0.b.get().astype(np.float64)
        np.testing.assert_allclose(bn0.mean.get().ravel(), h.mean(axis=0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn0.var.get().ravel(), h.var(axis=0, ddof=1), rtol=1e-5)
        assert not np.allclose(bn0.var.get(), running[0][2], rtol=1e-3)

        accuracy = np.mean(np.argmax(referenceScores(net, testX / 16.0), axis=1) == testY)
        assert abs(accuracy - fiveEpochs["exactStatistics"]["exactTestAccuracy"]) < 1.5 / len(testY)
    finally:
        for module, mean, var in running:
            module.mean.set(mean)
            module.var.set(var)


def test_both_networks_start_identical_and_batchnorm_state_is_consistent(fiveEpochs):
    plain, bn = DigitsExperiment.buildPair(seed=3)
    plainVars = {key.split(".", 1)[1]: var.data.get() for key, var in plain.namedVars().items()}
    bnVars = {key.split(".", 1)[1]: var.data.get() for key, var in bn.namedVars().items()}
    assert all(np.array_equal(bnVars[key], value) for key, value in plainVars.items())
    assert abs(np.std(plainVars["fc0.W"]) - DigitsExperiment.WSCALE) < 0.01

    batches = 5 * (1500 // 60)
    for name, entry in fiveEpochs["batchNorm"].items():
        assert entry["numOfProps"] == batches, name
        assert entry["var"]["min"] > 0, name


def test_main_job_is_deterministic_and_writes_json(tmp_path, capsys):
    from PuzzleLib.__main__ import main

    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        main(["--epochs", "2", "--skip-demo", "--seed", "1", "--json", str(path)])
    first, second = (json.loads(path.read_text()) for path in paths)
    first["config"].pop("seconds")
    second["config"].pop("seconds")
    assert first == second
    for key in ("plain", "batchnorm"):
        assert len(first["networks"][key]["testAccuracy"]) == 2 and len(first["networks"][key]["trainLoss"]) == 2
    out = capsys.readouterr().out
    assert "BN test acc" in out and "with the exact statistics of the 1500 training images" in out


def test_plot_without_matplotlib_is_a_clear_error(monkeypatch, tmp_path, capsys):
    import sys

    from PuzzleLib.__main__ import main

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(SystemExit) as info:
        main(["--epochs", "1", "--skip-demo", "--plot", str(tmp_path / "x.png")])
    assert info.value.code == 2 and "PuzzleLib[plot]" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match=r"PuzzleLib\[plot\]"):
        DigitsExperiment.plotCurves({"networks": {}}, str(tmp_path / "x.png"))


def test_build_net_layout():
    net = DigitsExperiment.buildNet(True)
    assert isinstance(net, Sequential)
    assert net.names == ["fc0", "bn0", "act0", "fc1", "bn1", "act1", "fc2", "bn2", "act2", "fc3"]
    assert [m.outsize for m in net if isinstance(m, Linear)] == [100, 100, 100, 10]
