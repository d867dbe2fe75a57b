"""Elementwise operations of the training stack (activations, bias add, softmax cross-entropy), on the backend of the
arrays they are given.

This file is backend-independent: it checks the arguments, allocates outputs from the operands' pool and calls the
backend's primitives (`Backend.Cpu.ElementWise` over numpy, `Backend.Cuda.ElementWise` with the kernels of
``Kernels/ElementWise.cu``), so both backends agree on every check.

- ``activation(data, act, out=None, slope=None)``: ``out = act(data)`` for act in `activations`; `out` may be `data`
  (in place). leakyRelu: ``x``, or ``slope * x`` below 0 (default slope 0.01); elu: ``x``, or
  ``slope * (exp(x) - 1)`` below 0 (Clevert et al. 2015, arXiv 1511.07289; slope is its alpha, default 1.0): the
  formulas of the batch norm's fused activations (`Contract.FusedActivation`).
- ``activationBackward(grad, outdata, act, out=None, slope=None)``: the gradient of the input, from the forward's
  *output* (sigmoid: ``grad * y * (1 - y)``, relu: ``grad * (y > 0)``, tanh: ``grad * (1 - y**2)``, leakyRelu:
  ``grad``, or ``grad * slope`` where y <= 0, elu: ``grad``, or ``grad * (y + slope)`` where y <= 0); `out` may be
  `grad`.
- ``addVectorToRows(data, vector, out=None)``: ``out[r, c] = data[r, c] + vector[c]``; `out` may be `data`.
- ``softmaxCrossEntropy(scores, labels, out=None)``: returns ``(grad, lossSum, correct)`` with
  ``grad = (onehot(labels) - softmax(scores)) / batch`` (the negated gradient of the mean loss: PuzzleLib's sign
  convention), ``lossSum = sum_r -log softmax(scores)[r, labels[r]]`` and ``correct`` the number of rows whose largest
  score (first on ties) is at the label.

`dataTypes(backend)` lists the float dtypes a backend computes these in: float32 everywhere, plus float64 on the CPU
backend (for finite-difference gradient checks).
"""

import numpy as np

from PuzzleLib.Backend import Blas
from PuzzleLib.Backend.Checks import checkArray, commonBackend, fusedActivation
from PuzzleLib.Backend.Dispatch import currentBackend

activations = ("sigmoid", "relu", "tanh", "leakyRelu", "elu")

__all__ = ["dataTypes", "activations", "activation", "activationBackward", "addVectorToRows", "softmaxCrossEntropy"]


def dataTypes(backend=None):
    """The data dtypes `backend` (a `Contract.Backend`; default: the backend in use) computes these operations in."""
    return (backend or currentBackend()).elementWise.dataTypes


def checkActivation(act, slope=None):
    """The slope `act` computes with (a float: the default where `slope` is None, 0.0 for a kind without one).

    Raises:
        ValueError: an unknown activation, a slope for a kind without one, a slope that is not a finite number >= 0.
    """
    if act not in activations:
        raise ValueError("activation must be one of %s; got %r" % (", ".join(activations), act))
    return fusedActivation(act, slope).slope


def outputFor(backend, out, like):
    if out is None:
        return backend.gpuarray.empty(like.shape, like.dtype)
    checkArray("out", out, dtypes=(like.dtype,), shape=like.shape)
    return out


def activation(data, act, out=None, slope=None):
    """out = act(data), elementwise; returns out (a new pool array when None; may be `data` for in place). `slope` is
    leakyRelu's negative slope or elu's alpha (None: 0.01 and 1.0); the other kinds take none.

    Raises:
        TypeError: a non-GPUArray, or arrays of two backends.
        ValueError: an unknown activation, a bad slope (`checkActivation`), a dtype not in `dataTypes`, an `out` of
            another shape or dtype. Nothing is written then.
    """
    slope = checkActivation(act, slope)
    backend = commonBackend(data=data, out=out)
    checkArray("data", data, dtypes=backend.elementWise.dataTypes)
    out = outputFor(backend, out, data)
    if data.size:
        backend.elementWise.activation(act, data, out, slope)
    return out


def activationBackward(grad, outdata, act, out=None, slope=None):
    """The gradient of an activation's input from the gradient of its output and its output `outdata` (computed with the
    same `slope`); returns out.

    Raises:
        TypeError, ValueError: as `activation`, and when `grad` and `outdata` differ in shape or dtype.
    """
    slope = checkActivation(act, slope)
    backend = commonBackend(grad=grad, outdata=outdata, out=out)
    checkArray("grad", grad, dtypes=backend.elementWise.dataTypes)
    checkArray("outdata", outdata, dtypes=(grad.dtype,), shape=grad.shape)
    out = outputFor(backend, out, grad)
    if grad.size:
        backend.elementWise.activationBackward(act, grad, outdata, out, slope)
    return out


def addVectorToRows(data, vector, out=None):
    """out[r, c] = data[r, c] + vector[c] for a 2D `data` and a `vector` of its column count; returns out.

    Raises:
        TypeError, ValueError: a non-2D `data`, a `vector` of another length or dtype, a bad `out`.
    """
    backend = commonBackend(data=data, vector=vector, out=out)
    checkArray("data", data, dtypes=backend.elementWise.dataTypes)
    if data.ndim != 2:
        raise ValueError("data must be 2D (rows, cols); got shape %s" % (data.shape,))
    checkArray("vector", vector, dtypes=(data.dtype,), shape=(data.shape[1],))
    out = outputFor(backend, out, data)
    if data.size:
        backend.elementWise.addVectorToRows(data, vector, out)
    return out


def softmaxCrossEntropy(scores, labels, out=None):
    """Softmax over the classes of each row, cross-entropy against integer labels, its negated gradient and the hits.

    Args:
        scores (GPUArray): (batch, classes) unnormalized log-probabilities, a dtype of `dataTypes`.
        labels (GPUArray): (batch,) int32 class indices in [0, classes).
        out (GPUArray or None): where to write the gradient (shape and dtype of `scores`).

    Returns:
        ``(grad, lossSum, correct)``: grad = (onehot - softmax) / batch; lossSum (float) the summed loss; correct (int)
        the rows whose first largest score is at the label.

    Raises:
        TypeError, ValueError: bad shapes or dtypes, an empty batch, or a label outside [0, classes) (the message gives
            the count; the labels are checked on the device, so a given `out` has been written by then).
    """
    backend = commonBackend(scores=scores, labels=labels, out=out)
    checkArray("scores", scores, dtypes=backend.elementWise.dataTypes)
    if scores.ndim != 2 or scores.shape[0] == 0 or scores.shape[1] == 0:
        raise ValueError("scores must be 2D (batch, classes) and non-empty; got shape %s" % (scores.shape,))
    checkArray("labels", labels, dtypes=(np.dtype(np.int32),), shape=(scores.shape[0],))
    grad = outputFor(backend, out, scores)

    batch, classes = scores.shape
    rowStats = backend.gpuarray.empty((batch, 3), scores.dtype)
    backend.elementWise.softmaxCrossEntropy(scores, labels, grad, rowStats, 1.0 / batch)

    lossSum, correct, invalid = (float(v) for v in Blas.sumOnMatrix(rowStats, cols=True).get())
    if invalid > 0:
        raise ValueError("labels must lie in [0, %d); %d of %d are outside" % (classes, round(invalid), batch))
    return grad, lossSum, int(round(correct))
