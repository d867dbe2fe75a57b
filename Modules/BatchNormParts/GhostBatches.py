"""GhostBatches: ghost batch normalization (Hoffer, Hubara & Soudry 2017, "Train longer, generalize better", arXiv
1705.08741, Algorithm 1; Keras's ``virtual_batch_size``): in training, the batch is cut along axis 0 into ghost batches
of `virtualBatch` samples (the last holds the rest), each normalized with its own statistics by the part inside (plain
batch normalization or Batch Renormalization), each moving the running statistics in turn.

Combines with: Batch Renormalization (each ghost batch corrected on its own). Not yet with a fused activation (a
ValueError at construction), a residual or in-place training (a `ModuleError` at the call). Evaluation is unchanged.
"""

from PuzzleLib.Backend import Blas
from PuzzleLib.Modules.ModuleError import ModuleError


class GhostBatches:
    """The training part `inner` (a `PlainTraining` or `RenormTraining`) once per ghost batch of `virtualBatch`
    samples, into the rows of one output and one input gradient; the per-ghost results (``bn.savemean`` and the rest)
    stacked on a new first axis, ghost g in row g; the parameter gradients summed over the ghosts."""

    feature = "virtualBatch"
    activation = None
    # NOTE: one kernel per ghost batch: snapshot first
    kernelSaves = False

    def __init__(self, inner, virtualBatch):
        self.inner, self.virtualBatch = inner, virtualBatch

    def ghosts(self, batch):
        """The (start, stop) rows of each ghost batch of a batch of `batch` samples."""
        size = self.virtualBatch
        return [(start, min(start + size, batch)) for start in range(0, batch, size)]

    def output(self, bn, data):
        return self.inner.output(bn, data)

    def train(self, bn, data, out, residual):
        ghosts = self.ghosts(data.shape[0])
        stacked = None
        for g, (start, stop) in enumerate(ghosts):
            self.inner.train(bn, data[start:stop], out[start:stop], None)
            perGhost = self.inner.results(bn)
            if stacked is None:
                arrays = data.backend.gpuarray
                stacked = [arrays.empty((len(ghosts),) + ary.shape, ary.dtype) for ary in perGhost]
            for target, ary in zip(stacked, perGhost, strict=True):
                target[g].set(ary)
        self.inner.keepResults(bn, stacked)

    def results(self, bn):
        return self.inner.results(bn)

    def inputGradient(self, bn, grad, updGrad):
        return self.inner.inputGradient(bn, grad, updGrad)

    def backward(self, bn, data, grad, ingrad, sums, results):
        totals = None
        for g, (start, stop) in enumerate(self.ghosts(data.shape[0])):
            # NOTE: the first ghost writes into the module's sums, the others into their own, added to them
            ghostSums = sums if g == 0 else tuple(ary.backend.gpuarray.empty(ary.shape, ary.dtype) for ary in sums)
            rows = None if ingrad is None else ingrad[start:stop]
            self.inner.backward(bn, data[start:stop], grad[start:stop], rows, ghostSums, [ary[g] for ary in results])
            if totals is None:
                totals = ghostSums
            else:
                for total, part in zip(totals, ghostSums, strict=True):
                    Blas.toVectorAddVector(total, part)

    def checkBatch(self, bn, shape):
        """Every ghost batch needs 2 elements per map, the last one (the rest of the batch) included."""
        self.inner.checkBatch(bn, shape)
        start, stop = self.ghosts(shape[0])[-1]
        ghostM = bn.elementsPerMap(shape) // shape[0] * (stop - start)
        if ghostM < 2:
            raise ModuleError(
                "%s: training with virtualBatch=%d needs at least 2 elements per map in every ghost batch; the last of "
                "data of shape %s holds %d sample(s), %d element(s) per map"
                % (bn.describe(), self.virtualBatch, shape, stop - start, ghostM)
            )

    def checkInPlace(self, bn):
        raise ModuleError("%s: in-place training does not combine with %s yet" % (bn.describe(), self.feature))

    def checkResidual(self, bn):
        raise ModuleError("%s: a residual does not combine with %s yet" % (bn.describe(), self.feature))

    def stateArrays(self, bn):
        return self.inner.stateArrays(bn)
