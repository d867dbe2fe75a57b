"""SyncBatchNormND: batch normalization whose training statistics are those of the batches of every process (MPI);
`SyncStatistics` makes any batch-norm module synchronized, `SyncTraining` is its training part."""

import numpy as np

from PuzzleLib.Backend import Collective
from PuzzleLib.Backend.Contract import InputGradient, Moments, Normalize
from PuzzleLib.Backend.StatisticsUpdate import guardedUpdate, runningUpdates
from PuzzleLib.Modules.BatchNormND import BatchNormND
from PuzzleLib.Modules.BatchNormParts.PlainTraining import PlainTraining
from PuzzleLib.Modules.ModuleError import ModuleError

# NOTE: the data types a header can name; their positions are what the processes compare
headerTypes = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))


def problemOf(check, *args):
    """The message of the `ModuleError` ``check(*args)`` raises, or None when it passes."""
    try:
        check(*args)
    except ModuleError as e:
        return str(e)
    return None


def raiseProblems(bn, problems):
    if problems:
        lines = "; ".join("rank %d: %s" % (rank, message) for rank, message in problems)
        raise ModuleError("%s: a process refused its part of the synchronized step (%s)" % (bn.describe(), lines))


class SyncTraining(PlainTraining):
    """The training part of a synchronized module (`SyncStatistics` says what it computes). Its checks are the
    exchanges': a process whose data or gradient fails the module's checks tells the others in the exchange it takes
    part in anyway, and every process raises the same `ModuleError`."""

    feature = "the synchronized modules"
    # NOTE: the moments, an exchange, then the update: snapshot first
    kernelSaves = False

    def train(self, bn, data, out, residual):
        counts = self.agreeOnBatch(bn, data, residual)
        arrays = data.backend.gpuarray
        # NOTE: float64 moments: the CPU backend's are exact in float64, and the merge should not round them
        record = arrays.empty((2, bn.maps), np.float64)
        plan = bn.planOf(data)
        plan.batchStatistics(Moments(data, *(record[k].reshape(bn.paramShape) for k in (0, 1))))
        gathered = bn.exchange.allgather(record)

        count, mu, sigma2 = Collective.mergeMoments(counts, gathered[:, 0], gathered[:, 1])
        invstd = 1.0 / np.sqrt(sigma2 + bn.epsilon)
        saved = arrays.to_gpu(np.stack([mu, invstd]).astype(np.float64 if data.dtype == np.float64 else np.float32))
        savemean, saveinvvar = (saved[k].reshape(bn.paramShape) for k in (0, 1))
        plan.normalize(Normalize(data, out, bn.scale, bn.bias, savemean, saveinvvar))
        self.moveRunningStatistics(bn, mu, sigma2, count)
        bn.numOfProps += 1
        bn.savemean, bn.saveinvvar, bn.globalCount = savemean, saveinvvar, count

    def agreeOnBatch(self, bn, data, residual):
        """The first exchange of a training forward (each process's checks, map count, data type and element count
        per map); returns every process's element count per map."""
        problem = problemOf(super(SyncStatistics, bn).checkData, data, residual)
        dtypeCode, count = -1, 0
        if problem is None:
            dtypeCode, count = headerTypes.index(data.dtype), bn.elementsPerMap(data.shape)
        headers, problems = bn.exchange.allgatherChecked([bn.maps, dtypeCode, count], problem)
        raiseProblems(bn, problems)
        if len(set(headers[:, 0])) > 1:
            raise ModuleError(
                "%s: the processes have different map counts (per rank: %s)" % (bn.describe(), headers[:, 0].tolist())
            )
        if len(set(headers[:, 1])) > 1:
            types = [str(headerTypes[code]) for code in headers[:, 1]]
            raise ModuleError("%s: the processes' data types differ (per rank: %s)" % (bn.describe(), types))
        counts = headers[:, 2]
        if counts.sum() < 2:
            raise ModuleError(
                "%s: training needs at least 2 elements per map in the global batch to estimate a variance; the "
                "processes hold %s" % (bn.describe(), counts.tolist())
            )
        return counts

    def moveRunningStatistics(self, bn, mu, sigma2, count):
        """The running update with the merged statistics, on the host where they are (every process the same bits),
        guarded as the kernels guard it."""
        mean = bn.mean.get().astype(np.float64).reshape(bn.maps)
        var = bn.var.get().astype(np.float64).reshape(bn.maps)
        counts = bn.skipCounter()
        finite = None if counts is None else np.isfinite(mu) & np.isfinite(sigma2)
        guardedUpdate(runningUpdates(mean, var, mu, sigma2, count, bn.nextFactor()), finite)
        if finite is not None and not finite.all():
            counts.set(counts.get() + (~finite).astype(np.float32).reshape(counts.shape))
        bn.mean.set(mean.astype(np.float32).reshape(bn.mean.shape))
        bn.var.set(var.astype(np.float32).reshape(bn.var.shape))

    def backward(self, bn, data, grad, ingrad, sums, results):
        """Each process sums over its batch, one exchange adds the sums (with each process's check of `grad`), the
        input gradient follows from the global sums; the parameter gradients are the global sums."""
        problem = problemOf(super(SyncStatistics, bn).checkGrad, grad)
        local = np.zeros(2 * bn.maps, np.float64)
        if problem is None:
            own = bn.newStatistics(grad, 2)
            PlainTraining.backward(self, bn, data, grad, None, own, results)
            local[: bn.maps], local[bn.maps :] = own[1].get().ravel(), own[0].get().ravel()
        gathered, problems = bn.exchange.allgatherChecked(local, problem)
        raiseProblems(bn, problems)
        total = gathered.sum(axis=0).reshape(2, bn.maps)
        globalSums = grad.backend.gpuarray.to_gpu(total.astype(results[0].dtype))
        biasgrad, scalegrad = (globalSums[k].reshape(bn.paramShape) for k in (0, 1))
        if ingrad is not None:
            bn.planOf(data).inputGradient(
                InputGradient(data, grad, ingrad, bn.scale, *results, scalegrad, biasgrad, bn.globalCount)
            )
        # NOTE: parameter gradients are float32 whatever the data type (float64 sums serve float64 data)
        for target, k in zip(sums, (1, 0), strict=True):
            target.set(total[k].astype(np.float32).reshape(target.shape))

    def stateArrays(self, bn):
        # NOTE: the checks come after the snapshot here (they are the exchange's): an empty module has no arrays
        return [ary for ary in super().stateArrays(bn) if ary is not None]

    def checkBatch(self, bn, shape):
        """No local minimum: a process may hold 0 or 1 element per map; the global batch needs 2 (`agreeOnBatch`)."""

    def checkInPlace(self, bn):
        """The synchronized modules train into a new output whatever `inplace` says (they evaluate in place)."""

    def checkResidual(self, bn):
        raise ModuleError("%s: a residual does not combine with %s yet" % (bn.describe(), self.feature))


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
        ModuleError: in training, on every process alike, when any process's data (or residual: the synchronized
            modules take none) fails its checks, the processes disagree on the map count or the data type, or the
            global batch has fewer than 2 elements per map.
    """

    # NOTE: a copy (`Module.__deepcopy__`) takes part in its original's communicator and exchanges
    sharedFields = ("comm", "exchange")
    transientFields = BatchNormND.transientFields + ("globalCount",)

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
        self.training = SyncTraining()
        self.globalCount = None

    def checkData(self, data, residual=None):
        """In training the checks are the first exchange's (`SyncTraining.agreeOnBatch`), so that a batch one process
        refuses is refused by every process; evaluation checks as `BatchNormND` (it communicates nothing)."""
        if not self.train:
            super().checkData(data, residual)

    def checkGrad(self, grad):
        """After a training forward the checks are the exchange's (`SyncTraining.backward`); else as `Module`."""
        if not self.train:
            super().checkGrad(grad)

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

    from PuzzleLib.TestLib.Reference import checkModule

    for nd in (1, 2, 3):
        checkModule(SyncBatchNormND(nd, 3, comm=MPI.COMM_SELF), (4, 3) + (5, 3, 2)[:nd], seed=nd)


if __name__ == "__main__":
    unittest()
