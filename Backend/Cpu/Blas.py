"""Blas of the CPU backend, over numpy (the host BLAS does `gemm`). Same signatures as `Backend.Cuda.Blas`."""

import numpy as np

from PuzzleLib.Backend.Cpu.GPUArray import GPUArray, empty, hostView


def checkSame(name, x, y):
    if not isinstance(x, GPUArray) or not isinstance(y, GPUArray):
        raise TypeError("%s expects GPUArrays; got %s and %s" % (name, type(x).__name__, type(y).__name__))
    if x.shape != y.shape or x.dtype != y.dtype:
        raise ValueError(
            "%s expects arrays of one shape and dtype; got %s %s and %s %s" % (name, x.shape, x.dtype, y.shape, y.dtype)
        )


def addVectorToVector(x, y, out=None, alpha=1.0, beta=1.0):
    """out = alpha * x + beta * y, elementwise; `out` may be `x` or `y`."""
    checkSame("addVectorToVector", x, y)
    out = empty(x.shape, x.dtype) if out is None else out
    checkSame("addVectorToVector", x, out)

    hx, hy, hout = hostView(x), hostView(y), hostView(out)
    if hout is hy or np.shares_memory(hout, hy):
        np.multiply(hy, beta, out=hout)
        hout += alpha * hx
    else:
        np.multiply(hx, alpha, out=hout)
        hout += beta * hy
    return out


def toVectorAddVector(y, x, alpha=1.0):
    """y += alpha * x; returns y."""
    checkSame("toVectorAddVector", y, x)
    hostView(y)[...] += alpha * hostView(x)
    return y


def gemm(A, B, out=None, transpA=False, transpB=False, alpha=1.0, beta=0.0):
    """out = alpha * op(A) @ op(B) + beta * out, with op(X) = X.T when its transp flag is set (2D, one dtype)."""
    if A.ndim != 2 or B.ndim != 2 or A.dtype != B.dtype:
        raise ValueError(
            "gemm expects 2D arrays of one dtype; got %s %s and %s %s" % (A.shape, A.dtype, B.shape, B.dtype)
        )

    hA, hB = hostView(A), hostView(B)
    hA, hB = hA.T if transpA else hA, hB.T if transpB else hB
    if hA.shape[1] != hB.shape[0]:
        raise ValueError("gemm: op(A) is %s and op(B) is %s; inner dimensions differ" % (hA.shape, hB.shape))

    shape = (hA.shape[0], hB.shape[1])
    if out is None:
        out, beta = empty(shape, A.dtype), 0.0
    elif out.shape != shape or out.dtype != A.dtype:
        raise ValueError(
            "gemm: out must have shape %s and dtype %s; got %s %s" % (shape, A.dtype, out.shape, out.dtype)
        )

    hout = hostView(out)
    if beta == 0.0:
        np.matmul(hA, hB, out=hout)
        if alpha != 1.0:
            hout *= alpha
    else:
        product = np.matmul(hA, hB)
        hout *= beta
        hout += alpha * product
    return out


def sumOnMatrix(A, out=None, cols=True, alpha=1.0, beta=0.0):
    """out = alpha * (sum of A's rows if cols else sum of its columns) + beta * out, for a 2D array A."""
    if A.ndim != 2:
        raise ValueError("sumOnMatrix expects a 2D array; got shape %s" % (A.shape,))

    length = A.shape[1] if cols else A.shape[0]
    if out is None:
        out, beta = empty((length,), A.dtype), 0.0
    elif out.shape != (length,) or out.dtype != A.dtype:
        raise ValueError(
            "sumOnMatrix: out must have shape %s and dtype %s; got %s %s" % ((length,), A.dtype, out.shape, out.dtype)
        )

    hout = hostView(out)
    total = hostView(A).sum(axis=0 if cols else 1)
    if beta == 0.0:
        np.multiply(total, alpha, out=hout)
    else:
        hout *= beta
        hout += alpha * total
    return out
