"""RenormTraining: Batch Renormalization (Ioffe 2017, "Batch Renormalization: Towards Reducing Minibatch Dependence in
Batch-Normalized Models", arXiv 1702.03275; TensorFlow's ``renorm``): each training batch corrected toward moving
statistics, the correction a constant in backward.

With the batch's sigma = sqrt(sigma2 + epsilon) and the moving ``renormMean`` and ``renormStd`` before the batch
(``std = max(renormStd, sqrt(epsilon))``)::

    r = clip(sigma / std, rmin, rmax),  d = clip((mu - renormMean) / std, -dmax, dmax)
    out = ((x - mu) / sigma * r + d) * scale + bias        # r and d constants in backward
    renormMean = renormMomentum * renormMean + (1 - renormMomentum) * mu
    renormStd  = renormMomentum * renormStd  + (1 - renormMomentum) * sigma

Combines with: ghost batches (each ghost batch corrected on its own). Not yet with a fused activation (a ValueError
at construction), a residual or in-place training (a `ModuleError` at the call).
"""

from PuzzleLib.Backend import Checks
from PuzzleLib.Backend.Contract import RenormBackward, RenormCorrection, RenormForward
from PuzzleLib.Modules.BatchNormParts.PlainTraining import PlainTraining
from PuzzleLib.Modules.ModuleError import ModuleError


def checkClipping(owner, clipping):
    """`clipping` (None, or a dict with some of the keys rmax, rmin, dmax) checked, as a new dict of floats.

    Raises:
        ValueError: another type or key, or a bound `Checks.renormClipping` refuses (named with `owner`).
    """
    if clipping is None:
        return {}
    if not isinstance(clipping, dict) or not set(clipping) <= {"rmax", "rmin", "dmax"}:
        raise ValueError(
            "%s: renormClipping must be None or a dict with some of the keys 'rmax', 'rmin', 'dmax'; got %r"
            % (owner, clipping)
        )
    try:
        Checks.renormClipping(**clipping)
    except ValueError as e:
        raise ValueError("%s: renormClipping: %s" % (owner, e)) from None
    return {key: None if value is None else float(value) for key, value in clipping.items()}


class RenormTraining(PlainTraining):
    """Batch Renormalization's training step; ``bn.renormMean`` and ``bn.renormStd`` are the module's attributes
    (saved with it), ``bn.renormCorrection`` the last batch's (r, d).

    Args:
        bounds (dict): the checked clipping bounds (`checkClipping`); momentum (float): in [0, 1], the weight of the
            old value in the moving statistics' update.
    """

    feature = "renorm"
    # NOTE: three kernels (moments, the per-map step, the pass): snapshot first
    kernelSaves = False

    def __init__(self, bounds, momentum):
        self.momentum = momentum
        self.setBounds(bounds)

    def setBounds(self, bounds):
        """Takes checked bounds (`checkClipping`), kept as given and as the `Contract.RenormClipping` the step uses."""
        self.bounds, self.clipping = bounds, Checks.renormClipping(**bounds)

    def train(self, bn, data, out, residual):
        # NOTE: float64 statistics with float64 data, as Dnn.batchRenormNd returns them
        savemean, saveinvvar, r, d = bn.newStatistics(data, 4, wide=True)
        bn.planOf(data).renormForward(RenormForward(
            data, out, bn.scale, bn.bias, bn.mean, bn.var, bn.renormMean, bn.renormStd, bn.skipCounter(), savemean,
            saveinvvar, r, d, bn.nextFactor(), self.momentum, self.clipping,
        ))
        bn.numOfProps += 1
        bn.savemean, bn.saveinvvar, bn.renormCorrection = savemean, saveinvvar, RenormCorrection(r, d)

    def results(self, bn):
        return (bn.savemean, bn.saveinvvar) + tuple(bn.renormCorrection)

    def keepResults(self, bn, results):
        bn.savemean, bn.saveinvvar = results[:2]
        bn.renormCorrection = RenormCorrection(*results[2:])

    def backward(self, bn, data, grad, ingrad, sums, results):
        bn.planOf(data).renormBackward(RenormBackward(data, grad, ingrad, bn.scale, *results, *sums))

    def checkResidual(self, bn):
        raise ModuleError("%s: a residual does not combine with %s yet" % (bn.describe(), self.feature))

    def stateArrays(self, bn):
        return super().stateArrays(bn) + [bn.renormMean, bn.renormStd]
