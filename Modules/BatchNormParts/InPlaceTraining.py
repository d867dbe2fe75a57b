"""InPlaceTraining: InPlace-ABN (Rota Bulo, Porzi & Kontschieder 2018, "In-Place Activated BatchNorm for
Memory-Optimized Training of DNNs", arXiv 1712.02616): the training output overwrites the input, and backward rebuilds
``xhat = (act^-1(y) - bias) / scale`` from the output and writes the input gradient over the output's gradient, so a
block keeps one array where it kept two.

Combines with: an activation that inverts exactly and stably (none, leakyRelu or elu with a slope > 0); not with a
residual (the input is rebuilt from the output alone), Batch Renormalization or ghost batches (a `ModuleError` at the
training forward: the same module evaluates in place with any of them).
"""

from PuzzleLib.Backend import Checks
from PuzzleLib.Backend.Contract import Backward
from PuzzleLib.Modules.BatchNormParts.FusedTraining import FusedTraining
from PuzzleLib.Modules.ModuleError import ModuleError


class InPlaceTraining(FusedTraining):
    """`FusedTraining` in place: `activation` is the module's, or the identity (a `Contract.FusedActivation`)."""


    def output(self, bn, data):
        return data

    def inputGradient(self, bn, grad, updGrad):
        return grad if updGrad else None

    def backward(self, bn, data, grad, ingrad, sums, results):
        # NOTE: the input is gone (the output overwrote it): xhat comes from the output, the bias and the scale
        bn.planOf(grad, self.activation).backward(
            Backward(None, grad, ingrad, bn.scale, *results, *sums, bias=bn.bias, outdata=bn.data)
        )

    def checkResidual(self, bn):
        if bn.train:
            raise ModuleError(
                "%s: in-place training takes no residual (the input is rebuilt from the output alone)" % bn.describe()
            )

    def checkInPlace(self, bn):
        if not Checks.invertible(self.activation):
            kind = self.activation.kind
            raise ModuleError(
                "%s: in-place training (InPlace-ABN) rebuilds the input from the output, which needs an activation "
                "that inverts exactly and stably (None, leakyRelu or elu with slope > 0); got activation=%r%s. Use "
                "inplace=False, or in-place evaluation only"
                % (bn.describe(), kind, " with slope 0" if kind in ("leakyRelu", "elu") else "")
            )
