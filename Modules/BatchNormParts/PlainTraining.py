"""PlainTraining: batch normalization's training forward and backward (Ioffe & Szegedy 2015, arXiv 1502.03167,
Algorithm 1 and section 3), the part every other training part of `Modules.BatchNormParts` starts from.

Combines with: a residual; a fused activation and in-place training through its subclasses (`FusedTraining`,
`InPlaceTraining`); ghost batches (`GhostBatches` holds it).
"""

from PuzzleLib.Backend.Contract import Backward, TrainForward
from PuzzleLib.Modules.ModuleError import ModuleError


class PlainTraining:
    """The training step of a batch-norm module: the batch's statistics normalize, the running ones move by the
    module's factor (guarded against non-finite batch statistics by the module's ``skipCounts``), and backward takes
    the batch statistics the forward saved.

    The part protocol (what `Modules.BatchNormND` calls; every part takes the module first, whose state it reads and
    writes):

    - ``output(bn, data)``: the array the forward writes (a new one here);
    - ``train(bn, data, out, residual)``: the forward into `out`, setting ``bn.savemean``, ``bn.saveinvvar`` and
      ``bn.numOfProps``;
    - ``results(bn)``: what the backward needs of the forward (the saved statistics here), ``keepResults(bn, results)``
      sets it;
    - ``inputGradient(bn, grad, updGrad)``: the array the backward writes the input gradient into, or None;
    - ``backward(bn, data, grad, ingrad, sums, results)``: the backward, writing the parameter-gradient sums into
      `sums` (``(scalegrad, biasgrad)``) and the input gradient into `ingrad` where given;
    - ``checkBatch(bn, shape)``, ``checkInPlace(bn)``, ``checkResidual(bn)``, ``stateArrays(bn)``: the checks of a
      forward (the last two raise where the part does not combine with in-place training or a residual), and the
      arrays a training forward changes in place.
    """

    # NOTE: what the part combines with: the fused activation its passes compute (None: none), in-place training and
    # a residual (`checkInPlace`, `checkResidual` refuse the others, naming `feature`)
    feature = None
    activation = None
    # NOTE: whether the forward is one kernel, which saves what it changes (`Contract.TrainForward`'s backup: the
    # module's transaction copies nothing, `BatchNormND.forwardTransaction`) and writes the skip counts it changes to
    # their host mirror (no copy queued after it, `BatchNormND.warnOfSkips`); parts of several kernels do neither
    kernelSaves = True

    def output(self, bn, data):
        return data.backend.gpuarray.emptyLike(data)

    def train(self, bn, data, out, residual):
        plan = bn.planOf(data, self.activation, residual is not None)
        savemean, saveinvvar = bn.savedStatistics(data)
        skipped = bn.skipCounter()
        # NOTE: only where the module counts on them (a ghost batch's part is held by `GhostBatches`)
        if bn.training.kernelSaves:
            backup = bn.runningBackup()
            saving = (backup.array, backup.nextStamp(), None if skipped is None else bn.skipMirror.target)
        else:
            saving = ()
        plan.trainForward(TrainForward(
            data, out, bn.scale, bn.bias, bn.mean, bn.var, skipped, savemean, saveinvvar, bn.nextFactor(), residual,
            *saving,
        ))
        bn.numOfProps += 1
        bn.savemean, bn.saveinvvar = savemean, saveinvvar

    def results(self, bn):
        return bn.savemean, bn.saveinvvar

    def keepResults(self, bn, results):
        """Sets what `results` gives from `results` (stacked per ghost batch, `GhostBatches`)."""
        bn.savemean, bn.saveinvvar = results

    def inputGradient(self, bn, grad, updGrad):
        return grad.backend.gpuarray.emptyLike(grad) if updGrad else None

    def backward(self, bn, data, grad, ingrad, sums, results):
        bn.planOf(data).backward(Backward(data, grad, ingrad, bn.scale, *results, *sums))
        if bn.hadResidual:
            # NOTE: without an activation the residual's gradient is the output's
            bn.residualGrad = grad

    def checkBatch(self, bn, shape):
        """A map needs at least 2 elements to estimate a variance (SPEC section 4.2)."""
        m = bn.elementsPerMap(shape)
        if m < 2:
            raise ModuleError(
                "%s: training needs at least 2 elements per map to estimate a variance; data of shape %s has %d"
                % (bn.describe(), shape, m)
            )

    def checkInPlace(self, bn):
        raise ModuleError("%s: in-place training does not combine with %s yet" % (bn.describe(), self.feature))

    def checkResidual(self, bn):
        """A residual is added before the activation, in training and in evaluation alike."""

    def stateArrays(self, bn):
        return [bn.mean, bn.var] + ([] if bn.skipCounts is None else [bn.skipCounts])
