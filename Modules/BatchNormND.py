"""BatchNormND: batch normalization of maps over the batch and all spatial axes (channels first or last)."""

import math
import warnings

import numpy as np

from PuzzleLib.Backend import Dnn, gpuarray
from PuzzleLib.Modules.Module import Module, ModuleError, checkBool, checkNumber, checkPositiveInt
from PuzzleLib.Modules.Variable import Variable


class BatchNormND(Module):
    """Batch normalization over the batch and spatial axes, one mean and variance per map.

    The maps sit on axis 1 by default, (batch, maps, d1, ..., dnd); ``axis=-1`` takes channels-last data
    (batch, d1, ..., dnd, maps) as TensorFlow's ``axis`` does (any axis but the batch axis works). The backend views the
    data as (outer, maps, inner) whichever the axis, so channels-last data is never transposed.

    Ioffe & Szegedy 2015, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
    Shift", arXiv 1502.03167. In training mode, with m = batch * d1 * ... * dnd elements per map::

        numOfProps += 1
        factor = max(initFactor / numOfProps, minFactor)
        mu, sigma2 = mean and biased variance of x per map
        out = (x - mu) / sqrt(sigma2 + epsilon) * scale + bias
        mean = (1 - factor) * mean + factor * mu
        var  = (1 - factor) * var  + factor * sigma2 * m / (m - 1)

    ``factor`` weighs the new batch: with the defaults the first batch replaces the initial statistics, the first ten
    are averaged cumulatively, then an exponential average with weight 0.1 follows. The running variance is unbiased,
    as in Theano and cuDNN. In evaluation mode (``evalMode()``) the running statistics normalize and nothing changes:
    ``out = (x - mean) / sqrt(var + epsilon) * scale + bias``; backward then treats them as constants.

    Args:
        nd (int): number of spatial axes (>= 1).
        maps (int): number of maps (channels), on `axis` of the data.
        epsilon (float): finite and > 0, added to the variance. Default 1e-5.
        initFactor (float): in (0, 1], the factor of the first batch (above 1 it would extrapolate). Default 1.0.
        minFactor (float): in [0, 1], the smallest factor. Default 0.1; 0 gives a cumulative average of all batches.
        sscale (float): finite and >= 0, the standard deviation of the initial ``scale ~ Normal(1, sscale)`` (numpy's
            global generator).
        affine (bool): trainable ``scale`` and ``bias``; when False they stay exactly 1 and 0 (kept in ``attrs``, saved
            among the parameters as PuzzleLib saves them).
        name (str or None): the module's name (prefix of its saved entries).
        empty (bool): create no arrays (``scale``, ``bias``, ``mean``, ``var`` are None) for a later `load`.
        inplace (bool): in evaluation mode write the output over the input (no new memory). Training in place is an
            error.
        axis (int): the maps' axis, 1 (channels first, the default) to nd + 1; negative values count from the end
            (-1: channels last). Kept as the non-negative index in ``bn.axis``.
        skipNonFinite (bool): keyword only. True (the default): a map whose batch mean or variance is not finite (a
            NaN or inf in its data, as mixed precision produces) keeps its running statistics in that training
            forward, the map's count in ``skipCounts`` grows by 1, and the module warns (RuntimeWarning) the first
            time it learns of one; the output of that batch is what the formula gives. False: the running update of
            PyTorch and cuDNN, where one such batch turns the map's running statistics into NaN for good.

    Attributes:
        scale, bias (GPUArray): float32, of the data's rank with `maps` on `axis` and 1 elsewhere: (1, maps, 1, ..., 1)
            channels first, (1, ..., 1, maps) channels last; trainable (``vars``) when `affine`.
        mean, var (GPUArray): float32 running statistics of the same shape (``attrs``), initially 0 and 1.
        numOfProps (int): training forwards so far.
        skipCounts (GPUArray or None): float32 per-map counts of the running updates skipped (``skipNonFinite``);
            None until the first guarded training forward. ``skippedUpdates`` (int) is their total.
        savemean, saveinvvar (GPUArray): the last training batch's mean and 1 / sqrt(sigma2 + epsilon).

    Shape:
        data and output: (batch, maps, d1, ..., dnd) with ``axis=1``, (batch, d1, ..., dnd, maps) with ``axis=-1``;
        dtype = calctype (float32 by default).

    Raises:
        ValueError: at construction, for a bad argument (named with its value): not a number where one is expected,
            out of its range, not finite, or a flag that is not a bool.
        ModuleError: on forward, for data of another rank, map count or dtype, a module created empty, a training
            batch of one element per map (no variance), or in-place training; the module is left as it was.

    Example:
        >>> bn = BatchNorm2D(16)
        >>> y = bn(gpuarray.to_gpu(np.random.randn(8, 16, 32, 32).astype(np.float32)))
        >>> bnLast = BatchNorm2D(16, axis=-1)               # TensorFlow's channels-last layout
        >>> y = bnLast(gpuarray.to_gpu(np.random.randn(8, 32, 32, 16).astype(np.float32)))
    """

    spatialText = None
    # NOTE: the name of the constructor argument that gives the map count, for messages
    mapsArgument = "maps"

    def __init__(
        self,
        nd,
        maps,
        epsilon=1e-5,
        initFactor=1.0,
        minFactor=0.1,
        sscale=0.01,
        affine=True,
        name=None,
        empty=False,
        inplace=False,
        axis=1,
        *,
        skipNonFinite=True,
    ):
        owner = type(self).__name__
        checkPositiveInt(owner, "nd", nd)
        checkPositiveInt(owner, self.mapsArgument, maps)
        axis = self.checkAxis(owner, axis, int(nd) + 2)
        checkNumber(owner, "epsilon", epsilon, "a finite number > 0", lambda v: math.isfinite(v) and v > 0)
        # NOTE: the first batch's factor is initFactor itself; above 1 it would extrapolate (a negative variance)
        checkNumber(owner, "initFactor", initFactor, "in (0, 1]", lambda v: 0 < v <= 1)
        checkNumber(owner, "minFactor", minFactor, "in [0, 1]", lambda v: 0 <= v <= 1)
        checkNumber(owner, "sscale", sscale, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)
        flags = (("affine", affine), ("empty", empty), ("inplace", inplace), ("skipNonFinite", skipNonFinite))
        for flag, value in flags:
            checkBool(owner, flag, value)

        super().__init__(name)
        self.nd, self.maps, self.axis = int(nd), int(maps), axis
        self.epsilon, self.initFactor, self.minFactor, self.sscale = epsilon, initFactor, minFactor, sscale
        self.affine, self.inplace = affine, inplace
        self.numOfProps = 0
        self.savemean, self.saveinvvar = None, None
        # NOTE: set by `PopulationStatistics.recomputeStatistics` only: called with the input of an evaluation forward
        self.statisticsCollector = None
        self.skipNonFinite = bool(skipNonFinite)
        self.skipCounts, self.skipMirror, self.warnedSkips = None, None, False

        self.scale, self.bias, self.mean, self.var = None, None, None, None
        if not empty:
            self.initParams()

    @staticmethod
    def checkAxis(owner, axis, rank):
        """The maps' axis as a non-negative index; the batch axis 0 cannot carry the maps."""
        if isinstance(axis, (bool, np.bool_)) or not isinstance(axis, (int, np.integer)):
            raise ValueError("%s: axis must be an int; got %r" % (owner, axis))
        if not -rank < axis < rank or axis % rank == 0:
            raise ValueError(
                "%s: axis must be in [1, %d] or [%d, -1] for %dD data (axis 0 is the batch); got %r"
                % (owner, rank - 1, -(rank - 1), rank, axis)
            )
        return int(axis) % rank

    @property
    def paramShape(self):
        rank = self.nd + 2
        return tuple(self.maps if axis == self.axis else 1 for axis in range(rank))

    @property
    def dnnAxes(self):
        """The normalized axes: every axis but the maps'."""
        return tuple(axis for axis in range(self.nd + 2) if axis != self.axis)

    @property
    def channelsLast(self):
        return self.axis == self.nd + 1

    def initParams(self):
        shape = self.paramShape
        scale = np.random.normal(1.0, self.sscale, size=shape) if self.affine else np.ones(shape)
        scale, bias = gpuarray.to_gpu(scale.astype(np.float32)), gpuarray.zeros(shape, np.float32)

        if self.affine:
            self.setVar("scale", Variable(scale, name="scale"))
            self.setVar("bias", Variable(bias, name="bias"))
        else:
            self.setAttr("scale", scale)
            self.setAttr("bias", bias)

        self.setAttr("mean", gpuarray.zeros(shape, np.float32))
        self.setAttr("var", gpuarray.to_gpu(np.ones(shape, dtype=np.float32)))

    def calcTypes(self):
        """float32 and float16 everywhere, float64 too on the CPU backend (`Backend.Dnn.dataTypes`)."""
        return Dnn.dataTypes(self.backend)

    def paramSpecs(self):
        group = "params" if self.affine else "attrs"
        shape = self.paramShape
        return {"scale": (group, shape), "bias": (group, shape), "mean": ("attrs", shape), "var": ("attrs", shape)}

    def savedAsParams(self):
        """A non-affine module's scale and bias: PuzzleLib keeps them as parameters (params and links) in its files."""
        return () if self.affine else ("scale", "bias")

    # --- shapes

    def checkDataShape(self, shape):
        rank = 2 + self.nd
        if len(shape) != rank:
            raise ModuleError(
                "%s expects %dD data (%s); got shape %s" % (self.describe(), rank, self.layoutText(), shape)
            )
        if self.axis == 1 and shape[1] != self.maps:
            raise ModuleError("%s: data has %d maps (expected: %d)" % (self.describe(), shape[1], self.maps))
        if shape[self.axis] != self.maps:
            raise ModuleError(
                "%s expects data with %d maps on axis %d%s; got %d"
                % (
                    self.describe(),
                    self.maps,
                    self.axis,
                    " (channels-last)" if self.channelsLast else "",
                    shape[self.axis],
                )
            )
        self.checkElementsPerMap(shape)

    def checkElementsPerMap(self, shape):
        """In training, a map needs at least 2 elements to estimate a variance (SPEC section 4.2)."""
        m = self.elementsPerMap(shape)
        if self.train and m < 2:
            raise ModuleError(
                "%s: training needs at least 2 elements per map to estimate a variance; data of shape %s has %d"
                % (self.describe(), shape, m)
            )

    def elementsPerMap(self, shape):
        """m, the elements each map of data of `shape` holds (the product of the normalized axes)."""
        return math.prod(shape[axis] for axis in self.dnnAxes)

    def nextFactor(self):
        """The factor of the next training batch: ``max(initFactor / (numOfProps + 1), minFactor)``."""
        return max(self.initFactor / (self.numOfProps + 1), self.minFactor)

    def layoutText(self):
        spatial = self.spatialText or ", ".join("d%d" % (i + 1) for i in range(self.nd))
        names = ["batch"] + [name.strip() for name in spatial.split(",")]
        names.insert(self.axis, "maps")
        return ", ".join(names)

    def toDnn(self, ary):
        """The view the Dnn functions take; identity for spatial data."""
        return ary

    def fromDnn(self, ary, like):
        return ary

    # --- forward and backward

    def checkReady(self):
        if self.scale is None:
            raise ModuleError("%s is empty: set or load its parameters before calling it" % self.describe())
        if self.inplace and self.train:
            raise ModuleError(
                "%s: in-place operation is supported in evaluation mode only (call evalMode())" % self.describe()
            )

    def updateData(self, data):
        try:
            if not self.train:
                if self.statisticsCollector is not None:
                    self.statisticsCollector(self, data)
                out = self.toDnn(data) if self.inplace else None
                result = Dnn.batchNormNd(
                    self.toDnn(data), self.scale, self.bias, self.mean, self.var, self.epsilon, test=True,
                    mode=self.dnnAxes, out=out,
                )
                return self.fromDnn(result, data)

            factor = self.nextFactor()
            result, savemean, saveinvvar = Dnn.batchNormNd(
                self.toDnn(data), self.scale, self.bias, self.mean, self.var, self.epsilon, factor, mode=self.dnnAxes,
                skipped=self.skipCounter(),
            )
        except ValueError as e:
            raise ModuleError("%s: %s" % (self.describe(), e)) from None

        self.warnOfSkips()
        self.numOfProps += 1
        self.savemean, self.saveinvvar = savemean, saveinvvar
        return self.fromDnn(result, data)

    def stateArrays(self, call, updParamGrads=True):
        if call == "forward" and self.train:
            return [self.mean, self.var] + ([] if self.skipCounts is None else [self.skipCounts])
        return super().stateArrays(call, updParamGrads)

    # --- running updates skipped for non-finite statistics

    def skipCounter(self):
        """``skipCounts`` (created at the first call) when the running update is guarded, else None."""
        if not self.skipNonFinite:
            return None
        if self.skipCounts is None:
            arrays = self.mean.backend.gpuarray
            self.skipCounts = arrays.zeros(self.mean.shape, np.float32)
            self.skipMirror = arrays.HostMirror(self.skipCounts)
        return self.skipCounts

    def warnOfSkips(self):
        """Warns once when the counts show a skipped update. The counts come through a `HostMirror`, which never waits
        for the device: on CUDA the warning can come a forward or two after the batch."""
        if self.skipMirror is None or self.warnedSkips:
            return
        self.skipMirror.refresh()
        counts = self.skipMirror.latest()
        if counts is not None and counts.any():
            self.warnedSkips = True
            warnings.warn(
                "%s: a training batch had a non-finite mean or variance in %d of %d maps (a NaN or inf in the data); "
                "their running statistics were left as they were (bn.skippedUpdates counts such updates; this warning "
                "is given once; skipNonFinite=False lets them in, as PyTorch does)"
                % (self.describe(), np.count_nonzero(counts), self.maps),
                RuntimeWarning,
                stacklevel=2,
            )

    @property
    def skippedUpdates(self):
        """The running updates of single maps skipped so far for non-finite batch statistics (an int; reading it waits
        for the device)."""
        return 0 if self.skipCounts is None else int(self.skipCounts.get().sum(dtype=np.float64))

    def checkBackward(self, updParamGrads):
        """After an in-place evaluation forward the input is gone (the output overwrote it), and the scale gradient
        needs it: only the input gradient, ``backward(grad, updParamGrads=False)``, can be computed then."""
        if self.inplace and not self.train and updParamGrads and self.vars:
            raise ModuleError(
                "%s: the in-place evaluation forward overwrote its input, which the scale gradient needs; call "
                "backward(grad, updParamGrads=False) for the input gradient alone, or use inplace=False"
                % self.describe()
            )

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        """Backpropagates `grad` in one call of `Backend.Dnn.batchNormNdBackward`: the batch statistics after a training
        forward, the running ones (constants) after an evaluation forward. See `Module.backward`.

        Raises:
            ModuleError: as `Module.backward`; also for parameter gradients after an in-place evaluation forward
                (`checkBackward`).
        """
        self.checkGrad(grad)
        updParamGrads = updParamGrads and bool(self.vars)
        self.checkBackward(updParamGrads)
        if not (updGrad or updParamGrads):
            return None

        # NOTE: with the defaults (scale 1, momentum 0) a parameter gradient is the new sum itself: the kernels write it
        # straight into var.grad, with no array of their own and no accumulate pass
        overwrite = updParamGrads and scale == 1.0 and momentum == 0.0
        paramGrads = {"scalegrad": self.vars["scale"].grad, "biasgrad": self.vars["bias"].grad} if overwrite else {}
        snapshot = self.snapshot("backward", updParamGrads)
        try:
            ingrad, scalegrad, biasgrad = Dnn.batchNormNdBackward(
                self.toDnn(self.inData), self.toDnn(grad), self.scale, self.savemean, self.saveinvvar, self.epsilon,
                self.dnnAxes, test=not self.train, mean=self.mean, var=self.var, updGrad=updGrad, **paramGrads,
            )
            if updParamGrads and not overwrite:
                self.accumulate(self.vars["scale"], scalegrad, scale, momentum)
                self.accumulate(self.vars["bias"], biasgrad, scale, momentum)
            if updGrad:
                self.grad = self.fromDnn(ingrad, grad)
            return self.grad if updGrad else None
        except BaseException:
            snapshot.restore()
            raise

    def releaseResults(self):
        super().releaseResults()
        self.savemean, self.saveinvvar = None, None

    def reset(self):
        super().reset()
        self.savemean, self.saveinvvar = None, None


def checkAgainstReference(bn, shape, seed):
    """Self-test shared by the spatial modules: a training forward, backward and evaluation forward of `bn` (maps on
    axis 1) on seeded data of `shape`, each against the float64 reference. Returns (data, training reference)."""
    from PuzzleLib.TestLib import Reference

    np.random.seed(seed)
    hostData = np.random.normal(2.0, 3.0, size=shape).astype(np.float32)
    out = bn(gpuarray.to_gpu(hostData)).get()
    ref = Reference.batchNormTrain(
        hostData, bn.scale.get(), bn.bias.get(), Reference.spatialAxes(hostData.ndim), bn.epsilon
    )
    assert np.allclose(out, ref.out, atol=1e-5)
    assert np.allclose(bn.mean.get(), ref.mean, rtol=1e-5)
    assert np.allclose(bn.var.get(), ref.unbiasedVar, rtol=1e-5)

    hostGrad = np.random.randn(*shape).astype(np.float32)
    bn.backward(gpuarray.to_gpu(hostGrad))
    dx, dscale, dbias = Reference.batchNormBackward(hostData, hostGrad, bn.scale.get(), ref.axes, bn.epsilon)
    assert np.allclose(bn.grad.get(), dx, atol=1e-5)
    assert np.allclose(bn.vars["scale"].grad.get(), dscale, atol=1e-4)
    assert np.allclose(bn.vars["bias"].grad.get(), dbias, atol=1e-4)

    bn.evalMode()
    out = bn(gpuarray.to_gpu(hostData)).get()
    refEval = Reference.batchNormEval(hostData, bn.scale.get(), bn.bias.get(), bn.mean.get(), bn.var.get(), bn.epsilon)
    assert np.allclose(out, refEval, atol=1e-5)
    return hostData, ref


def unittest():
    for nd in (1, 2, 3):
        maps = 3
        bn = BatchNormND(nd, maps)
        hostData, ref = checkAgainstReference(bn, (4, maps) + (5, 3, 2)[:nd], seed=nd)

        # channels last: the same maps moved to the end give the same numbers, moved the same way
        hostLast = np.ascontiguousarray(np.moveaxis(hostData, 1, -1))
        bnLast = BatchNormND(nd, maps, axis=-1)
        bnLast.scale.set(np.moveaxis(bn.scale.get(), 1, -1).copy())
        out = bnLast(gpuarray.to_gpu(hostLast)).get()
        assert bnLast.mean.shape == (1,) * (nd + 1) + (maps,)
        assert np.allclose(out, np.moveaxis(ref.out, 1, -1), atol=1e-5)
        assert np.allclose(bnLast.var.get().ravel(), ref.unbiasedVar.ravel(), rtol=1e-5)


if __name__ == "__main__":
    unittest()
