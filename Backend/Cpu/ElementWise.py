"""ElementWise primitives of the CPU backend (`ElementWisePrimitives` of `Backend.Contract`, which states what each
function computes), over numpy. Twin of `Backend.Cuda.ElementWise` (kernels in ``Kernels/ElementWise.cu``); arguments
are checked by `Backend.ElementWise`. These functions compute in the data's own dtype (float32, or float64 for
gradient checks).
"""

import numpy as np

from PuzzleLib.Backend.Contract import FusedActivation
from PuzzleLib.Backend.Cpu.GPUArray import hostView
from PuzzleLib.Backend.Cpu.NumpyChunks import activate, activationDerivative

dataTypes = (np.dtype(np.float32), np.dtype(np.float64))


def sigmoid(x, out):
    # NOTE: 1 / (1 + exp(-x)) overflows for x < -709 in float64; the tanh form is the same function and never does
    np.tanh(0.5 * x, out=out)
    out += 1.0
    out *= 0.5


def relu(x, out):
    np.maximum(x, 0.0, out=out)


def tanh(x, out):
    np.tanh(x, out=out)


forwards = {"sigmoid": sigmoid, "relu": relu, "tanh": tanh}

backwards = {
    "sigmoid": lambda g, y: g * y * (1.0 - y),
    "relu": lambda g, y: np.where(y > 0.0, g, 0.0),
    "tanh": lambda g, y: g * (1.0 - y * y),
}


def activation(act, data, out, slope):
    x, y = hostView(data), hostView(out)
    if act in forwards:
        forwards[act](x, y)
    else:
        # NOTE: leakyRelu and elu are the batch norm's fused activations, computed by the same numpy code
        np.copyto(y, x)
        activate(y, FusedActivation(act, slope))


def activationBackward(act, grad, outdata, ingrad, slope):
    g, y = hostView(grad), hostView(outdata)
    if act in backwards:
        hostView(ingrad)[...] = backwards[act](g, y)
    else:
        hostView(ingrad)[...] = g * activationDerivative(y, FusedActivation(act, slope), y.dtype)


def addVectorToRows(data, vector, out):
    np.add(hostView(data), hostView(vector), out=hostView(out))


def softmaxCrossEntropy(scores, labels, grad, rowStats, gradScale):
    s, lab = hostView(scores), hostView(labels)
    rows, classes = s.shape

    invalid = (lab < 0) | (lab >= classes)
    safe = np.where(invalid, 0, lab)
    index = np.arange(rows)

    shifted = s - s.max(axis=1, keepdims=True)
    logSum = np.log(np.exp(shifted).sum(axis=1))
    prob = np.exp(shifted - logSum[:, None])

    # NOTE: every statistic is taken before grad is written, since grad may be the scores' own memory
    stats = hostView(rowStats)
    stats[:, 0] = np.where(invalid, 0.0, logSum - shifted[index, safe])
    stats[:, 1] = (~invalid) & (np.argmax(s, axis=1) == lab)
    stats[:, 2] = invalid

    onehot = np.zeros_like(s)
    onehot[index[~invalid], safe[~invalid]] = 1.0
    np.multiply(onehot - prob, gradScale, out=hostView(grad))
