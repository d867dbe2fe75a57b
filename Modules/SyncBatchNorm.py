"""SyncBatchNorm: per-activation batch normalization of (batch, features) data, synchronized across processes (MPI)."""

from PuzzleLib.Modules.BatchNorm import BatchNorm
from PuzzleLib.Modules.SyncBatchNormND import SyncStatistics


class SyncBatchNorm(SyncStatistics, BatchNorm):
    """`BatchNorm` synchronized across the processes of an MPI communicator (`SyncStatistics`): in training each feature
    is normalized with the mean and variance of the batches of every process together (the global batch).

    Every rule of `BatchNorm` holds, with m the global batch size; a process may hold 0 or 1 rows.

    Args:
        size, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace, axis: as in `BatchNorm`.
        comm (mpi4py.MPI.Intracomm or None): keyword only; ``MPI.COMM_WORLD`` when None.

    Shape:
        data and output: (batch, size), the batch possibly different on each process; scale, bias, mean, var:
        (1, size, 1, 1), float32.

    Example:
        >>> bn = SyncBatchNorm(100)                                  # every process of MPI.COMM_WORLD, under mpiexec
        >>> y = bn(gpuarray.to_gpu(localBatch))                      # localBatch: (batch of this process, 100)
    """


def unittest():
    from mpi4py import MPI

    from PuzzleLib.Modules.BatchNorm import unittest as batchNormTest

    # NOTE: on one process the module is BatchNorm's equal; BatchNorm's self-test runs on it unchanged
    batchNormTest(lambda size: SyncBatchNorm(size, comm=MPI.COMM_SELF))


if __name__ == "__main__":
    unittest()
