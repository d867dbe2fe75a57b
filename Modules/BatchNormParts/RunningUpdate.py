"""RunningUpdate: what a batch-norm module keeps around the running update its training kernels make (a part of
`Modules.BatchNormND`, which holds the state: these methods read and write the module's attributes, so that its
transactions put them back like any other).

- The non-finite guard (``skipNonFinite``): the per-map counts of the updates skipped (``skipCounts``), their
  `HostMirror` on the host, the warning of the first skip, ``skippedUpdates``.
- The kernel's backup of what the update overwrites (`Transaction.KernelBackup`), and the transaction of a forward
  built on it (`forwardTransaction`).
"""

import warnings

import numpy as np

from PuzzleLib.Modules.Transaction import KernelBackup, KernelSaved, ResultsOnly


class RunningUpdate:
    """The methods of `BatchNormND` around its running update (see the file's head); state lives in the module:
    ``skipCounts``, ``skipMirror``, ``warnedSkips``, ``kernelBackup``, with ``mean``, ``maps``, ``train``,
    ``training`` and ``skipNonFinite``."""

    def forwardTransaction(self):
        """A training forward whose part's kernel saves the running statistics and skip counts as it moves them
        (``training.kernelSaves``) copies nothing beforehand: a `Transaction.KernelBackup` of the module's, made at the
        first such call (`runningBackup`), holds what its restore puts back (`Transaction.KernelSaved`). An evaluation
        forward changes nothing but its results (`Transaction.ResultsOnly`); any other forward takes a
        `Module.snapshot`."""
        training = self.training
        if not self.train:
            return ResultsOnly(self)
        if not training.kernelSaves:
            return self.snapshot("forward")
        return KernelSaved(self, training.stateArrays(self), "kernelBackup")

    def runningBackup(self):
        """The module's `Transaction.KernelBackup` of its running statistics and skip counts, made by the first training
        forward that takes one (inside its transaction: a first call that raises leaves none behind)."""
        if self.kernelBackup is None:
            self.kernelBackup = KernelBackup(self.mean.backend.gpuarray, self.maps, 3)
        return self.kernelBackup

    def skipCounter(self):
        """``skipCounts`` (created at the first call) when the running update is guarded, else None."""
        if not self.skipNonFinite:
            return None
        if self.skipMirror is None:
            arrays = self.mean.backend.gpuarray
            # NOTE: a copy of the module (`Module.__deepcopy__`) has counts of its own, without a mirror of them
            if self.skipCounts is None:
                self.skipCounts = arrays.zeros(self.mean.shape, np.float32)
            self.skipMirror = arrays.HostMirror(self.skipCounts)
        return self.skipCounts

    def warnOfSkips(self):
        """Warns once when the counts show a skipped update. The counts come through a `HostMirror`, which never waits
        for the device: on CUDA the warning can come a forward or two after the batch (the forward's kernel writes the
        counts to the mirror as it runs; the parts of several kernels queue a copy)."""
        if self.skipMirror is None or self.warnedSkips:
            return
        # NOTE: the counts as they have reached the mirror; a part whose kernel does not write the mirror itself then
        # queues a copy of the counts this forward leaves (read by the next one)
        counts = self.skipMirror.latest()
        if not self.training.kernelSaves:
            self.skipMirror.refresh()
        # NOTE: count_nonzero, not any(): a quarter of the time on a few hundred maps (no ufunc reduction to set up)
        skippedMaps = 0 if counts is None else np.count_nonzero(counts)
        if skippedMaps:
            self.warnedSkips = True
            warnings.warn(
                "%s: a training batch had a non-finite mean or variance in %d of %d maps (a NaN or inf in the data); "
                "their running statistics were left as they were (bn.skippedUpdates counts such updates; this warning "
                "is given once; skipNonFinite=False lets them in, as PyTorch does)"
                % (self.describe(), skippedMaps, self.maps),
                RuntimeWarning,
                stacklevel=3,
            )

    @property
    def skippedUpdates(self):
        """The running updates of single maps skipped so far for non-finite batch statistics (an int; reading it waits
        for the device)."""
        return 0 if self.skipCounts is None else int(self.skipCounts.get().sum(dtype=np.float64))
