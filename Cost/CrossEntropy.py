"""CrossEntropy: softmax over classes and the cross-entropy against integer labels, with accuracy."""

import numpy as np

from PuzzleLib.Backend import ElementWise, gpuarray
from PuzzleLib.Modules.Module import ModuleError


class CrossEntropy:
    """Softmax cross-entropy for classification, as PuzzleLib's CrossEntropy: ``error, grad = cost(scores, labels)``.

    With p = softmax(scores) over each row and B the batch size::

        error = mean over rows of -log p[r, labels[r]]
        grad  = (onehot(labels) - p) / B        # the NEGATIVE gradient of `error` w.r.t. the scores

    PuzzleLib's sign convention (SPEC 4.4): a cost hands back the negated gradient, so ``net.backward(grad)`` followed
    by ``updateParams(learnRate)`` (or an optimizer's ``update()``) with a positive rate descends. Dividing by B makes
    the step size independent of the batch size. Accuracy counts a row as right when its first largest score is at the
    label (numpy's argmax rule, on both backends).

    The cost also accumulates over calls (``getMeanError()``, ``getAccuracy()``; ``resetAccumulator()`` clears), so an
    epoch's figures need no bookkeeping in the training loop. `validate` computes the same numbers and drops the
    gradient, for evaluation.

    Args:
        name (str or None): for messages.

    Attributes:
        error (float): the last call's mean loss; accuracy (float): its fraction of right rows; grad (GPUArray): its
        gradient (None after `validate`).

    Shape:
        scores: (batch, classes), a float dtype of the backend (float32; float64 too on the CPU backend);
        labels: (batch,) int32 in [0, classes); grad: like scores.

    Raises:
        ModuleError: for arrays that are not GPUArrays or live on two backends, shapes that do not match, a wrong
            dtype, an empty batch or labels outside [0, classes); nothing is accumulated then.

    Example:
        >>> cost = CrossEntropy()
        >>> error, grad = cost(net(data), gpuarray.to_gpu(labels.astype(np.int32)))
        >>> net.backward(grad); optimizer.update()
    """

    def __init__(self, name=None):
        self.name = name
        self.error, self.accuracy, self.grad = None, None, None
        self.resetAccumulator()

    def describe(self):
        return type(self).__name__ if self.name is None else "%s %r" % (type(self).__name__, self.name)

    def resetAccumulator(self):
        """Clears the sums behind `getMeanError` and `getAccuracy`."""
        self.accumErr, self.accumCorrect, self.accumCount = 0.0, 0, 0

    def getMeanError(self):
        """Mean loss per sample over every call since the last `resetAccumulator` (nan when none)."""
        return self.accumErr / self.accumCount if self.accumCount else float("nan")

    def getAccuracy(self):
        """Fraction of right samples over every call since the last `resetAccumulator` (nan when none)."""
        return self.accumCorrect / self.accumCount if self.accumCount else float("nan")

    def __call__(self, scores, labels):
        """Returns ``(error, grad)`` for this batch (and accumulates)."""
        grad = self.compute(scores, labels)
        self.grad = grad
        return self.error, grad

    def validate(self, scores, labels):
        """Returns this batch's mean loss (and accumulates loss and accuracy); no gradient is kept."""
        self.compute(scores, labels)
        self.grad = None
        return self.error

    def compute(self, scores, labels):
        self.checkInput(scores, labels)
        try:
            grad, lossSum, correct = ElementWise.softmaxCrossEntropy(scores, labels)
        except ValueError as e:
            raise ModuleError("%s: %s" % (self.describe(), e)) from None

        batch = scores.shape[0]
        self.error, self.accuracy = lossSum / batch, correct / batch
        self.accumErr += lossSum
        self.accumCorrect += correct
        self.accumCount += batch
        return grad

    def checkInput(self, scores, labels):
        for what, ary in (("scores", scores), ("labels", labels)):
            if not isinstance(ary, gpuarray.GPUArray):
                raise ModuleError("%s expects %s as a GPUArray; got %s" % (self.describe(), what, type(ary).__name__))
        if labels.backend is not scores.backend:
            raise ModuleError(
                "%s expects scores and labels on one backend; got a %s and a %s array"
                % (self.describe(), scores.backend.name, labels.backend.name)
            )
        if scores.ndim != 2 or scores.shape[0] == 0:
            raise ModuleError("%s expects 2D scores (batch, classes); got shape %s" % (self.describe(), scores.shape))
        dataTypes = ElementWise.dataTypes(scores.backend)
        if scores.dtype not in dataTypes:
            raise ModuleError(
                "%s expects scores of dtype %s; got %s"
                % (self.describe(), " or ".join(str(t) for t in dataTypes), scores.dtype)
            )
        if labels.shape != (scores.shape[0],) or labels.dtype != np.int32:
            raise ModuleError(
                "%s expects labels of shape %s and dtype int32; got shape %s and dtype %s"
                % (self.describe(), (scores.shape[0],), labels.shape, labels.dtype)
            )


def unittest():
    np.random.seed(0)
    hostScores = (np.random.randn(6, 4) * 3).astype(np.float32)
    hostLabels = np.array([0, 1, 2, 3, 1, 2], dtype=np.int32)

    s = hostScores.astype(np.float64)
    prob = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    rows = np.arange(6)
    refError = -np.log(prob[rows, hostLabels]).mean()
    onehot = np.eye(4)[hostLabels]

    cost = CrossEntropy()
    error, grad = cost(gpuarray.to_gpu(hostScores), gpuarray.to_gpu(hostLabels))
    assert abs(error - refError) < 1e-5
    assert np.allclose(grad.get(), (onehot - prob) / 6, atol=1e-6)
    assert cost.accuracy == np.mean(s.argmax(axis=1) == hostLabels)

    try:
        cost(gpuarray.to_gpu(hostScores), gpuarray.to_gpu(np.array([0, 1, 2, 3, 4, 0], dtype=np.int32)))
    except ModuleError as e:
        assert "[0, 4)" in str(e)
    else:
        raise AssertionError("CrossEntropy accepted the label 4 for 4 classes")
    assert cost.accumCount == 6


if __name__ == "__main__":
    unittest()
