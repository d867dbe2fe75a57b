"""SyncBatchNormND: batch normalization whose training statistics are those of the batches of every process (MPI)."""

import numpy as np

from PuzzleLib.Backend import Collective, Dnn
from PuzzleLib.Backend.BatchNormChecks import statType
from PuzzleLib.Backend.Contract import BatchMoments
from PuzzleLib.Modules.BatchNormND import BatchNormND
from PuzzleLib.Modules.Module import ModuleError

# NOTE: the data types a header can name; their positions are what the processes compare
headerTypes = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


class SyncStatistics:
    """What makes a batch-norm module synchronized: its training forward and backward span the batches of every process
    of an MPI communicator (the "global batch"); evaluation involves no communication.

    Training forward, on every process (Chan, Golub & LeVeque 1979 for the merge):

    1. one exchange of a header per process (element count per map, map count, data type, and whether its own checks
       passed): a module of another map count or data type, or data that fails a process's checks, raises the same
       `ModuleError` on every process, so none waits for an exchange that cannot come;
    2. each process computes the per-map mean and biased variance of its own batch (`Dnn.batchNormNdStatistics`);
       one exchange gathers them, and every process merges them in float64, in rank order, into the global
       (m, mu, sigma2): batches of any sizes, 0 and 1 element included, and large means come out exact;
    3. the batch is normalized with the global statistics (`Dnn.batchNormNdNormalize`), and the running statistics
       move with the global m: ``var = (1 - factor) * var + factor * sigma2 * m / (m - 1)``. Every process computes
       the same bits, so every process keeps the same running statistics.

    Backward (after a training forward): each process sums ``grad`` and ``grad * xhat`` over its batch; one exchange
    gathers the sums (with each process's check result), every process adds them in rank order, and the input gradient
    follows from the global sums (`Dnn.batchNormNdInputGradient`). The parameter gradients are those global sums, the
    same on every process: they are the gradients of the global batch's loss, so they must not be summed again across
    processes (sum or average the other layers' gradients as your data-parallel scheme does).

    Every process must make the same calls in the same order: the same modules, training forwards and backwards. A
    process in evaluation mode does not communicate, so a mode that differs between processes cannot be detected.

    Args:
        comm (mpi4py.MPI.Intracomm or None): the processes; ``MPI.COMM_WORLD`` when None.

    Raises:
        ValueError: at construction, for a `comm` that is not an mpi4py intra-communicator.
        ImportError: at construction, when mpi4py (or an MPI library) is missing.
        ModuleError: in training, on every process alike, when any process's data fails its checks, the processes
            disagree on the map count or the data type, or the global batch has fewer than 2 elements per map.
    """

    # NOTE: a copy (`Module.__deepcopy__`) takes part in its original's communicator and exchanges
    sharedFields = ("comm", "exchange")
    transientFields = BatchNormND.transientFields + ("globalCounts", "globalCount")

    def __init__(self, *args, comm=None, **kwargs):
        comm = Collective.checkCommunicator(type(self).__name__, comm)
        # NOTE: renorm and virtualBatch change the statistics a training batch is normalized with, and the exchange
        # merges plain ones only; the split passes of the exchange have no fused activation yet
        for option in ("renorm", "virtualBatch", "activation"):
            if kwargs.get(option) not in (None, False):
                raise ValueError(
                    "%s: %s is not supported by the synchronized modules; got %s=%r"
                    % (type(self).__name__, option, option, kwargs[option])
                )
        super().__init__(*args, **kwargs)
        self.comm = comm
        self.exchange = Collective.Exchange(comm)
        self.globalCounts, self.globalCount = None, None

    def checkElementsPerMap(self, shape):
        """No local minimum in training: a process may hold 0 or 1 element per map; the global batch needs 2."""
        if not self.train:
            super().checkElementsPerMap(shape)

    def forward(self, data):
        """As `BatchNormND.forward`; in training the statistics are those of the global batch (see the class)."""
        if not self.train:
            return super().forward(data)
        self.globalCounts = self.agreeOnBatch(data)
        return super().forward(data)

    def agreeOnBatch(self, data):
        """The first exchange of a training forward; returns every process's element count per map."""
        problem, dtypeCode, count = None, -1, 0
        try:
            self.checkArray(data, "data")
            self.checkReady()
            self.checkDataShape(data.shape)
            self.checkDataType(data.dtype)
            dtypeCode, count = headerTypes.index(data.dtype), self.elementsPerMap(data.shape)
        except ModuleError as e:
            problem = str(e)

        headers, problems = self.exchange.allgatherChecked([self.maps, dtypeCode, count], problem)
        self.raiseProblems(problems)
        if len(set(headers[:, 0])) > 1:
            raise ModuleError(
                "%s: the processes have different map counts (per rank: %s)" % (self.describe(), headers[:, 0].tolist())
            )
        if len(set(headers[:, 1])) > 1:
            types = [str(headerTypes[code]) for code in headers[:, 1]]
            raise ModuleError("%s: the processes' data types differ (per rank: %s)" % (self.describe(), types))
        counts = headers[:, 2]
        if counts.sum() < 2:
            raise ModuleError(
                "%s: training needs at least 2 elements per map in the global batch to estimate a variance; the "
                "processes hold %s" % (self.describe(), counts.tolist())
            )
        return counts

    def raiseProblems(self, problems):
        if problems:
            lines = "; ".join("rank %d: %s" % (rank, message) for rank, message in problems)
            raise ModuleError("%s: a process refused its part of the synchronized step (%s)" % (self.describe(), lines))

    def updateData(self, data):
        if not self.train:
            return super().updateData(data)

        x = self.toDnn(data)
        arrays = data.backend.gpuarray
        statType_ = statType(data.dtype)

        try:
            # NOTE: float64 moments: the CPU backend's are exact in float64, and the merge should not round them
            record = arrays.empty((2, self.maps), np.float64)
            moments = BatchMoments(record[0].reshape(self.paramShape), record[1].reshape(self.paramShape))
            Dnn.batchNormNdStatistics(x, self.dnnAxes, out=moments)
        except ValueError as e:
            raise ModuleError("%s: %s" % (self.describe(), e)) from None
        gathered = self.exchange.allgather(record)

        count, mu, sigma2 = Collective.mergeMoments(self.globalCounts, gathered[:, 0], gathered[:, 1])
        invstd = 1.0 / np.sqrt(sigma2 + self.epsilon)
        saved = arrays.to_gpu(np.stack([mu, invstd]).astype(statType_))
        savemean, saveinvvar = saved[0].reshape(self.paramShape), saved[1].reshape(self.paramShape)
        out = Dnn.batchNormNdNormalize(x, self.scale, self.bias, savemean, saveinvvar, self.dnnAxes)

        factor = self.nextFactor()
        runningMean = self.mean.get().astype(np.float64).reshape(self.maps)
        runningVar = self.var.get().astype(np.float64).reshape(self.maps)
        newMean = (1.0 - factor) * runningMean + factor * mu
        newVar = (1.0 - factor) * runningVar + factor * sigma2 * (count / (count - 1))
        counts = self.skipCounter()
        if counts is not None:
            # NOTE: the guard of BatchNormND's kernels, here on the host where the merged statistics are
            finite = np.isfinite(mu) & np.isfinite(sigma2)
            newMean, newVar = np.where(finite, newMean, runningMean), np.where(finite, newVar, runningVar)
            if not finite.all():
                counts.set(counts.get() + (~finite).astype(np.float32).reshape(counts.shape))
        self.mean.set(newMean.astype(np.float32).reshape(self.mean.shape))
        self.var.set(newVar.astype(np.float32).reshape(self.var.shape))

        self.warnOfSkips()
        self.numOfProps += 1
        self.savemean, self.saveinvvar, self.globalCount = savemean, saveinvvar, count
        return self.fromDnn(out, data)

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        """As `BatchNormND.backward`; after a training forward the sums are those of the global batch (see the class),
        and every process takes part in the exchange whatever its flags."""
        if not self.train:
            return super().backward(grad, updParamGrads, updGrad, scale, momentum)

        problem = None
        try:
            self.checkGrad(grad)
        except ModuleError as e:
            problem = str(e)
        updParamGrads = updParamGrads and bool(self.vars)

        snapshot = self.snapshot("backward", updParamGrads)
        try:
            sums = np.zeros(2 * self.maps, np.float64)
            if problem is None:
                _, scalegrad, biasgrad = Dnn.batchNormNdBackward(
                    self.toDnn(self.inData), self.toDnn(grad), self.scale, self.savemean, self.saveinvvar,
                    self.epsilon, self.dnnAxes, updGrad=False,
                )
                sums[: self.maps], sums[self.maps :] = biasgrad.get().ravel(), scalegrad.get().ravel()

            gathered, problems = self.exchange.allgatherChecked(sums, problem)
            self.raiseProblems(problems)
            total = gathered.sum(axis=0).reshape(2, self.maps)
            arrays = grad.backend.gpuarray
            globalSums = arrays.to_gpu(total.astype(self.savemean.dtype))
            biasgrad, scalegrad = (globalSums[k].reshape(self.paramShape) for k in (0, 1))

            if updGrad:
                ingrad = Dnn.batchNormNdInputGradient(
                    self.toDnn(self.inData), self.toDnn(grad), self.scale, self.savemean, self.saveinvvar, scalegrad,
                    biasgrad, self.globalCount, self.dnnAxes,
                )
            if updParamGrads:
                # NOTE: parameter gradients are float32 whatever the data type (float64 sums serve float64 data)
                paramSums = globalSums if globalSums.dtype == np.float32 else arrays.to_gpu(total.astype(np.float32))
                self.accumulate(self.vars["scale"], paramSums[1], scale, momentum)
                self.accumulate(self.vars["bias"], paramSums[0], scale, momentum)
            if updGrad:
                self.grad = self.fromDnn(ingrad, grad)
            return self.grad if updGrad else None
        except BaseException:
            snapshot.restore()
            raise

    def releaseResults(self):
        super().releaseResults()
        self.globalCount = None


class SyncBatchNormND(SyncStatistics, BatchNormND):
    """`BatchNormND` synchronized across the processes of an MPI communicator (`SyncStatistics`): in training, each
    map is normalized with the mean and variance of the batches of every process together.

    Every rule of `BatchNormND` holds (factor schedule, unbiased running variance, evaluation and in-place evaluation,
    backward in both modes, any maps axis, persistence, calcMode), with m the element count per map of the global
    batch. A process may hold an empty batch or a single element; on one process (``MPI.COMM_SELF``) the module
    computes what `BatchNormND` does.

    Args:
        nd, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace, axis, skipNonFinite: as in
            `BatchNormND` (the guard applies to the merged statistics). `BatchNormND`'s renorm and virtualBatch are
            refused (ValueError): the exchange merges plain batch statistics only.
        comm (mpi4py.MPI.Intracomm or None): keyword only; ``MPI.COMM_WORLD`` when None.

    Shape:
        as `BatchNormND`; the batch size may differ between processes (0 allowed).

    Raises:
        as `BatchNormND` and `SyncStatistics`.

    Example:
        >>> from mpi4py import MPI                                  # run under mpiexec -n 2
        >>> bn = SyncBatchNormND(2, 16, comm=MPI.COMM_WORLD)
        >>> y = bn(gpuarray.to_gpu(np.random.randn(3 + MPI.COMM_WORLD.rank, 16, 8, 8).astype(np.float32)))
    """


def unittest():
    """One process (``MPI.COMM_SELF``): the global batch is the local one; numbers against the float64 reference.
    Several processes are tested by ``TestLib/tests/test_sync_batchnorm.py`` under mpiexec."""
    from mpi4py import MPI

    from PuzzleLib.Modules.BatchNormND import checkAgainstReference

    for nd in (1, 2, 3):
        checkAgainstReference(SyncBatchNormND(nd, 3, comm=MPI.COMM_SELF), (4, 3) + (5, 3, 2)[:nd], seed=nd)


if __name__ == "__main__":
    unittest()
