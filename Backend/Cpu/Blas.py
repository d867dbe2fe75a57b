"""Blas primitives of the CPU backend (`BlasPrimitives` of the contract), over numpy; the host BLAS does `gemm`.
Twin of `Backend.Cuda.Blas`; `Backend.Blas` checks the arguments and allocates the outputs."""

import numpy as np

from PuzzleLib.Backend.Cpu.GPUArray import hostView

dataTypes = (np.dtype(np.float32), np.dtype(np.float64))


def addVectorToVector(x, y, out, alpha, beta):
    hx, hy, hout = hostView(x), hostView(y), hostView(out)
    if beta == 0.0:
        # NOTE: beta == 0 never reads y (as gemm's beta), so an inf or NaN left there does not survive as 0 * inf
        np.multiply(hx, alpha, out=hout)
    elif np.shares_memory(hout, hy):
        np.multiply(hy, beta, out=hout)
        hout += alpha * hx
    else:
        np.multiply(hx, alpha, out=hout)
        hout += beta * hy


def toVectorAddVector(y, x, alpha):
    hostView(y)[...] += alpha * hostView(x)


def gemm(A, B, out, transpA, transpB, alpha, beta):
    hA, hB, hout = hostView(A), hostView(B), hostView(out)
    hA, hB = hA.T if transpA else hA, hB.T if transpB else hB
    if beta == 0.0:
        np.matmul(hA, hB, out=hout)
        if alpha != 1.0:
            hout *= alpha
    else:
        product = np.matmul(hA, hB)
        hout *= beta
        hout += alpha * product


def sumOnMatrix(A, out, cols, alpha, beta):
    hout = hostView(out)
    total = hostView(A).sum(axis=0 if cols else 1)
    if beta == 0.0:
        np.multiply(total, alpha, out=hout)
    else:
        hout *= beta
        hout += alpha * total
