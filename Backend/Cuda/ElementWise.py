"""ElementWise primitives of the CUDA backend (kernels in ``Kernels/ElementWise.cu``). Twin of
`Backend.Cpu.ElementWise`: same functions, same arguments, same formulas. Arguments are checked by
`Backend.ElementWise`; these functions only launch. fp32 data; all kernels run on the default stream.
"""

import numpy as np

from PuzzleLib.Backend.Cuda.SourceModule import Kernels

BLOCK_SIZE = 256
CE_WARPS = 8
MAX_GRID = 65535

dataTypes = (np.dtype(np.float32),)

kernels = Kernels("ElementWise.cu", defines={"BLOCK_SIZE": BLOCK_SIZE, "CE_WARPS": CE_WARPS})


def launch1d(n):
    # NOTE: the kernels are grid-stride loops, so capping the grid only bounds the launch, never the size
    return (max(1, min(-(-n // BLOCK_SIZE), MAX_GRID)), 1, 1), (BLOCK_SIZE, 1, 1)


def activation(act, data, out):
    """out = act(data); `out` may be `data`."""
    n = data.size
    if n == 0:
        return
    grid, block = launch1d(n)
    kernels.get("%sForward" % act, "PPq").prepared_call(grid, block, data.ptr, out.ptr, n)


def activationBackward(act, grad, outdata, ingrad):
    """ingrad = grad * act'(x), expressed through the forward's output y = `outdata`; `ingrad` may be `grad`."""
    n = grad.size
    if n == 0:
        return
    grid, block = launch1d(n)
    kernels.get("%sBackward" % act, "PPPq").prepared_call(grid, block, grad.ptr, outdata.ptr, ingrad.ptr, n)


def addVectorToRows(data, vector, out):
    """out[r, c] = data[r, c] + vector[c]; `out` may be `data`."""
    rows, cols = data.shape
    if rows * cols == 0:
        return
    grid, block = launch1d(rows * cols)
    kernels.get("addVectorToRows", "PPPqq").prepared_call(grid, block, data.ptr, vector.ptr, out.ptr, rows, cols)


def softmaxCrossEntropy(scores, labels, grad, rowStats, gradScale):
    """Per row of (rows, classes) scores with int32 labels: grad = (onehot - softmax) * gradScale, and rowStats[r] =
    (-log softmax[label], 1 if argmax == label else 0, 1 if the label is out of range else 0)."""
    rows, classes = scores.shape
    if rows == 0:
        return
    grid, block = (-(-rows // CE_WARPS), 1, 1), (32 * CE_WARPS, 1, 1)
    kernels.get("softmaxCrossEntropy", "PPPPqif").prepared_call(
        grid, block, scores.ptr, labels.ptr, grad.ptr, rowStats.ptr, rows, classes, gradScale
    )
