"""Blas of the CUDA backend: cuBLAS through scikit-cuda where it loads, else the project's kernels
(``Kernels/Blas.cu``). Same signatures as `Backend.Cpu.Blas`; float32, C-contiguous operands.

cuBLAS is column-major: a row-major matrix is its transpose in column-major terms, so the row-major product
C = op(A) @ op(B) is computed as the column-major C^T = op(B)^T @ op(A)^T, with no copies. The cuBLAS handle is
created after the primary context was pushed (`Driver`), so cuBLAS works in the same context as everything else.
"""

import numpy as np

from PuzzleLib.Backend.Cuda import Driver
from PuzzleLib.Backend.Cuda.GPUArray import GPUArray, empty
from PuzzleLib.Backend.Cuda.SkcudaCompat import loadCublas
from PuzzleLib.Backend.Cuda.SourceModule import Kernels
from PuzzleLib.Config import logger

BLOCK_SIZE = 256
GEMM_TILE = 16
MAX_GRID_Y = 65535

try:
    cublas = loadCublas()
    handle = cublas.cublasCreate()
    Driver.onExit(lambda: cublas.cublasDestroy(handle))
    implementation = "cublas"
except Exception as e:
    # NOTE: any failure of a 2019 third-party import (library lookup, numpy or setuptools changes) means the fallback
    cublas, handle, implementation = None, None, "kernels"
    logger.info("Blas: cuBLAS via scikit-cuda unavailable (%s: %s); using the project's kernels", type(e).__name__, e)

kernels = Kernels("Blas.cu", defines={"BLOCK_SIZE": BLOCK_SIZE, "GEMM_TILE": GEMM_TILE})
onesCache = {}


def checkArray(name, ary):
    if not isinstance(ary, GPUArray):
        raise TypeError("%s expects CUDA GPUArrays; got %s" % (name, type(ary).__name__))
    if ary.dtype != np.float32:
        raise ValueError("%s supports float32 on CUDA; got %s" % (name, ary.dtype))


def checkSame(name, x, y):
    checkArray(name, x)
    checkArray(name, y)
    if x.shape != y.shape:
        raise ValueError("%s expects arrays of one shape and dtype; got %s %s and %s %s"
                         % (name, x.shape, x.dtype, y.shape, y.dtype))


def launch1d(n):
    return (max(1, min(-(-n // BLOCK_SIZE), 65535)), 1, 1), (BLOCK_SIZE, 1, 1)


def addVectorToVector(x, y, out=None, alpha=1.0, beta=1.0):
    """out = alpha * x + beta * y, elementwise; `out` may be `x` or `y`; returns out."""
    checkSame("addVectorToVector", x, y)
    out = empty(x.shape, x.dtype) if out is None else out
    checkSame("addVectorToVector", x, out)

    n = x.size
    if n == 0:
        return out

    if cublas is not None and n < 2**31:
        cublas.cublasSgeam(handle, "n", "n", n, 1, float(alpha), x.ptr, n, float(beta), y.ptr, n, out.ptr, n)
    else:
        grid, block = launch1d(n)
        kernels.get("blasAxpby", "PPPqff").prepared_call(grid, block, x.ptr, y.ptr, out.ptr, n, alpha, beta)
    return out


def toVectorAddVector(y, x, alpha=1.0):
    """y += alpha * x; returns y."""
    checkSame("toVectorAddVector", y, x)

    n = y.size
    if n == 0:
        return y

    if cublas is not None and n < 2**31:
        cublas.cublasSaxpy(handle, n, float(alpha), x.ptr, 1, y.ptr, 1)
    else:
        grid, block = launch1d(n)
        kernels.get("blasAxpby", "PPPqff").prepared_call(grid, block, x.ptr, y.ptr, y.ptr, n, alpha, 1.0)
    return y


def gemm(A, B, out=None, transpA=False, transpB=False, alpha=1.0, beta=0.0):
    """out = alpha * op(A) @ op(B) + beta * out, with op(X) = X.T when its transp flag is set (2D float32); returns out.

    Raises:
        ValueError: for operands that are not 2D, whose inner dimensions differ, or an `out` of the wrong shape.
    """
    checkArray("gemm", A)
    checkArray("gemm", B)
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError("gemm expects 2D arrays; got %s and %s" % (A.shape, B.shape))

    M, K = (A.shape[1], A.shape[0]) if transpA else A.shape
    KB, N = (B.shape[1], B.shape[0]) if transpB else B.shape
    if K != KB:
        raise ValueError("gemm: op(A) is %s and op(B) is %s; inner dimensions differ" % ((M, K), (KB, N)))

    if out is None:
        out, beta = empty((M, N), np.float32), 0.0
    else:
        checkArray("gemm", out)
        if out.shape != (M, N):
            raise ValueError("gemm: out must have shape %s; got %s" % ((M, N), out.shape))

    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.fill(0) if beta == 0.0 else addVectorToVector(out, out, out=out, alpha=0.0, beta=beta)

    if cublas is not None:
        cublas.cublasSgemm(
            handle, "t" if transpB else "n", "t" if transpA else "n", N, M, K, float(alpha),
            B.ptr, B.shape[1], A.ptr, A.shape[1], float(beta), out.ptr, N
        )
    else:
        sai, sak = (1, M) if transpA else (K, 1)
        sbk, sbj = (1, K) if transpB else (N, 1)
        func = kernels.get("blasGemm", "PPPiiiqqqqff")
        # NOTE: rows go on gridDim.y (at most 65535 blocks), so very tall products run in bands of rows
        band = MAX_GRID_Y * GEMM_TILE
        for row in range(0, M, band):
            rows = min(band, M - row)
            grid = (-(-N // GEMM_TILE), -(-rows // GEMM_TILE), 1)
            func.prepared_call(
                grid, (GEMM_TILE, GEMM_TILE, 1), A.ptr + 4 * row * sai, B.ptr, out.ptr + 4 * row * N, rows, N, K,
                sai, sak, sbk, sbj, alpha, beta
            )
    return out


def ones(n):
    """A cached device vector of at least n ones (the cuBLAS sums are products with it)."""
    vector = onesCache.get("ones")
    if vector is None or vector.size < n:
        vector = empty((max(n, 1024),), np.float32).fill(1.0)
        onesCache["ones"] = vector
    return vector


def sumOnMatrix(A, out=None, cols=True, alpha=1.0, beta=0.0):
    """out = alpha * (sum of A's rows if cols else sum of its columns) + beta * out, for a 2D float32 A; returns out.

    cols=True gives shape (A.shape[1],), cols=False gives (A.shape[0],).
    """
    checkArray("sumOnMatrix", A)
    if A.ndim != 2:
        raise ValueError("sumOnMatrix expects a 2D array; got shape %s" % (A.shape,))

    R, C = A.shape
    length = C if cols else R
    if out is None:
        out, beta = empty((length,), np.float32), 0.0
    else:
        checkArray("sumOnMatrix", out)
        if out.shape != (length,):
            raise ValueError("sumOnMatrix: out must have shape %s; got %s" % ((length,), out.shape))

    if length == 0:
        return out

    if cublas is not None and R > 0 and C > 0:
        # NOTE: in column-major terms A is the C x R matrix A^T, so a row sum is A^T @ 1 and a column sum A @ 1
        vector = ones(R if cols else C)
        cublas.cublasSgemv(handle, "n" if cols else "t", C, R, float(alpha), A.ptr, C, vector.ptr, 1, float(beta),
                           out.ptr, 1)
    elif cols:
        grid, block = (-(-C // BLOCK_SIZE), 1, 1), (BLOCK_SIZE, 1, 1)
        kernels.get("blasSumCols", "PPqqff").prepared_call(grid, block, A.ptr, out.ptr, R, C, alpha, beta)
    else:
        grid, block = (-(-R // (BLOCK_SIZE // 32)), 1, 1), (BLOCK_SIZE, 1, 1)
        kernels.get("blasSumRows", "PPqqff").prepared_call(grid, block, A.ptr, out.ptr, R, C, alpha, beta)
    return out
