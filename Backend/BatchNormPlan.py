"""A batch-normalization call, planned once: `BatchNormPlan`, whose methods are the primitives, and `planOf`.

A plan is made once per (backend, data shape, dtype, normalized axes, `Contract.PlanOptions`) and then served from a
cache: the layout (`BatchNormLayout`: the ``(outer, maps, inner)`` view), the implementation that computes it (the C
kernels, the numpy kernels or the CUDA kernels, chosen when the plan is made and never again) and what that
implementation prepares once (the C kernels' packed geometry, the CUDA kernels' grids and launch arguments). A module
or a `Backend.Dnn` function then calls the plan's primitives with one record of arrays each (`Contract.TrainForward`,
...), so a call reaches its kernel in a frame or two.

Two plans stand between a caller and a backend: `EmptyPlan`, for data without elements (nothing to compute; sums over
no elements are zero), and `PermutedPlan`, for axes whose kept axes are not adjacent (no ``(outer, maps, inner)`` view:
the data goes through a permuted copy, two extra passes). The backends only ever see non-empty data in view.

Formulas: Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
Shift", arXiv 1502.03167, Algorithm 1 and section 3 (running variance unbiased, m / (m - 1), as in Theano and cuDNN);
Batch Renormalization: Ioffe 2017, arXiv 1702.03275.
"""

import functools
import math

import numpy as np

from PuzzleLib import Config
from PuzzleLib.Backend import Permute
from PuzzleLib.Backend.BatchNormLayout import layoutOf
from PuzzleLib.Backend.Contract import Backward, Moments, Normalize, RenormCombine, RenormStep


class BatchNormPlan:
    """The plan of a batch-normalization call; its methods are the primitives, each taking one record of arrays that
    already fit the plan (checked by the caller) and computing into the record's outputs.

    Args:
        backend (`Contract.Backend`): the backend of the arrays.
        layout (`BatchNormLayout`): the data shape and normalized axes.
        dtype (numpy.dtype): the data's dtype.
        options (`Contract.PlanOptions`): epsilon, the fused activation, whether a residual is added.

    Attributes:
        shape3 (tuple of int): ``(outer, maps, inner)``; maps, m (int): maps and elements per map.
        epsilon (float), activation (`Contract.FusedActivation` or None), residual (bool): from `options`.
    """

    def __init__(self, backend, layout, dtype, options):
        self.backend, self.layout, self.dtype, self.options = backend, layout, dtype, options
        self.shape3, self.maps, self.m = layout.shape3, layout.maps, layout.m
        self.epsilon, self.activation, self.residual = options

    def __repr__(self):
        return "%s(%s, %s, shape3=%s, %s)" % (type(self).__name__, self.backend.name, self.dtype, self.shape3,
                                             self.options)

    def trainForward(self, call):
        """`Contract.TrainForward`: ``mu = mean(x)``, ``sigma2 = mean((x - mu)**2)`` (biased, accumulated in at least
        float32 with a stable method), ``invstd = 1 / sqrt(sigma2 + epsilon)``,
        ``out = act(xhat * scale + bias + residual)`` with ``xhat = (x - mu) * invstd`` (no activation, no residual:
        ``xhat * scale + bias``); writes ``savemean = mu``, ``saveinvvar = invstd``; with running statistics,
        ``mean = (1 - factor) * mean + factor * mu``, ``var = (1 - factor) * var + factor * sigma2 * m / (m - 1)``,
        except, where `skipped` is given, for the maps whose mu or sigma2 is not finite: those keep theirs and count 1
        in `skipped` (decided where the statistics are finished). Where `backup` is given, the running statistics and
        counts are written there as they were before the update, and `stamp` after them, in the same kernel; where
        `mirror` is given, a map's new count in `skipped` is written there too. `out` may be `data` (InPlace-ABN): the
        statistics are taken before the pass writes."""
        raise NotImplementedError()

    def evalForward(self, call):
        """`Contract.EvalForward`: ``out = act((x - mean) / sqrt(var + epsilon) * scale + bias + residual)``, the
        deviation taken first; `out` may be `data` (in place: then no pool block is taken). Nothing else is written."""
        raise NotImplementedError()

    def normalize(self, call):
        """`Contract.Normalize`: ``out = act((x - savemean) * saveinvvar * scale + bias + residual)``, the pass of
        `trainForward` with given statistics (merged across processes, or Batch Renormalization's corrected ones)."""
        raise NotImplementedError()

    def batchStatistics(self, call):
        """`Contract.Moments`: ``mean = mean(x)``, ``var = mean((x - mu)**2)`` (biased; 0 for one element) with the
        stable method of `trainForward`; nothing else is written."""
        raise NotImplementedError()

    def backward(self, call):
        """`Contract.Backward`, with ``xhat = (x - savemean) * saveinvvar`` and dz the output's gradient (``grad``, or
        ``grad * act'(outdata)`` after a fused forward, written to `resgrad` where given): ``biasgrad = sum(dz)``,
        ``scalegrad = sum(dz * xhat)`` (overwritten); where `ingrad` is given,
        ``ingrad = scale * invstd / m * (m * dz - biasgrad - xhat * scalegrad)`` (it may be `grad`). With `data` None
        (InPlace-ABN, an invertible activation) ``xhat = (act^-1(outdata) - bias) / scale``, a |scale| below
        `Contract.reconstructionFloor` counting as that floor with scale's sign."""
        raise NotImplementedError()

    def frozenBackward(self, call):
        """`Contract.FrozenBackward`, the statistics constants: with ``invstd = 1 / sqrt(var + epsilon)``,
        ``biasgrad = sum(dz)``, ``scalegrad = sum(dz * (x - mean) * invstd)``; where `ingrad` is given,
        ``ingrad = dz * scale * invstd`` (the data is not read for it); dz as in `backward`."""
        raise NotImplementedError()

    def inputGradient(self, call):
        """`Contract.InputGradient`: ``ingrad = scale * saveinvvar * (grad - (biasgrad + xhat * scalegrad) / count)``
        with given sums over `count` elements per map (the batches of every process); with this batch's own sums and
        ``count = m`` this is `backward`'s input gradient."""
        raise NotImplementedError()

    def renormStatistics(self, call):
        """`Contract.RenormStep`, per map, with ``mu, sigma2 = batchMean, batchVar``, ``sigma = sqrt(sigma2 +
        epsilon)`` and ``std = max(renormStd, sqrt(epsilon))`` (the moving value before this batch; TensorFlow's
        floor): ``savemean = mu``, ``saveinvvar = 1 / sigma``, ``r = clip(sigma / std, rmin, rmax)``,
        ``d = clip((mu - renormMean) / std, -dmax, dmax)`` (a NaN stays NaN), ``correctedScale = r * scale``,
        ``correctedBias = d * scale + bias``; the running statistics move as in `trainForward` over `count`, and
        ``renormMean = renormMomentum * renormMean + (1 - renormMomentum) * mu``, ``renormStd`` likewise with sigma;
        where `skipped` is given, a map whose mu or sigma2 is not finite keeps both and counts 1."""
        raise NotImplementedError()

    def renormCombine(self, call):
        """`Contract.RenormCombine`: ``out = r * x + d * y`` per map (``r * x`` when `y` is None), for Batch
        Renormalization's backward (the scale its pass sees, ``r * scale``, and ``r * sum(dz * xhat) + d * sum(dz)``).
        """
        raise NotImplementedError()


    # --- Batch Renormalization, made of the primitives above on every backend

    def renormForward(self, call):
        """`Contract.RenormForward`: the batch's moments (`batchStatistics`), the per-map step (`renormStatistics`,
        which moves the running and renorm statistics in place), then the normalization pass with the corrected scale
        and bias (`normalize`): ``out = ((x - mu) / sigma * r + d) * scale + bias``; the data is read twice."""
        arrays = self.backend.gpuarray
        statType = np.float64 if self.dtype == np.float64 else np.float32
        batchMean, batchVar = (arrays.empty(call.savemean.shape, statType) for _ in range(2))
        correctedScale, correctedBias = (arrays.empty(call.scale.shape, call.scale.dtype) for _ in range(2))
        self.batchStatistics(Moments(call.data, batchMean, batchVar))
        self.renormStatistics(RenormStep(
            batchMean, batchVar, self.m, call.scale, call.bias, call.mean, call.var, call.renormMean, call.renormStd,
            call.savemean, call.saveinvvar, call.r, call.d, correctedScale, correctedBias, call.skipped, call.factor,
            call.renormMomentum, call.clipping,
        ))
        self.normalize(Normalize(call.data, call.out, correctedScale, correctedBias, call.savemean, call.saveinvvar))

    def renormBackward(self, call):
        """`Contract.RenormBackward`: the training backward with the scale ``r * scale``, whose scale gradient
        ``sum(dz * xhat)`` then becomes ``r * sum(dz * xhat) + d * sum(dz)`` (the gradient of
        ``(xhat * r + d) * scale``)."""
        correctedScale = self.backend.gpuarray.empty(call.scale.shape, call.scale.dtype)
        self.renormCombine(RenormCombine(call.r, call.d, call.scale, None, correctedScale))
        self.backward(Backward(call.data, call.grad, call.ingrad, correctedScale, call.savemean, call.saveinvvar,
                               call.scalegrad, call.biasgrad))
        self.renormCombine(RenormCombine(call.r, call.d, call.scalegrad, call.biasgrad, call.scalegrad))


class EmptyPlan(BatchNormPlan):
    """The plan of data without elements: the passes have nothing to read or write; moments and sums over no elements
    are zero. (With the 2 elements per map a training forward needs, only data without maps is empty there, so no
    running update is ever skipped here.)"""

    def trainForward(self, call):
        pass

    evalForward = normalize = inputGradient = renormStatistics = renormCombine = trainForward

    def batchStatistics(self, call):
        call.mean.fill(0)
        call.var.fill(0)

    def backward(self, call):
        call.scalegrad.fill(0)
        call.biasgrad.fill(0)

    frozenBackward = backward


# NOTE: per primitive, the record fields the permuted plan reads through a permuted copy, and those it writes through
# a permuted buffer (per-map arrays are the kept axes in row-major order either way: they need no permutation)
permutedInputs = ("data", "grad", "residual", "outdata")
permutedOutputs = ("out", "ingrad", "resgrad")


class PermutedPlan(BatchNormPlan):
    """The plan of a layout without an ``(outer, maps, inner)`` view (axes (1,) of (N, C, T), say): every data-shaped
    array goes through a copy permuted to ``(kept axes..., normalized axes...)``, which `inner`, the plan of that shape,
    normalizes as ``(1, maps, m)``; outputs are permuted back (`BatchNormLayout.perm`, `inverse`)."""

    def __init__(self, backend, layout, dtype, options):
        super().__init__(backend, layout, dtype, options)
        shape = layout.permutedShape
        kept = len(layout.droppedShape)
        self.inner = cachedPlan(backend, shape, dtype, tuple(range(kept, len(shape))), options, Config.cpuKernels)

    def permuted(self, primitive, call):
        layout, arrays = self.layout, self.backend.gpuarray
        work = {name: Permute.permute(getattr(call, name), layout.perm) for name in permutedInputs
                if getattr(call, name, None) is not None}
        outputs = [(name, getattr(call, name)) for name in permutedOutputs if getattr(call, name, None) is not None]
        work.update((name, arrays.empty(layout.permutedShape, ary.dtype)) for name, ary in outputs)
        getattr(self.inner, primitive)(call._replace(**work))
        for name, ary in outputs:
            Permute.permute(work[name], layout.inverse, out=ary)

    # NOTE: the data passes (trainForward ... inputGradient) go through `permuted`, set below the class (`permuting`);
    # the per-map steps need no permutation

    def renormStatistics(self, call):
        self.inner.renormStatistics(call)

    def renormCombine(self, call):
        self.inner.renormCombine(call)


def permuting(primitive):
    """The `PermutedPlan` method of `primitive`: the inner plan's, through permuted copies (`PermutedPlan.permuted`)."""

    def method(self, call):
        self.permuted(primitive, call)

    method.__name__ = method.__qualname__ = primitive
    return method


for primitive in ("trainForward", "evalForward", "normalize", "batchStatistics", "backward", "frozenBackward",
                  "inputGradient"):
    setattr(PermutedPlan, primitive, permuting(primitive))


@functools.lru_cache(maxsize=1024)
def cachedPlan(backend, shape, dtype, axes, options, cpuKernels):
    """`planOf` without reading the settings; `cpuKernels` (`Config.cpuKernels`) is part of the key, so a plan made
    under one setting is never served under another."""
    layout = layoutOf(shape, axes)
    if math.prod(shape) == 0:
        return EmptyPlan(backend, layout, dtype, options)
    if layout.perm is not None:
        return PermutedPlan(backend, layout, dtype, options)
    return backend.batchNorm.plan(backend, layout, dtype, options)


def planOf(data, axes, options):
    """The `BatchNormPlan` of a call on `data` (a GPUArray) normalized over `axes` (sorted non-negative ints) with
    `options` (a `Contract.PlanOptions`), made on the first such call and then served from a cache.

    Raises:
        PuzzleLib.Config.ConfigError: the C kernels were asked for (``PUZZLELIB_CPU_KERNELS=c``) and cannot be built.
    """
    return cachedPlan(data.backend, data.shape, data.dtype, axes, options, Config.cpuKernels)
