"""The array checks of the batch-normalization functions (`Backend.Dnn`, `Backend.BatchRenormDnn`,
`Backend.TheanoBatchNorm`), in the words of `Backend.Checks`: TypeError for an argument that is not a GPUArray or
arrays of two backends, ValueError for a wrong dtype, shape, overlap or combination, each naming the argument, what
was expected and what came."""

from typing import NamedTuple

import numpy as np

from PuzzleLib.Backend.BatchNormLayout import checkData, modeAxes
from PuzzleLib.Backend.Checks import checkArray, commonBackend, fusedActivation, invertible

float32, float64 = np.dtype(np.float32), np.dtype(np.float64)


def perMapTypes(dtype):
    """Dtypes allowed for per-map arrays with data of `dtype`: float32; float64 too for float64 data (CPU backend)."""
    return (float32, float64) if dtype == float64 else (float32,)


def statType(dtype):
    """Dtype of the statistics and parameter gradients returned for data of `dtype`: float64 for float64, else
    float32."""
    return float64 if dtype == float64 else float32


def checkApart(name, ary, why, **arrays):
    """Raises ValueError, saying `why`, when the C-contiguous `ary` shares a byte with one of `arrays` (None values are
    skipped)."""
    start, end = ary.ptr, ary.ptr + ary.nbytes
    for other, otherArray in arrays.items():
        if otherArray is not None and otherArray.nbytes and start < otherArray.ptr + otherArray.nbytes:
            if otherArray.ptr < end:
                raise ValueError("%s must not share memory with %s (%s)" % (name, other, why))


def checkCounter(layout, skipped, **arrays):
    """Raises ValueError unless `skipped` is a float32 per-map array of `layout` sharing no byte with `arrays` (None
    values are skipped)."""
    layout.checkPerMap("skipped", skipped, (float32,))
    checkApart("skipped", skipped, "the counter is an output of its own", **arrays)


def checkPerMapOutputs(layout, outs, **inputs):
    """Raises ValueError unless each array of `outs` (``{name: GPUArray or None}``) is a float32 per-map array of
    `layout` sharing no byte with the arrays of `inputs` or with the other output."""
    given = [(name, ary) for name, ary in outs.items() if ary is not None]
    for name, ary in given:
        layout.checkPerMap(name, ary, (float32,))
    for name, ary in given:
        checkApart(name, ary, "an output may overlap no input and not the other output", **inputs)
        inputs[name] = ary


def checkInputGradient(ingrad, updGrad, like, **arrays):
    """Raises ValueError unless `ingrad` can take an input gradient shaped like `like`: `updGrad` set, the shape and
    dtype of `like`, no byte shared with the `arrays` (None values are skipped)."""
    if not updGrad:
        raise ValueError("ingrad is given but updGrad is False: no input gradient is computed")
    checkArray("ingrad", ingrad, dtypes=(like.dtype,), shape=like.shape)
    checkApart("ingrad", ingrad, "an output may overlap no other argument", **arrays)


class BackwardCase(NamedTuple):
    """Which backward `Dnn.batchNormNdBackward` computes, from a combination of its keywords that `backwardCase` has
    validated: `frozen` (after an evaluation forward, ``test=True``), the fused `activation` (a `FusedActivation`, or
    None: the output's gradient is `grad` itself) and `rebuilt` (``data=None``: xhat is rebuilt from the output)."""

    frozen: bool
    activation: object
    rebuilt: bool


def backwardCase(data, test, activation, slope, outdata, bias, resgrad, updGrad):
    """The `BackwardCase` of a call of `Dnn.batchNormNdBackward`. The combinations it takes, the one place they are
    said (anything else is a ValueError that names what does not fit):

    - plain, after a training or an evaluation forward: `data`, no activation, and none of outdata, bias, resgrad;
    - fused, after a forward fused with an activation (training or evaluation): `data`, the `activation` (and its
      `slope`), the forward's output `outdata`; `resgrad` optional, with `updGrad`; no bias;
    - rebuilt (InPlace-ABN), after an in-place training forward: ``data=None``, ``test=False``, an invertible
      `activation` (identity, leakyRelu or elu with slope > 0), `outdata`, the forward's `bias`; no resgrad.
    """
    fused = fusedActivation(activation, slope)
    if fused is None:
        if outdata is not None or resgrad is not None or data is None:
            raise ValueError(
                "outdata, resgrad and data=None belong to the backward of a forward fused with an activation; got no "
                "activation (without one the residual's gradient is grad itself)"
            )
    elif outdata is None:
        raise ValueError("the backward after a forward fused with %r needs its output (outdata)" % activation)
    if resgrad is not None and not updGrad:
        raise ValueError("resgrad is written by the input gradient's pass: it needs updGrad=True")
    if data is None:
        if test or not invertible(fused) or bias is None or resgrad is not None:
            raise ValueError(
                "data=None (the input rebuilt from the output, InPlace-ABN) needs a training backward, an invertible "
                "activation (identity, leakyRelu or elu with slope > 0), bias, and no residual; got test=%r, "
                "activation=%r, bias %s, resgrad %s"
                % (test, activation, "None" if bias is None else "given", "None" if resgrad is None else "given")
            )
    elif bias is not None:
        raise ValueError("bias is read only with data=None (the input rebuilt from the output)")
    return BackwardCase(bool(test), fused, data is None)


def checkBackward(case, data, grad, scale, mode, stats, outs, **optional):
    """The array checks of the backward entry points; returns (layout, backend). `case` is the `BackwardCase` the
    keywords make (None for Batch Renormalization's plain backward); `stats` ({name: per-map array}) are all needed;
    `outs` ({name: per-map array or None}) are the parameter gradients' outputs; `optional` holds `ingrad` and
    `updGrad`, and a fused backward's `outdata`, `bias` and `resgrad`. `data` may be None (InPlace-ABN): the layout is
    `grad`'s then."""
    ingrad, updGrad = optional.pop("ingrad"), optional.pop("updGrad")
    backend = commonBackend(data=data, grad=grad, scale=scale, ingrad=ingrad, **stats, **outs, **optional)
    rebuilt = data is None
    like = grad if rebuilt else data
    layout = checkData("grad" if rebuilt else "data", like, backend, modeAxes(mode, like.ndim))
    checkArray("grad", grad, dtypes=(like.dtype,), shape=like.shape)
    perMap = perMapTypes(like.dtype)
    layout.checkPerMap("scale", scale, perMap)
    for name, ary in stats.items():
        if ary is None:
            after = "a renormalizing" if case is None else "an evaluation" if case.frozen else "a training"
            raise ValueError("%s is needed for the backward pass after %s forward" % (name, after))
        layout.checkPerMap(name, ary, perMap)
    if case is not None and case.activation is not None:
        checkFusedArrays(data, grad, ingrad, optional["outdata"], optional["resgrad"])
    if rebuilt:
        layout.checkPerMap("bias", optional["bias"], perMap)
    if outs["scalegrad"] is not None or outs["biasgrad"] is not None:
        checkPerMapOutputs(layout, outs, data=data, grad=grad, scale=scale, **stats)
    if ingrad is not None:
        others = {name: ary for name, ary in optional.items() if name != "resgrad"}
        # NOTE: InPlace-ABN's input gradient may overwrite grad exactly (each element is read before it is written)
        inPlace = rebuilt and ingrad.ptr == grad.ptr and ingrad.shape == grad.shape and ingrad.dtype == grad.dtype
        checkInputGradient(ingrad, updGrad, grad, data=data, grad=None if inPlace else grad, scale=scale, **stats,
                           **outs, **others)
    return layout, backend


def checkFusedArrays(data, grad, ingrad, outdata, resgrad):
    """The arrays of a backward after a fused forward: the forward's output, and the residual's gradient apart from
    every other argument."""
    checkArray("outdata", outdata, dtypes=(grad.dtype,), shape=grad.shape)
    if resgrad is not None:
        checkArray("resgrad", resgrad, dtypes=(grad.dtype,), shape=grad.shape)
        checkApart("resgrad", resgrad, "an output may overlap no other argument", grad=grad, outdata=outdata, data=data,
                   ingrad=ingrad)
