"""Vector and matrix operations for modules and optimizers, on the backend of the arrays they are given.

This file checks the arguments, allocates outputs from the operands' pool, handles empty operands, and calls the
backend's primitives (`Backend.Cpu.Blas` over numpy; `Backend.Cuda.Blas`, cuBLAS through scikit-cuda where it loads,
else the project's kernels). Operands share one dtype of the backend's ``blas.dataTypes`` (float32 everywhere, float64
too on the CPU backend).

Raises (every function):
    TypeError: an operand is not a GPUArray, or operands live on two backends.
    ValueError: operands of another dtype or shape than the operation needs (the message names both).
"""

from PuzzleLib.Backend.Checks import checkArray, commonBackend

__all__ = ["addVectorToVector", "toVectorAddVector", "gemm", "sumOnMatrix"]


def checkOperands(x, **others):
    backend = commonBackend(x=x, **others)
    checkArray("x", x, dtypes=backend.blas.dataTypes)
    return backend


def addVectorToVector(x, y, out=None, alpha=1.0, beta=1.0):
    """``out = alpha * x + beta * y`` elementwise; `out` (a new pool array when None) may be `x` or `y`; returns out.
    With ``beta == 0`` `y` is not read (as gemm's beta): an inf or NaN there does not survive as 0 * inf."""
    backend = checkOperands(x, y=y, out=out)
    checkArray("y", y, dtypes=(x.dtype,), shape=x.shape)
    if out is None:
        out = backend.gpuarray.empty(x.shape, x.dtype)
    checkArray("out", out, dtypes=(x.dtype,), shape=x.shape)

    if x.size:
        backend.blas.addVectorToVector(x, y, out, alpha, beta)
    return out


def toVectorAddVector(y, x, alpha=1.0):
    """``y += alpha * x`` elementwise; returns y."""
    backend = checkOperands(x, y=y)
    checkArray("y", y, dtypes=(x.dtype,), shape=x.shape)

    if x.size:
        backend.blas.toVectorAddVector(y, x, alpha)
    return y


def gemm(A, B, out=None, transpA=False, transpB=False, alpha=1.0, beta=0.0):
    """``out = alpha * op(A) @ op(B) + beta * out`` on 2D row-major arrays, op(X) = X.T when its flag is set.

    With ``out=None`` a new pool array is returned and `beta` is ignored; returns out.
    """
    backend = commonBackend(A=A, B=B, out=out)
    checkArray("A", A, dtypes=backend.blas.dataTypes)
    checkArray("B", B, dtypes=(A.dtype,))
    if A.ndim != 2 or B.ndim != 2:
        raise ValueError("gemm expects 2D arrays; got shapes %s and %s" % (A.shape, B.shape))

    M, K = A.shape[::-1] if transpA else A.shape
    KB, N = B.shape[::-1] if transpB else B.shape
    if K != KB:
        raise ValueError("gemm: op(A) is %s and op(B) is %s; inner dimensions differ" % ((M, K), (KB, N)))

    if out is None:
        out, beta = backend.gpuarray.empty((M, N), A.dtype), 0.0
    checkArray("out", out, dtypes=(A.dtype,), shape=(M, N))

    if out.size == 0:
        return out
    if K == 0:
        # NOTE: a product over no terms is zero, so only the beta term remains (beta == 0 never reads out, as BLAS)
        return out.fill(0) if beta == 0.0 else addVectorToVector(out, out, out=out, alpha=0.0, beta=beta)
    backend.blas.gemm(A, B, out, transpA, transpB, alpha, beta)
    return out


def sumOnMatrix(A, out=None, cols=True, alpha=1.0, beta=0.0):
    """``out = alpha * (A.sum(axis=0) if cols else A.sum(axis=1)) + beta * out`` for a 2D `A`: shape (A.shape[1],)
    with `cols`, else (A.shape[0],). With ``out=None`` a new pool array is returned and `beta` is ignored; returns out.
    """
    backend = commonBackend(A=A, out=out)
    checkArray("A", A, dtypes=backend.blas.dataTypes)
    if A.ndim != 2:
        raise ValueError("sumOnMatrix expects a 2D array; got shape %s" % (A.shape,))

    length = A.shape[1] if cols else A.shape[0]
    if out is None:
        out, beta = backend.gpuarray.empty((length,), A.dtype), 0.0
    checkArray("out", out, dtypes=(A.dtype,), shape=(length,))

    if length:
        backend.blas.sumOnMatrix(A, out, cols, alpha, beta)
    return out
