"""ElementWise primitives of the CUDA backend (`ElementWisePrimitives` of `Backend.Contract`), with the kernels of
``Kernels/ElementWise.cu``. Twin of `Backend.Cpu.ElementWise`; `Backend.ElementWise` checks the arguments. float32.
"""

import numpy as np

from PuzzleLib.Backend.Cuda.Launch import KernelSource, ceilDiv, grid1d
from PuzzleLib.Kernels import ElementWise as declared

dataTypes = (np.dtype(np.float32),)

kernels = KernelSource(declared)


def activation(act, data, out, slope):
    n = data.size
    grid, block = grid1d(n, declared.BLOCK_SIZE)
    kernels.launch(declared.activationForward, grid, block, {"act": act}, x=data, y=out, n=n, slope=slope)


def activationBackward(act, grad, outdata, ingrad, slope):
    n = grad.size
    grid, block = grid1d(n, declared.BLOCK_SIZE)
    kernels.launch(
        declared.activationBackward, grid, block, {"act": act}, grad=grad, y=outdata, ingrad=ingrad, n=n, slope=slope
    )


def addVectorToRows(data, vector, out):
    rows, cols = data.shape
    grid, block = grid1d(rows * cols, declared.BLOCK_SIZE)
    kernels.launch(declared.addVectorToRows, grid, block, data=data, vector=vector, out=out, rows=rows, cols=cols)


def softmaxCrossEntropy(scores, labels, grad, rowStats, gradScale):
    """One warp per row (``CE_WARPS`` rows per block)."""
    rows, classes = scores.shape
    grid, block = (ceilDiv(rows, declared.CE_WARPS), 1, 1), (32 * declared.CE_WARPS, 1, 1)
    kernels.launch(
        declared.softmaxCrossEntropy, grid, block, scores=scores, labels=labels, grad=grad, rowStats=rowStats,
        rows=rows, classes=classes, gradScale=gradScale,
    )
