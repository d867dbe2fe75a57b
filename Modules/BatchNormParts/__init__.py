"""The parts a batch-norm module (`Modules.BatchNormND`) trains with: how a training forward takes its statistics and
moves the running ones, and how its backward runs. The module keeps its keyword options (TensorFlow's and Keras's
style: one layer with options) and picks one part when it is made (`trainingPart`, the one place that says which
features combine):

- `PlainTraining`: batch normalization itself, with the non-finite guard;
- `FusedTraining`: the activation and the residual in the same passes (cuDNN's BN_ADD_ACTIVATION);
- `InPlaceTraining`: the output over the input, backward from the output (InPlace-ABN);
- `RenormTraining`: Batch Renormalization's correction toward moving statistics;
- `GhostBatches`: plain batch normalization or Batch Renormalization once per ghost batch;
- `Modules.SyncBatchNormND.SyncTraining`: the statistics of the batches of every process.

Each part's file says first what it combines with, and its class says it once more in code: `activation` (the fused
activation its passes compute, None for none), `checkInPlace` and `checkResidual` (which refuse, at the call, in-place
training and a residual where it does not take them). Evaluation is the module's own, the same whatever the part.

`RunningUpdate` is no training part: it holds the module's methods around the running update every part makes (the
non-finite guard's counts, their host mirror and warning, the kernel's backup of what the update overwrites).
"""

from PuzzleLib.Backend.Contract import FusedActivation
from PuzzleLib.Modules.BatchNormParts.FusedTraining import FusedTraining
from PuzzleLib.Modules.BatchNormParts.GhostBatches import GhostBatches
from PuzzleLib.Modules.BatchNormParts.InPlaceTraining import InPlaceTraining
from PuzzleLib.Modules.BatchNormParts.PlainTraining import PlainTraining


def trainingPart(owner, fused, inplace, renorm, virtualBatch):
    """The part of `Modules.BatchNormParts` a module with these options trains with, and the one place that says
    which features combine: a fused activation combines with plain batch normalization only (renorm or virtualBatch:
    a ValueError here, naming both); ghost batches hold plain batch normalization or Batch Renormalization; in-place
    training and a residual are refused at the call, by the part's own checks (`checkInPlace`, `checkResidual`).

    Args:
        owner (str): the module's class, for messages; fused (`Contract.FusedActivation` or None); inplace (bool);
        renorm (`RenormTraining` or None); virtualBatch (int or None).
    """
    if fused is not None and (renorm is not None or virtualBatch is not None):
        raise ValueError(
            "%s: a fused activation does not combine with %s yet; got activation=%r with %s"
            % (owner, "renorm" if renorm is not None else "virtualBatch", fused.kind,
               "renorm" if renorm is not None else "virtualBatch=%r" % virtualBatch)
        )
    if renorm is not None:
        part = renorm
    elif inplace and virtualBatch is None:
        part = InPlaceTraining(FusedActivation("identity", 0.0) if fused is None else fused)
    elif fused is not None:
        part = FusedTraining(fused)
    else:
        part = PlainTraining()
    return part if virtualBatch is None else GhostBatches(part, virtualBatch)
