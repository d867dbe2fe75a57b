"""SyncBatchNorm2D: batch normalization of 2D maps synchronized across processes (MPI)."""

from PuzzleLib.Modules.BatchNorm2D import BatchNorm2D
from PuzzleLib.Modules.SyncBatchNormND import SyncStatistics


class SyncBatchNorm2D(SyncStatistics, BatchNorm2D):
    """`BatchNorm2D` synchronized across the processes of an MPI communicator (`SyncStatistics`): in training each map
    is normalized over the batches of every process together and its 2 spatial axes.

    Args:
        maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace, axis: as in `BatchNorm2D`.
        comm (mpi4py.MPI.Intracomm or None): keyword only; ``MPI.COMM_WORLD`` when None.

    Shape:
        data and output: (batch, maps, height, width) (maps last with ``axis=-1``), the batch possibly different on each
        process (0 allowed); scale, bias, mean, var: (1, maps, 1, 1), float32.
    """


def unittest():
    from mpi4py import MPI

    from PuzzleLib.TestLib.Reference import checkModule

    checkModule(SyncBatchNorm2D(4, comm=MPI.COMM_SELF), (3, 4, 6, 5), seed=2)


if __name__ == "__main__":
    unittest()
