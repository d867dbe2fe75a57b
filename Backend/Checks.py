"""Argument checks of the front modules (`Backend.Dnn`, `Backend.TheanoBatchNorm`, `Backend.Blas`,
`Backend.ElementWise`, `Backend.Permute`), so that both backends reject the same mistakes with the same words (the
batch-normalization functions' own array checks are `Backend.BatchNormChecks`). The modules check their own contract
in their own words (`ModuleError`) and call the plans directly: nothing is checked twice on a call.

One exception type per kind of mistake: an argument that is not a GPUArray, or arrays of two backends in one call,
raise TypeError; a wrong dtype, shape or value raises ValueError. The messages name the argument, what was expected
and what came.
"""

import math

import numpy as np

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Backend.Contract import FusedActivation, RenormClipping, fusedActivations


def checkArray(name, ary, dtypes=None, shape=None):
    """Raises TypeError unless `ary` is a GPUArray, ValueError unless its dtype is one of `dtypes` and its shape is
    `shape` (each when given)."""
    if not isinstance(ary, gpuarray.GPUArray):
        raise TypeError("%s must be a GPUArray; got %s" % (name, type(ary).__name__))
    if dtypes is not None and ary.dtype not in dtypes:
        raise ValueError("%s must have dtype %s; got %s" % (name, " or ".join(str(d) for d in dtypes), ary.dtype))
    if shape is not None and ary.shape != tuple(shape):
        raise ValueError("%s must have shape %s; got %s" % (name, tuple(shape), ary.shape))


def commonBackend(**arrays):
    """The backend of the given arrays (None values are skipped), each checked to be a GPUArray.

    Raises:
        TypeError: an argument is not a GPUArray, or two arrays live on different backends (both are named).
    """
    found = foundName = None
    GPUArray = gpuarray.GPUArray
    for name, ary in arrays.items():
        if ary is None:
            continue
        if not isinstance(ary, GPUArray):
            checkArray(name, ary)
        backend = ary.backend
        if found is None:
            found, foundName = backend, name
        elif backend is not found:
            raise TypeError(
                "arrays of one backend expected in one call; %s is a %s array but %s is a %s array (copy it over with "
                "gpuarray.to_gpu(x.get()) under Config.useBackend)" % (foundName, found.name, name, backend.name)
            )
    return found


def isRealNumber(value):
    """True for a real number, Python's or numpy's (int, float, np.integer, np.floating); False for a bool, which
    Python counts as an int, and for anything else."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def checkEpsilon(epsilon):
    if not epsilon > 0:
        raise ValueError("epsilon must be > 0; got %r" % (epsilon,))


def checkFactor(factor, name="factor"):
    if not 0.0 <= factor <= 1.0:
        raise ValueError("%s must be in [0, 1]; got %r" % (name, factor))


def renormClipping(rmax=None, rmin=None, dmax=None):
    """The `Contract.RenormClipping` of Batch Renormalization's bounds, each None for no bound: r in [rmin, rmax] and d
    in [-dmax, dmax] (Ioffe 2017, arXiv 1702.03275, section 3). A missing `rmin` is ``1 / rmax``, the paper's
    interval (TensorFlow's ``renorm_clipping`` takes a missing rmin as 0: pass ``rmin=0`` for that).

    Raises:
        ValueError: rmax not a number >= 1 (inf allowed), rmin not in [0, 1], dmax not a number >= 0 (inf allowed): the
            bounds must let r = 1, d = 0 through, where Batch Renormalization is batch normalization.
    """

    def bound(name, value, isValid, expected):
        if value is None:
            return None
        if not isRealNumber(value):
            raise ValueError("%s must be a number (%s) or None; got %r" % (name, expected, value))
        if not isValid(float(value)):
            raise ValueError("%s must be %s; got %r" % (name, expected, value))
        return float(value)

    rmax = bound("rmax", rmax, lambda v: v >= 1, ">= 1, inf allowed")
    rmin = bound("rmin", rmin, lambda v: 0 <= v <= 1, "in [0, 1]")
    dmax = bound("dmax", dmax, lambda v: v >= 0, ">= 0, inf allowed")
    rmax = math.inf if rmax is None else rmax
    return RenormClipping(rmin=1.0 / rmax if rmin is None else rmin, rmax=rmax, dmax=math.inf if dmax is None else dmax)


# NOTE: the default slopes just below 0: PyTorch's LeakyReLU negative_slope and ELU alpha (InPlace-ABN's too)
defaultSlopes = {"leakyRelu": 0.01, "elu": 1.0}


def fusedActivation(activation, slope=None):
    """`activation` (one of `Contract.fusedActivations`, or None) and its `slope` as a `Contract.FusedActivation`, or
    None for None. A missing slope takes the default (leakyRelu 0.01, elu 1.0).

    Raises:
        ValueError: an unknown activation, a slope for a kind that has none, or a slope that is not a finite number
            >= 0 (leakyRelu, elu).
    """
    if activation is None:
        if slope is not None:
            raise ValueError("slope is given (%r) but there is no activation" % (slope,))
        return None
    if activation not in fusedActivations:
        raise ValueError("activation must be one of %s or None; got %r" % (", ".join(fusedActivations), activation))
    if activation not in defaultSlopes:
        if slope is not None:
            raise ValueError("slope applies to leakyRelu and elu only; got slope=%r with %r" % (slope, activation))
        return FusedActivation(activation, 0.0)
    slope = defaultSlopes[activation] if slope is None else slope
    if not isRealNumber(slope) or not (math.isfinite(slope) and slope >= 0):
        raise ValueError("slope of %s must be a finite number >= 0; got %r" % (activation, slope))
    return FusedActivation(activation, float(slope))


def slopeArgument(kind, slope):
    """The `slope` argument that gives back an activation of `kind` computing with `slope` (a float, as
    `fusedActivation` returns it): the slope for leakyRelu and elu, None for the kinds that take none."""
    return slope if kind in defaultSlopes else None


def invertible(activation):
    """True when `activation` (a `FusedActivation`) can be inverted exactly and stably: identity, and leakyRelu and
    elu with a slope > 0 (InPlace-ABN's choices)."""
    return activation.kind == "identity" or (activation.kind in ("leakyRelu", "elu") and activation.slope > 0)
