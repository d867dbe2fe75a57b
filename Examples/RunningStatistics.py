"""End-to-end demonstration on real data: the seed example, then running statistics on handwritten digits.

The digits set ships with scikit-learn (1797 images of 8x8 pixels, values 0..16), so nothing is downloaded.
"""

import numpy as np

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Modules import BatchNorm

TEST_SIZE = 297


def loadDigits(seed=0):
    """Returns (trainX, trainY, testX, testY): a fixed shuffle of the digits split 1500 / 297, images as float32 rows
    of 64 pixels, labels as int32."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    images, labels = digits.data[order].astype(np.float32), digits.target[order].astype(np.int32)
    return images[:-TEST_SIZE], labels[:-TEST_SIZE], images[-TEST_SIZE:], labels[-TEST_SIZE:]


def seedExample(out=print):
    """The seed's example: BatchNorm(6) on arange(18) as (3, 6); mean 6..11, unbiased variance 36."""
    data = gpuarray.to_gpu(np.arange(18).reshape(3, 6).astype(np.float32))
    bn = BatchNorm(6)
    bn(data)

    out("data:\n%s" % data)
    for name in ("mean", "var", "scale", "bias"):
        ary = getattr(bn, name)
        out("bn.%s, shape %s: %s" % (name, ary.shape, np.array2string(ary.get().ravel(), precision=7)))
    out("bn.data:\n%s" % bn.data)
    return bn


def runningStatistics(batchsize=60, out=print):
    """Streams the training digits through BatchNorm(64) in training mode and reports, per batch, how far the running
    mean and variance are from the statistics of the data seen so far and of the whole training set; then normalizes
    the held-out images in evaluation mode.

    Returns a dict of the measured errors (per batch) and held-out statistics.
    """
    trainX, _, testX, _ = loadDigits()
    bn = BatchNorm(64)
    pixelMean, pixelVar = trainX.astype(np.float64).mean(axis=0), trainX.astype(np.float64).var(axis=0, ddof=1)
    varying = pixelVar > 0

    out("streaming %d training images of 64 pixels through BatchNorm(64), batches of %d" % (len(trainX), batchsize))
    out("factor = max(initFactor / n, minFactor) = max(1 / n, 0.1): batch n weighs 1/n for n <= 10, so the running")
    out("mean is exactly the mean of all images seen so far during the first ten batches; after that it is an")
    out("exponential average that weighs recent batches by 0.1.\n")
    out("%5s %7s %22s %22s %22s" % ("batch", "factor", "|mean - seen mean|", "|mean - set mean|", "rel. var error"))

    history = []
    for n, start in enumerate(range(0, len(trainX) - batchsize + 1, batchsize), start=1):
        factor = max(bn.initFactor / (bn.numOfProps + 1), bn.minFactor)
        bn(gpuarray.to_gpu(trainX[start : start + batchsize]))

        mean, var = bn.mean.get().ravel().astype(np.float64), bn.var.get().ravel().astype(np.float64)
        seenError = np.abs(mean - trainX[: start + batchsize].astype(np.float64).mean(axis=0)).max()
        setError = np.abs(mean - pixelMean).max()
        varError = np.median(np.abs(var[varying] - pixelVar[varying]) / pixelVar[varying])
        history.append(
            {
                "batch": n,
                "factor": factor,
                "seenMeanError": seenError,
                "setMeanError": setError,
                "relVarError": varError,
            }
        )
        out("%5d %7.4f %22.3e %22.3e %22.3e" % (n, factor, seenError, setError, varError))

    bn.evalMode()
    normalized = bn(gpuarray.to_gpu(testX)).get().astype(np.float64)
    heldMean = np.abs(normalized[:, varying].mean(axis=0))
    heldStd = normalized[:, varying].std(axis=0)

    out("\nheld-out %d images in evaluation mode (running statistics, nothing updated):" % len(testX))
    out(
        "  per-pixel mean of the output: median |mean| %.3f; per-pixel std: median %.3f (ideal 0 and 1)"
        % (np.median(heldMean), np.median(heldStd))
    )
    return {
        "history": history,
        "heldOutMedianAbsMean": float(np.median(heldMean)),
        "heldOutMedianStd": float(np.median(heldStd)),
    }
