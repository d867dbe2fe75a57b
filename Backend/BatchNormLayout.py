"""Where batch normalization's axes go: how a data shape splits into the primitives' ``(outer, maps, inner)`` view.

Any set of normalized axes works. When the kept (not normalized) axes are adjacent, which covers per-activation,
spatial, channels-last ``(N, d1, ..., C)`` with axes ``(0, ..., nd)``, ``(0, 1)`` on ``(N, T, C)`` and ``(0, 2)`` on
``(N, C, T)``, the data is only *viewed* as ``(outer, maps, inner)``: no copy. When they are not adjacent (e.g. axes
``(1,)`` on ``(N, C, T)`` or ``(0, 2)`` on 4D data), no such view exists: the data is permuted to
``(kept axes..., normalized axes...)`` and normalized as ``(1, maps, m)`` (`BatchNormLayout.perm`; the permutation
itself is done by `Backend.BatchNormPlan.PermutedPlan`).

Pure geometry and shape checks: nothing here touches an array's memory.
"""

import functools
import math

import numpy as np

from PuzzleLib.Backend.Checks import checkArray
from PuzzleLib.Backend.gpuarray import GPUArray

modes = ("spatial", "perActivation")
axesNames = ("per-activation", "peractivation", "spatial")


class BatchNormLayout:
    """How a data shape splits into (outer, maps, inner) for a set of normalized axes.

    Args:
        shape (tuple of int): the data shape.
        axes (tuple of int): normalized axes, non-negative (as `normalizeAxes` returns them).

    Attributes:
        shape, axes: as given (axes sorted).
        shape3 (tuple of int): (outer, maps, inner); m = outer * inner elements are averaged per map.
        paramShape (tuple of int): the data shape with normalized axes set to 1 (the keepdims form).
        droppedShape (tuple of int): the data shape with normalized axes removed.
        perm (tuple of int or None): None when the kept axes are adjacent (the data is viewed in place); else the
            permutation ``kept axes + normalized axes`` the data goes through first (then shape3 is (1, maps, m)).
        inverse (tuple of int or None): the permutation that brings permuted results back.
    """

    def __init__(self, shape, axes):
        ndim = len(shape)
        axes = tuple(sorted(axes))
        kept = [axis for axis in range(ndim) if axis not in axes]

        self.shape, self.axes = tuple(shape), axes
        self.paramShape = tuple(1 if axis in axes else dim for axis, dim in enumerate(shape))
        self.droppedShape = tuple(shape[axis] for axis in kept)

        if kept and kept != list(range(kept[0], kept[-1] + 1)):
            # NOTE: per-map vectors are the kept axes in row-major order both ways, so parameters need no permutation
            self.perm = tuple(kept) + axes
            self.inverse = tuple(int(axis) for axis in np.argsort(self.perm))
            self.shape3 = (1, math.prod(shape[axis] for axis in kept), math.prod(shape[axis] for axis in axes))
        else:
            first, last = (kept[0], kept[-1] + 1) if kept else (ndim, ndim)
            self.perm, self.inverse = None, None
            self.shape3 = (math.prod(shape[:first]), math.prod(shape[first:last]), math.prod(shape[last:]))

    @property
    def maps(self):
        return self.shape3[1]

    @property
    def m(self):
        """Elements averaged per map."""
        return self.shape3[0] * self.shape3[2]

    @property
    def permutedShape(self):
        """The shape of the permuted data (only when `perm` is not None)."""
        return tuple(self.shape[axis] for axis in self.perm)

    def checkPerMap(self, name, ary, dtypes):
        """Raises unless `ary` is a per-map array of this layout: of `dtypes`, in the keepdims or the dropped shape.

        Raises:
            TypeError: not a GPUArray.
            ValueError: another dtype or shape (the message names both allowed shapes).
        """
        # NOTE: the checks of checkArray inlined, as every per-map array of every call passes here
        if not isinstance(ary, GPUArray) or ary.dtype not in dtypes:
            checkArray(name, ary, dtypes=dtypes)
        shape = ary.shape
        if shape != self.paramShape and shape != self.droppedShape:
            raise ValueError(
                "%s must have shape %s (or %s without the normalized axes); got %s"
                % (name, self.paramShape, self.droppedShape, ary.shape)
            )

    def checkBatch(self):
        """Raises ValueError when a map has fewer than 2 elements: training cannot estimate a variance then."""
        if self.m < 2:
            raise ValueError(
                "training batch normalization needs at least 2 elements per map to estimate a variance; data of shape "
                "%s has %d" % (self.shape, self.m)
            )


def normalizeAxes(axes, ndim):
    """Normalized axes, sorted and non-negative, from Theano's ``axes`` argument.

    ``"per-activation"`` (or Theano's spelling ``"peractivation"``) is (0,); ``"spatial"`` is (0, 2, 3, ..., ndim - 1);
    a tuple or list of ints is taken as is, negative entries counting from the end as in numpy.

    Raises:
        ValueError: an unknown name, an empty tuple, an entry that is not an int, an axis out of range for `ndim`, or
            an axis given twice; the message names what was expected and what was given.
    """
    if isinstance(axes, str):
        if axes not in axesNames:
            raise ValueError(
                "axes must be one of %s or a tuple of ints; got %r" % (", ".join(map(repr, axesNames)), axes)
            )
        return (0,) if axes != "spatial" else (0,) + tuple(range(2, ndim))

    if not isinstance(axes, (tuple, list)) or any(
        isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)) for axis in axes
    ):
        raise ValueError("axes must be %s or a tuple of ints; got %r" % (", ".join(map(repr, axesNames)), axes))
    if len(axes) == 0:
        raise ValueError("axes must name at least one axis to normalize over; got an empty %s" % type(axes).__name__)

    outside = [int(axis) for axis in axes if not -ndim <= axis < ndim]
    if outside:
        raise ValueError(
            "axes must lie in [%d, %d] for %dD inputs; got %s (out of range: %s)"
            % (-ndim, ndim - 1, ndim, tuple(int(a) for a in axes), ", ".join(map(str, outside)))
        )

    result = [int(axis) % ndim for axis in axes]
    if len(set(result)) != len(result):
        repeated = sorted({axis for axis in result if result.count(axis) > 1})
        raise ValueError(
            "axes must not name an axis twice; got %s (repeated: %s)"
            % (tuple(int(a) for a in axes), ", ".join(map(str, repeated)))
        )
    return tuple(sorted(result))


@functools.lru_cache(maxsize=256)
def layoutOf(shape, axes):
    """The `BatchNormLayout` of `shape` for the normalized `axes` (both tuples of ints), made once per pair and then
    served from a cache: a training loop calls with the same few shapes over and over."""
    return BatchNormLayout(shape, axes)


def checkData(name, data, backend, axes):
    """The `BatchNormLayout` of `data` for the normalized `axes` (sorted non-negative ints), after checking that it
    is a GPUArray of one of `backend`'s batch-norm data types (TypeError, ValueError)."""
    checkArray(name, data, dtypes=backend.batchNorm.dataTypes)
    return layoutOf(data.shape, axes)


def modeAxes(mode, ndim):
    """Normalized axes of a cuDNN-like mode: ``"spatial"`` -> (0, 2, ..., ndim - 1), ``"perActivation"`` -> (0,), or a
    tuple of axes taken as `normalizeAxes` takes them. A tuple is checked once per (mode, ndim) and then served from a
    cache (the modules pass the same tuple on every call).

    Raises:
        ValueError: for another mode, bad axes, or data of fewer than 2 dimensions with a named mode.
    """
    if type(mode) is tuple and all(type(axis) is int for axis in mode):
        return cachedTupleAxes(mode, ndim)
    return uncachedModeAxes(mode, ndim)


@functools.lru_cache(maxsize=256)
def cachedTupleAxes(mode, ndim):
    return uncachedModeAxes(mode, ndim)


def uncachedModeAxes(mode, ndim):
    if not isinstance(mode, str):
        return normalizeAxes(mode, ndim)
    if mode not in modes:
        raise ValueError("mode must be one of %s or a tuple of axes; got %r" % (", ".join(map(repr, modes)), mode))
    if ndim < 2:
        raise ValueError("batch normalization expects data of at least 2 dimensions (batch, maps, ...); got %dD" % ndim)
    return (0,) + tuple(range(2, ndim)) if mode == "spatial" else (0,)
