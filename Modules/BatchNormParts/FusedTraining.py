"""FusedTraining: batch normalization fused with an activation and a residual, ``out = act(bn(x) + residual)`` in the
normalization pass itself (cuDNN's BN_ADD_ACTIVATION, Apex's bn_add_relu); its backward takes the activation's
derivative from the output inside its own two passes (`Contract.FusedActivation` gives the formulas).

Combines with: a residual, and in-place training (`InPlaceTraining`, with an invertible activation). Not
yet with Batch Renormalization, ghost batches or the synchronized modules (a ValueError at construction).
"""

from PuzzleLib.Backend.Contract import Backward
from PuzzleLib.Modules.BatchNormParts.PlainTraining import PlainTraining


class FusedTraining(PlainTraining):
    """`PlainTraining` whose passes also compute `activation` (a `Contract.FusedActivation`); backward reads the output
    (``bn.data``) and writes the residual's gradient (``bn.residualGrad``, dz = grad * act'(y)) where the forward took
    a residual."""

    def __init__(self, activation):
        self.activation = activation

    def inputGradient(self, bn, grad, updGrad):
        # NOTE: the residual's gradient comes out of the input gradient's walk, whether or not that one is asked for
        return super().inputGradient(bn, grad, updGrad or bn.hadResidual)

    def backward(self, bn, data, grad, ingrad, sums, results):
        resgrad = grad.backend.gpuarray.emptyLike(grad) if bn.hadResidual else None
        bn.planOf(grad, self.activation).backward(
            Backward(data, grad, ingrad, bn.scale, *results, *sums, outdata=bn.data, resgrad=resgrad)
        )
        if bn.hadResidual:
            bn.residualGrad = resgrad
