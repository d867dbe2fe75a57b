"""Blas primitives of the CUDA backend (`BlasPrimitives` of `Backend.Contract`): cuBLAS through scikit-cuda where it
loads, else the project's kernels (``Kernels/Blas.cu``). Twin of `Backend.Cpu.Blas`; `Backend.Blas` checks the
arguments and allocates the outputs. float32, C-contiguous operands.

cuBLAS is column-major: a row-major matrix is its transpose in column-major terms, so the row-major product
C = op(A) @ op(B) is computed as the column-major C^T = op(B)^T @ op(A)^T, with no copies. cuBLAS loads at the first
call (`cublas`), after the primary context was pushed (`Driver`), so it works in the same context as everything else;
when it cannot load, one log line says why and the kernels serve every call.
"""

import threading

import numpy as np

from PuzzleLib.Backend.Cuda import Driver
from PuzzleLib.Backend.Cuda.GPUArray import empty
from PuzzleLib.Backend.Cuda.Launch import MAX_GRID_Y, KernelSource, ceilDiv, grid1d
from PuzzleLib.Backend.Cuda.SkcudaCompat import loadCublas
from PuzzleLib.Config import logger
from PuzzleLib.Kernels import Blas as declared

dataTypes = (np.dtype(np.float32),)

kernels = KernelSource(declared)
# NOTE: reentrant, so that a thread whose interrupt left it held (a `with` block cut short at its exit) can still
# take it
lock = threading.RLock()
loaded, onesCache = {}, {}


def cublas():
    """``(skcuda.cublas, handle)`` on the first call that finds cuBLAS, else None (logged once, with the reason)."""
    # NOTE: the calls after the first read the outcome without the lock, so no interrupt can leave it held there
    if "cublas" in loaded:
        return loaded["cublas"]
    with lock:
        if "cublas" not in loaded:
            Driver.context()
            try:
                module = loadCublas()
                handle = module.cublasCreate()
                Driver.onExit(lambda: module.cublasDestroy(handle))
                loaded["cublas"] = (module, handle)
            except Exception as e:
                # NOTE: any failure of a 2019 third-party import (library lookup, numpy or setuptools changes) means
                # the fallback
                loaded["cublas"] = None
                reason = "%s: %s" % (type(e).__name__, e)
                logger.info("Blas: cuBLAS via scikit-cuda unavailable (%s); using the project's kernels", reason)
        return loaded["cublas"]


def addVectorToVector(x, y, out, alpha, beta):
    n = x.size
    library = cublas()
    # NOTE: the kernel never reads y when beta == 0 (an inf there would give 0 * inf = NaN); cuBLAS does not promise it
    if library is not None and n < 2**31 and beta != 0.0:
        module, handle = library
        module.cublasSgeam(handle, "n", "n", n, 1, float(alpha), x.ptr, n, float(beta), y.ptr, n, out.ptr, n)
    else:
        grid, block = grid1d(n, declared.BLOCK_SIZE)
        kernels.launch(declared.axpby, grid, block, x=x, y=y, out=out, n=n, alpha=alpha, beta=beta)


def toVectorAddVector(y, x, alpha):
    n = y.size
    library = cublas()
    if library is not None and n < 2**31:
        module, handle = library
        module.cublasSaxpy(handle, n, float(alpha), x.ptr, 1, y.ptr, 1)
    else:
        grid, block = grid1d(n, declared.BLOCK_SIZE)
        kernels.launch(declared.axpby, grid, block, x=x, y=y, out=y, n=n, alpha=alpha, beta=1.0)


def gemm(A, B, out, transpA, transpB, alpha, beta):
    M, K = A.shape[::-1] if transpA else A.shape
    N = B.shape[0] if transpB else B.shape[1]

    library = cublas()
    if library is not None:
        module, handle = library
        module.cublasSgemm(
            handle, "t" if transpB else "n", "t" if transpA else "n", N, M, K, float(alpha),
            B.ptr, B.shape[1], A.ptr, A.shape[1], float(beta), out.ptr, N
        )
        return

    sai, sak = (1, M) if transpA else (K, 1)
    sbk, sbj = (1, K) if transpB else (N, 1)
    # NOTE: rows go on gridDim.y (at most 65535 blocks), so very tall products run in bands of rows
    band = MAX_GRID_Y * declared.GEMM_TILE
    for row in range(0, M, band):
        rows = min(band, M - row)
        grid = (ceilDiv(N, declared.GEMM_TILE), ceilDiv(rows, declared.GEMM_TILE), 1)
        kernels.launch(
            declared.gemm, grid, (declared.GEMM_TILE, declared.GEMM_TILE, 1), A=A.ptr + 4 * row * sai, B=B,
            C=out.ptr + 4 * row * N, M=rows, N=N, K=K, sai=sai, sak=sak, sbk=sbk, sbj=sbj, alpha=alpha, beta=beta,
        )


def ones(n):
    """A cached device vector of at least n ones (the cuBLAS sums are products with it)."""
    vector = onesCache.get("ones")
    if vector is None or vector.size < n:
        vector = empty((max(n, 1024),), np.float32).fill(1.0)
        onesCache["ones"] = vector
    return vector


def sumOnMatrix(A, out, cols, alpha, beta):
    R, C = A.shape
    library = cublas()
    if library is not None and R > 0 and C > 0:
        # NOTE: in column-major terms A is the C x R matrix A^T, so a row sum is A^T @ 1 and a column sum A @ 1
        module, handle = library
        vector = ones(R if cols else C)
        module.cublasSgemv(handle, "n" if cols else "t", C, R, float(alpha), A.ptr, C, vector.ptr, 1, float(beta),
                           out.ptr, 1)
    elif cols:
        grid, block = (ceilDiv(C, declared.BLOCK_SIZE), 1, 1), (declared.BLOCK_SIZE, 1, 1)
        kernels.launch(declared.sumCols, grid, block, A=A, out=out, R=R, C=C, alpha=alpha, beta=beta)
    else:
        grid, block = (ceilDiv(R, declared.BLOCK_SIZE // 32), 1, 1), (declared.BLOCK_SIZE, 1, 1)
        kernels.launch(declared.sumRows, grid, block, A=A, out=out, R=R, C=C, alpha=alpha, beta=beta)
