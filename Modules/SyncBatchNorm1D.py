"""SyncBatchNorm1D: batch normalization of 1D maps synchronized across processes (MPI)."""

from PuzzleLib.Modules.BatchNorm1D import BatchNorm1D
from PuzzleLib.Modules.SyncBatchNormND import SyncStatistics


class SyncBatchNorm1D(SyncStatistics, BatchNorm1D):
    """`BatchNorm1D` synchronized across the processes of an MPI communicator (`SyncStatistics`): in training each map
    is normalized over the batches of every process together and its 1 spatial axes.

    Args:
        maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace, axis: as in `BatchNorm1D`.
        comm (mpi4py.MPI.Intracomm or None): keyword only; ``MPI.COMM_WORLD`` when None.

    Shape:
        data and output: (batch, maps, length) (maps last with ``axis=-1``), the batch possibly different on each
        process (0 allowed); scale, bias, mean, var: (1, maps, 1), float32.
    """


def unittest():
    from mpi4py import MPI

    from PuzzleLib.TestLib.Reference import checkModule

    checkModule(SyncBatchNorm1D(3, comm=MPI.COMM_SELF), (4, 3, 7), seed=1)


if __name__ == "__main__":
    unittest()
