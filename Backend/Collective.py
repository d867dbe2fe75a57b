"""Exchanges between processes over MPI (mpi4py), for batch normalization synchronized across processes.

`Exchange` gathers small per-map arrays (moments, gradient sums) from every process of a communicator. Where the arrays
are host memory (the CPU backend) MPI reads them in place, through DLPack; device arrays are staged through
page-locked host buffers (kept from call to call) unless the MPI library is CUDA-aware, in which case MPI reads the
device memory itself (through ``__cuda_array_interface__``). `mergeMoments` merges per-process moments exactly in
float64 with the pairwise formula of Chan, Golub & LeVeque (1979), in rank order, so every process computes the same
bits.

mpi4py is imported on first use: the rest of the library works without it (``pip install "PuzzleLib[mpi]"`` installs
mpi4py and an MPI).
"""

import ctypes
import os

import numpy as np

kDLCPU = 1
installHint = 'pip install "PuzzleLib[mpi]" (mpi4py and the Open MPI wheel) or mpi4py over your system\'s MPI'


def importMpi():
    """The ``mpi4py.MPI`` module.

    Raises:
        ImportError: mpi4py (or the MPI library it needs) is missing, with the command that installs it.
    """
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("synchronized batch normalization needs mpi4py and an MPI library (%s): %s" % (
            installHint, e)) from None
    return MPI


def checkCommunicator(owner, comm):
    """`comm`, or ``MPI.COMM_WORLD`` when None, checked to be an mpi4py intra-communicator.

    Raises:
        ValueError: `comm` is something else (an inter-communicator included), naming `owner`, what was expected and
            what came.
        ImportError: as `importMpi`.
    """
    MPI = importMpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Intracomm) or comm == MPI.COMM_NULL:
        raise ValueError(
            "%s: comm must be an mpi4py intra-communicator (mpi4py.MPI.Intracomm, such as MPI.COMM_WORLD); got %r"
            % (owner, comm)
        )
    return comm


def mpiCudaAware():
    """Whether the MPI library reads device memory itself: ``PUZZLELIB_MPI_CUDA_AWARE`` (``1`` or ``0``) when set, else
    Open MPI's ``MPIX_Query_cuda_support()`` where the library has it, else False (staging is always correct)."""
    setting = os.environ.get("PUZZLELIB_MPI_CUDA_AWARE")
    if setting is not None:
        return setting.strip() == "1"
    try:
        query = ctypes.CDLL(None).MPIX_Query_cuda_support
    except (AttributeError, OSError):
        return False
    query.restype = ctypes.c_int
    return bool(query())


class Exchange:
    """Gathers from every process of one communicator.

    Args:
        comm (mpi4py.MPI.Intracomm): the processes; every one of them must make the same calls in the same order.

    Attributes:
        comm: the communicator; rank, size (int): this process's rank and the number of processes.
        cudaAware (bool): device arrays go to MPI directly (`mpiCudaAware`), else through page-locked host buffers.
    """

    def __init__(self, comm):
        self.comm = comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.cudaAware = None
        self.staging = {}

    def allgatherChecked(self, values, problem):
        """Gathers every process's host `values` (1D, the same length and dtype everywhere) together with whether it
        reports a `problem` (a message, else None), in one exchange; when any process reports one, a second exchange
        gathers every message.

        Returns:
            ``(gathered, problems)``: an array of shape (size, len(values)) and a list of (rank, message) for the
            processes that reported a problem (empty when none did); every process returns the same.
        """
        values = np.asarray(values)
        record = np.empty(1 + values.size, values.dtype)
        record[0], record[1:] = problem is not None, values
        gathered = self.allgatherHost(record)
        problems = []
        if gathered[:, 0].any():
            # NOTE: every process saw the same flags, so every one of them takes this second exchange
            messages = self.comm.allgather(problem)
            problems = [(rank, message) for rank, message in enumerate(messages) if message is not None]
        return gathered[:, 1:], problems

    def allgatherHost(self, values):
        """Gathers one host array per process (the same shape and dtype on every one): an array of shape
        ``(size,) + values.shape``, rank r's values at [r]."""
        values = np.ascontiguousarray(values)
        gathered = np.empty((self.size,) + values.shape, values.dtype)
        self.comm.Allgather(values, gathered)
        return gathered

    def allgather(self, ary):
        """Gathers one GPUArray per process (the same shape and dtype on every one) into a host ndarray of shape
        ``(size,) + ary.shape``: host memory goes to MPI in place, device memory directly where MPI is CUDA-aware and
        through a page-locked buffer otherwise."""
        if ary.__dlpack_device__()[0] == kDLCPU:
            return self.allgatherHost(np.from_dlpack(ary))

        if self.cudaAware is None:
            self.cudaAware = mpiCudaAware()
        if self.cudaAware:
            arrays = ary.backend.gpuarray
            gathered = arrays.empty((self.size,) + ary.shape, ary.dtype)
            self.comm.Allgather(ary, gathered)
            return gathered.get(out=self.hostBuffer(ary, (self.size,) + ary.shape))
        return self.allgatherHost(ary.get(out=self.hostBuffer(ary, ary.shape)))

    def hostBuffer(self, ary, shape):
        """A page-locked host buffer of `shape` and ary's dtype from ary's backend, made once per shape and dtype."""
        key = (shape, ary.dtype)
        if key not in self.staging:
            self.staging[key] = ary.backend.gpuarray.hostBuffer(shape, ary.dtype)
        return self.staging[key]


def mergeMoments(counts, means, variances):
    """Merges per-process moments exactly (Chan, Golub & LeVeque 1979, the pairwise update), in rank order.

    Args:
        counts (array of int, shape (P,)): elements per map of each process's batch (0 allowed).
        means, variances (arrays of shape (P, maps)): each process's per-map mean and biased variance.

    Returns:
        ``(count, mean, var)``: the total count (int) and the float64 per-map mean and biased variance of the union of
        the batches (zeros where the count is 0).
    """
    count = 0
    mean = np.zeros(means.shape[1:], np.float64)
    m2 = np.zeros(means.shape[1:], np.float64)
    for n, mu, var in zip(counts, means, variances, strict=True):
        n = int(n)
        if n == 0:
            continue
        total = count + n
        delta = mu.astype(np.float64) - mean
        mean = mean + delta * (n / total)
        m2 = m2 + var.astype(np.float64) * n + delta * delta * (count * n / total)
        count = total
    return count, mean, (m2 / count if count else m2)
