"""SyncBatchNorm3D: batch normalization of 3D maps synchronized across processes (MPI)."""

from PuzzleLib.Modules.BatchNorm3D import BatchNorm3D
from PuzzleLib.Modules.SyncBatchNormND import SyncStatistics


class SyncBatchNorm3D(SyncStatistics, BatchNorm3D):
    """`BatchNorm3D` synchronized across the processes of an MPI communicator (`SyncStatistics`): in training each map
    is normalized over the batches of every process together and its 3 spatial axes.

    Args:
        maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace, axis: as in `BatchNorm3D`.
        comm (mpi4py.MPI.Intracomm or None): keyword only; ``MPI.COMM_WORLD`` when None.

    Shape:
        data and output: (batch, maps, depth, height, width) (maps last with ``axis=-1``), the batch possibly
        different on each process (0 allowed); scale, bias, mean, var: (1, maps, 1, 1, 1), float32.
    """


def unittest():
    from mpi4py import MPI

    from PuzzleLib.TestLib.Reference import checkModule

    checkModule(SyncBatchNorm3D(3, comm=MPI.COMM_SELF), (2, 3, 4, 3, 5), seed=3)


if __name__ == "__main__":
    unittest()
