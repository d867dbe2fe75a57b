"""The experiment of Ioffe & Szegedy 2015 (arXiv 1502.03167, Figure 1a) on the handwritten digits of scikit-learn.

Two identical 64-100-100-100-10 sigmoid networks with small Gaussian initial weights, one with ``BatchNorm(100)``
after each hidden ``Linear``, train side by side on the same batches with MomentumSGD; after every epoch both are
evaluated on the held-out images. The paper's network and optimizer, scaled to the 8x8 digits (1500 training and 297
test images, the fixed split of `RunningStatistics.loadDigits`); pixels are scaled from 0..16 to [0, 1].
"""

import numpy as np

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Containers import Sequential
from PuzzleLib.Cost import CrossEntropy
from PuzzleLib.Examples.RunningStatistics import loadDigits
from PuzzleLib.Modules import Activation, BatchNorm, Linear
from PuzzleLib.Modules.Activation import sigmoid
from PuzzleLib.Modules.PopulationStatistics import recomputeStatistics
from PuzzleLib.Optimizers import MomentumSGD

HIDDEN = (100, 100, 100)
CLASSES = 10
WSCALE = 0.1

defaults = {"epochs": 15, "seed": 0, "batchsize": 60, "learnRate": 0.1, "momRate": 0.9, "wscale": WSCALE}


def buildNet(withBatchNorm, insize=64, hidden=HIDDEN, classes=CLASSES, wscale=WSCALE):
    """The paper's network: Linear (Gaussian weights of std `wscale`, zero bias) -> [BatchNorm] -> sigmoid per hidden
    layer, then a Linear to the class scores. Layers are named ``fc0``, ``bn0``, ``act0``, ..., so that the Linear
    layers of both variants have the same names."""
    net = Sequential(name="bnNet" if withBatchNorm else "plainNet")
    for i, size in enumerate(hidden):
        net.append(Linear(insize, size, wscale=wscale, initscheme="gaussian", name="fc%d" % i))
        if withBatchNorm:
            net.append(BatchNorm(size, name="bn%d" % i))
        net.append(Activation(sigmoid, name="act%d" % i))
        insize = size
    net.append(Linear(insize, classes, wscale=wscale, initscheme="gaussian", name="fc%d" % len(hidden)))
    return net


def buildPair(seed, wscale=WSCALE):
    """(plain, batchnorm) networks whose Linear layers start from the same weights, drawn after ``np.random.seed``."""
    np.random.seed(seed)
    plain = buildNet(False, wscale=wscale)
    bnNet = buildNet(True, wscale=wscale)

    bnVars = {name.split(".", 1)[1]: var for name, var in bnNet.namedVars().items()}
    for name, var in plain.namedVars().items():
        bnVars[name.split(".", 1)[1]].data.set(var.data.get())
    return plain, bnNet


def batchNormAttributes(net):
    """Summary of every BatchNorm of `net`: {name: {numOfProps, and the mean/min/max of mean, var, scale, bias}}."""
    result = {}
    for name, module in zip(net.names, net.modules, strict=True):
        if isinstance(module, BatchNorm):
            entry = {"numOfProps": module.numOfProps}
            for attr in ("mean", "var", "scale", "bias"):
                values = getattr(module, attr).get().astype(np.float64).ravel()
                entry[attr] = {"mean": float(values.mean()), "min": float(values.min()), "max": float(values.max())}
            result[name] = entry
    return result


def evaluate(net, cost, data, labels):
    """Test loss and accuracy in evaluation mode (BatchNorm uses its running statistics); back to training after."""
    net.evalMode()
    cost.resetAccumulator()
    cost.validate(net(data), labels)
    net.trainMode()
    return cost.getMeanError(), cost.getAccuracy()


def trainEpoch(runs, batches):
    """One pass of every run (network, optimizer, cost) over `batches` ((images, labels) on the host), the networks
    trained side by side on the same batches."""
    for images, labels in batches:
        data, labels = gpuarray.to_gpu(images.astype(np.float32)), gpuarray.to_gpu(labels.astype(np.int32))
        for net, optimizer, cost in runs.values():
            _, grad = cost(net(data), labels)
            net.backward(grad)
            optimizer.update()


def exactStatistics(run, trainSet, testData, testLabels):
    """The BatchNorm network's test loss and accuracy with the exact statistics of the training set
    (`recomputeStatistics`); the network keeps its running statistics."""
    # NOTE: the running statistics follow the weights of the last steps; the exact ones are those of the training set
    # under the final weights
    bnNet, _, bnCost = run
    running = [(module, module.mean.get(), module.var.get()) for module in bnNet if isinstance(module, BatchNorm)]
    recomputeStatistics(bnNet, trainSet)
    exactLoss, exactAccuracy = evaluate(bnNet, bnCost, testData, testLabels)
    for module, mean, var in running:
        module.mean.set(mean)
        module.var.set(var)
    return {"exactTestLoss": exactLoss, "exactTestAccuracy": exactAccuracy}


def runExperiment(
    epochs=defaults["epochs"],
    seed=defaults["seed"],
    batchsize=defaults["batchsize"],
    learnRate=defaults["learnRate"],
    momRate=defaults["momRate"],
    wscale=defaults["wscale"],
    progress=False,
    keepNets=False,
):
    """Trains both networks for `epochs` epochs on the same shuffled batches and returns every number.

    Args:
        epochs (int): passes over the 1500 training images. Default 15.
        seed (int): seeds the weights (numpy's global generator), the split and the shuffles. Default 0.
        batchsize (int): images per step; an incomplete last batch is dropped (1500 = 25 x 60). Default 60.
        learnRate, momRate (float): MomentumSGD's rates. Defaults 0.1 and 0.9.
        wscale (float): std of the initial Gaussian weights. Default 0.1.
        progress (bool): show a tqdm progress bar per epoch (on stderr).
        keepNets (bool): add the trained networks to the result (key ``nets``; not JSON-serializable), with their
            running statistics.

    Returns:
        dict with ``config``, ``networks`` ({"plain": ..., "batchnorm": ...}, each with per-epoch ``trainLoss``,
        ``trainAccuracy``, ``testLoss`` and ``testAccuracy``), ``batchNorm`` (`batchNormAttributes` at the end of
        training) and ``exactStatistics``: the BatchNorm network's final test loss and accuracy with its running
        statistics (``runningTestLoss``, ``runningTestAccuracy``) and after `recomputeStatistics` over the whole
        training set (``exactTestLoss``, ``exactTestAccuracy``).
    """
    if progress:
        from tqdm import tqdm

    trainX, trainY, testX, testY = loadDigits(seed)
    trainX, testX = trainX / 16.0, testX / 16.0
    testData, testLabels = gpuarray.to_gpu(testX.astype(np.float32)), gpuarray.to_gpu(testY.astype(np.int32))

    nets = dict(zip(("plain", "batchnorm"), buildPair(seed, wscale), strict=True))
    runs = {}
    for key, net in nets.items():
        optimizer = MomentumSGD(learnRate, momRate)
        optimizer.setupOn(net)
        runs[key] = (net, optimizer, CrossEntropy(name=key))

    history = {key: {"trainLoss": [], "trainAccuracy": [], "testLoss": [], "testAccuracy": []} for key in nets}
    rng = np.random.default_rng(seed)
    starts = range(0, len(trainX) - batchsize + 1, batchsize)

    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(trainX))
        for _, _, cost in runs.values():
            cost.resetAccumulator()
        batches = tqdm(starts, desc="epoch %d/%d" % (epoch, epochs), leave=False) if progress else starts
        trainEpoch(runs, [(trainX[order[k : k + batchsize]], trainY[order[k : k + batchsize]]) for k in batches])

        for key, (net, _, cost) in runs.items():
            record = history[key]
            record["trainLoss"].append(cost.getMeanError())
            record["trainAccuracy"].append(cost.getAccuracy())
            testLoss, testAccuracy = evaluate(net, cost, testData, testLabels)
            record["testLoss"].append(testLoss)
            record["testAccuracy"].append(testAccuracy)

    config = {"epochs": epochs, "seed": seed, "batchsize": batchsize, "learnRate": learnRate, "momRate": momRate}
    config.update({"wscale": wscale, "hidden": list(HIDDEN), "train": len(trainX), "test": len(testX)})
    result = {"config": config, "networks": history, "batchNorm": batchNormAttributes(nets["batchnorm"])}
    trainSet = [gpuarray.to_gpu(trainX[k : k + batchsize].astype(np.float32)) for k in range(0, len(trainX), batchsize)]
    result["exactStatistics"] = {
        "runningTestLoss": history["batchnorm"]["testLoss"][-1],
        "runningTestAccuracy": history["batchnorm"]["testAccuracy"][-1],
        **exactStatistics(runs["batchnorm"], trainSet, testData, testLabels),
    }
    if keepNets:
        result["nets"] = nets
    return result


def formatTable(result):
    """The per-epoch table of both networks (test accuracy, and train loss) as text."""
    plain, bn = result["networks"]["plain"], result["networks"]["batchnorm"]
    lines = ["%5s  %14s  %14s  %12s  %12s" % ("epoch", "plain test acc", "BN test acc", "plain loss", "BN loss")]
    for i in range(len(plain["testAccuracy"])):
        lines.append(
            "%5d  %13.1f%%  %13.1f%%  %12.4f  %12.4f"
            % (
                i + 1,
                100 * plain["testAccuracy"][i],
                100 * bn["testAccuracy"][i],
                plain["trainLoss"][i],
                bn["trainLoss"][i],
            )
        )
    return "\n".join(lines)


def formatBatchNorm(result):
    """The final BatchNorm attributes (per layer: numOfProps and mean [min, max] of mean, var, scale, bias)."""
    lines = ["%-5s %10s  %-26s %-26s %-26s %s" % ("layer", "numOfProps", "mean", "var", "scale", "bias")]
    for name, entry in result["batchNorm"].items():
        cells = [
            "%+.3f [%+.3f, %+.3f]" % (e["mean"], e["min"], e["max"])
            for e in (entry[a] for a in ("mean", "var", "scale", "bias"))
        ]
        lines.append(("%-5s %10d  %-26s %-26s %-26s %s" % (name, entry["numOfProps"], *cells)))
    return "\n".join(lines)


def formatExactStatistics(result):
    """One line: the BatchNorm network's final test accuracy and loss with running and with exact statistics."""
    exact = result["exactStatistics"]
    return (
        "BN network after training, test accuracy (loss): %.1f%% (%.4f) with its running statistics, %.1f%% (%.4f) "
        "with the exact statistics of the %d training images (recomputeStatistics)"
        % (
            100 * exact["runningTestAccuracy"], exact["runningTestLoss"], 100 * exact["exactTestAccuracy"],
            exact["exactTestLoss"], result["config"]["train"],
        )
    )


def plotCurves(result, path):
    """Saves the test-accuracy curves of both networks to `path` (PNG).

    Raises:
        RuntimeError: when matplotlib is not installed (``pip install "PuzzleLib[plot]"``).
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise RuntimeError('--plot needs matplotlib (%s); install it with: pip install "PuzzleLib[plot]"' % e) from None

    epochs = np.arange(1, len(result["networks"]["plain"]["testAccuracy"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 4))
    for key, label in (("batchnorm", "with BatchNorm"), ("plain", "without BatchNorm")):
        ax.plot(epochs, 100 * np.array(result["networks"][key]["testAccuracy"]), marker="o", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("64-100-100-100-10 sigmoid MLP on scikit-learn digits")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
