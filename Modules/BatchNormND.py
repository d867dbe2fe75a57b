"""BatchNormND: batch normalization of maps over the batch and all spatial axes (channels first or last)."""

import math
import warnings

import numpy as np

from PuzzleLib.Backend import Blas, Checks, Dnn, gpuarray
from PuzzleLib.Backend.Contract import FusedActivation, RenormCorrection
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
        inplace (bool): write the output over the input (no new memory). In evaluation always; in training only with
            an activation that inverts exactly (None, leakyRelu or elu with slope > 0): InPlace-ABN (Rota Bulo et al.
            2018, arXiv 1712.02616), whose backward rebuilds xhat = (act^-1(y) - bias) / scale from the output (a
            |scale| below 1e-5 divides by that floor) and writes the input gradient over the output's gradient.
        axis (int): the maps' axis, 1 (channels first, the default) to nd + 1; negative values count from the end
            (-1: channels last). Kept as the non-negative index in ``bn.axis``.
        skipNonFinite (bool): keyword only. True (the default): a map whose batch mean or variance is not finite (a
            NaN or inf in its data, as mixed precision produces) keeps its running statistics in that training
            forward, the map's count in ``skipCounts`` grows by 1, and the module warns (RuntimeWarning) the first
            time it learns of one; the output of that batch is what the formula gives. False: the running update of
            PyTorch and cuDNN, where one such batch turns the map's running statistics into NaN for good.
        renorm (bool): keyword only. Batch Renormalization in training (Ioffe 2017, "Batch Renormalization: Towards
            Reducing Minibatch Dependence in Batch-Normalized Models", arXiv 1702.03275; TensorFlow's ``renorm``):
            with the batch's sigma = sqrt(sigma2 + epsilon) and the moving ``renormMean`` and ``renormStd`` before the
            batch (``std = max(renormStd, sqrt(epsilon))``)::

                r = clip(sigma / std, rmin, rmax),  d = clip((mu - renormMean) / std, -dmax, dmax)
                out = ((x - mu) / sigma * r + d) * scale + bias        # r and d constants in backward
                renormMean = renormMomentum * renormMean + (1 - renormMomentum) * mu
                renormStd  = renormMomentum * renormStd  + (1 - renormMomentum) * sigma

            ``mean`` and ``var`` follow the factor schedule above and serve evaluation, which is unchanged. Default
            False. See `Backend.Dnn.batchRenormNd`.
        renormClipping (dict or None): keyword only, with renorm: the bounds, some of ``{"rmax": float >= 1, "rmin":
            float in [0, 1], "dmax": float >= 0}``; a missing bound is none, a missing rmin is 1 / rmax (the paper's
            interval; TensorFlow's is 0). None (the default): no clipping, TensorFlow's default. Assign
            ``bn.renormClipping`` between steps to follow the paper's schedule (rmax from 1 to 3, dmax from 0 to 5).
        renormMomentum (float): keyword only, in [0, 1], the weight of the old value in the renorm statistics'
            update. Default 0.99 (TensorFlow's ``renorm_momentum``).
        virtualBatch (int or None): keyword only. Ghost batch normalization (Hoffer, Hubara & Soudry 2017, "Train
            longer, generalize better", arXiv 1705.08741, Algorithm 1; Keras's ``virtual_batch_size``): in training,
            the batch is cut along axis 0 into ghost batches of `virtualBatch` samples (the last holds the rest, and
            needs 2 elements per map too), each normalized with its own statistics (and its own renorm correction),
            each moving the running statistics in turn: ``numOfProps`` grows by the ghost count. Evaluation is
            unchanged. None (the default): the whole batch.
        activation (str or None): keyword only. ``"relu"``, ``"leakyRelu"``, ``"elu"``, ``"sigmoid"`` or ``"tanh"``,
            computed in the normalization pass, ``out = act(bn(x) [+ residual])``, its derivative taken from the output
            inside backward's passes (`Contract.FusedActivation`); None (the default): none. Not with renorm or
            virtualBatch yet.
        slope (float or None): keyword only: leakyRelu's negative slope (default 0.01) or elu's alpha (default 1.0).

    Call: ``bn(data, residual=None)``; a residual (data's shape and dtype) is added before the activation (cuDNN's
    BN_ADD_ACTIVATION), and backward sets ``residualGrad``, its gradient.

    Attributes:
        scale, bias (GPUArray): float32, of the data's rank with `maps` on `axis` and 1 elsewhere: (1, maps, 1, ..., 1)
            channels first, (1, ..., 1, maps) channels last; trainable (``vars``) when `affine`.
        mean, var (GPUArray): float32 running statistics of the same shape (``attrs``), initially 0 and 1.
        numOfProps (int): training forwards so far.
        skipCounts (GPUArray or None): float32 per-map counts of the running updates skipped (``skipNonFinite``);
            None until the first guarded training forward. ``skippedUpdates`` (int) is their total.
        savemean, saveinvvar (GPUArray): the last training batch's mean and 1 / sqrt(sigma2 + epsilon); with
            `virtualBatch`, of shape (ghosts,) + the parameters' shape, ghost batch g in row g.
        renormMean, renormStd (GPUArray): with `renorm`, the float32 moving statistics of r and d (``attrs``, saved
            with the module), initially 0 and 1 as in TensorFlow.
        renormCorrection (`Contract.RenormCorrection` or None): the last training batch's (r, d), per map (stacked as
            ``savemean`` with `virtualBatch`).

    Shape:
        data and output: (batch, maps, d1, ..., dnd) with ``axis=1``, (batch, d1, ..., dnd, maps) with ``axis=-1``;
        dtype = calctype (float32 by default).

    Raises:
        ValueError: at construction, for a bad argument (named with its value): not a number where one is expected,
            out of its range, not finite, a flag that is not a bool, bad clipping bounds, renormClipping without
            renorm, an unknown activation or a bad slope.
        ModuleError: on forward, for data of another rank, map count or dtype, a module created empty, a training
            batch (or ghost batch) of one element per map (no variance), in-place training with an activation that
            cannot be inverted (relu, sigmoid, tanh) or with a residual, or a residual unlike the data; the module is
            left as it was.

    Example:
        >>> bn = BatchNorm2D(16)
        >>> y = bn(gpuarray.to_gpu(np.random.randn(8, 16, 32, 32).astype(np.float32)))
        >>> bnLast = BatchNorm2D(16, axis=-1)               # TensorFlow's channels-last layout
        >>> y = bnLast(gpuarray.to_gpu(np.random.randn(8, 32, 32, 16).astype(np.float32)))
        >>> renormed = BatchNorm2D(16, renorm=True, renormClipping={"rmax": 3.0, "dmax": 5.0})
        >>> ghosts = BatchNorm2D(16, virtualBatch=32)       # a batch of 256 is normalized as 8 ghost batches
    """

    spatialText = None
    transientFields = Module.transientFields + (
        "savemean", "saveinvvar", "renormCorrection", "pendingResidual", "residualGrad", "skipMirror",
        "statisticsCollector",
    )
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
        renorm=False,
        renormClipping=None,
        renormMomentum=0.99,
        virtualBatch=None,
        activation=None,
        slope=None,
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
        flags = (
            ("affine", affine), ("empty", empty), ("inplace", inplace), ("skipNonFinite", skipNonFinite),
            ("renorm", renorm),
        )
        for flag, value in flags:
            checkBool(owner, flag, value)
        checkNumber(owner, "renormMomentum", renormMomentum, "in [0, 1]", lambda v: 0 <= v <= 1)
        if renormClipping is not None and not renorm:
            raise ValueError("%s: renormClipping needs renorm=True; got %r" % (owner, renormClipping))
        renormClipping = self.checkRenormClipping(owner, renormClipping)
        if virtualBatch is not None:
            checkPositiveInt(owner, "virtualBatch", virtualBatch)
        try:
            fused = Checks.fusedActivation(activation, slope)
        except ValueError as e:
            raise ValueError("%s: %s" % (owner, e)) from None
        if fused is not None and (renorm or virtualBatch is not None):
            raise ValueError(
                "%s: a fused activation does not combine with renorm or virtualBatch yet; got activation=%r with %s"
                % (owner, activation, "renorm" if renorm else "virtualBatch=%r" % virtualBatch)
            )

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
        self.renorm, self.renormMomentum = bool(renorm), float(renormMomentum)
        self.renormBounds = renormClipping
        self.renormCorrection = None
        self.virtualBatch = None if virtualBatch is None else int(virtualBatch)
        self.activation, self.fused = activation, fused
        # NOTE: the residual of the forward under way (`forward`), and the gradient backward gives it
        self.pendingResidual, self.hadResidual, self.residualGrad = None, False, None

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

    @staticmethod
    def checkRenormClipping(owner, clipping):
        """`clipping` (None, or a dict with some of the keys rmax, rmin, dmax) checked, as a new dict of floats."""
        if clipping is None:
            return {}
        if not isinstance(clipping, dict) or not set(clipping) <= {"rmax", "rmin", "dmax"}:
            raise ValueError(
                "%s: renormClipping must be None or a dict with some of the keys 'rmax', 'rmin', 'dmax'; got %r"
                % (owner, clipping)
            )
        try:
            Checks.renormClipping(**clipping)
        except ValueError as e:
            raise ValueError("%s: renormClipping: %s" % (owner, e)) from None
        return {key: None if value is None else float(value) for key, value in clipping.items()}

    @property
    def renormClipping(self):
        """Batch Renormalization's clipping bounds, a dict with some of the keys rmax, rmin, dmax (a copy). Assign a
        new dict to change them between training steps, as the paper's schedule of rmax and dmax does; it is checked
        as the constructor checks it (ValueError)."""
        return dict(self.renormBounds)

    @renormClipping.setter
    def renormClipping(self, clipping):
        if not self.renorm:
            raise ValueError("%s: renormClipping needs renorm=True" % self.describe())
        self.renormBounds = self.checkRenormClipping(self.describe(), clipping)

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
        if self.renorm:
            self.setAttr("renormMean", gpuarray.zeros(shape, np.float32))
            self.setAttr("renormStd", gpuarray.to_gpu(np.ones(shape, dtype=np.float32)))

    def calcTypes(self):
        """float32 and float16 everywhere, float64 too on the CPU backend (`Backend.Dnn.dataTypes`)."""
        return Dnn.dataTypes(self.backend)

    def paramSpecs(self):
        group = "params" if self.affine else "attrs"
        shape = self.paramShape
        specs = {"scale": (group, shape), "bias": (group, shape), "mean": ("attrs", shape), "var": ("attrs", shape)}
        if self.renorm:
            specs.update(renormMean=("attrs", shape), renormStd=("attrs", shape))
        return specs

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
        """In training, a map needs at least 2 elements to estimate a variance (SPEC section 4.2), in every ghost batch
        with `virtualBatch`."""
        m = self.elementsPerMap(shape)
        if self.train and m < 2:
            raise ModuleError(
                "%s: training needs at least 2 elements per map to estimate a variance; data of shape %s has %d"
                % (self.describe(), shape, m)
            )
        if self.train and self.virtualBatch is not None:
            start, stop = self.ghostBatches(shape[0])[-1]
            ghostM = m // shape[0] * (stop - start)
            if ghostM < 2:
                raise ModuleError(
                    "%s: training with virtualBatch=%d needs at least 2 elements per map in every ghost batch; the "
                    "last of data of shape %s holds %d sample(s), %d element(s) per map"
                    % (self.describe(), self.virtualBatch, shape, stop - start, ghostM)
                )

    def ghostBatches(self, batch):
        """The (start, stop) rows of each ghost batch of a batch of `batch` samples: `virtualBatch` each, the last
        holding what is left; the whole batch without `virtualBatch`."""
        size = batch if self.virtualBatch is None else self.virtualBatch
        return [(start, min(start + size, batch)) for start in range(0, batch, size)]

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
            fused = self.inplaceActivation()
            if not Checks.invertible(fused):
                raise ModuleError(
                    "%s: in-place training (InPlace-ABN) rebuilds the input from the output, which needs an activation "
                    "that inverts exactly and stably (None, leakyRelu or elu with slope > 0); got activation=%r%s. Use "
                    "inplace=False, or in-place evaluation only" % (
                        self.describe(), fused.kind, " with slope 0" if fused.kind in ("leakyRelu", "elu") else ""
                    )
                )
            if self.renorm or self.virtualBatch is not None:
                raise ModuleError(
                    "%s: in-place training does not combine with renorm or virtualBatch yet" % self.describe()
                )

    def inplaceActivation(self):
        """The activation in-place training fuses: the module's, or the identity."""
        return self.fused if self.fused is not None else FusedActivation("identity", 0.0)

    @property
    def gradUsesOutData(self):
        """True when backward reads the module's output (a fused activation, or in-place training): a successor must
        not overwrite it (`Containers.Sequential.append` checks)."""
        return self.fused is not None or (self.inplace and self.train)

    @property
    def gradUsesInData(self):
        """True when backward reads the module's input: all but in-place training."""
        return not (self.inplace and self.train)

    @property
    def overwritesInput(self):
        """True when the forward writes its output over its input (`inplace`: in evaluation, and in training)."""
        return self.inplace

    # --- forward with a residual

    def __call__(self, data, residual=None):
        # NOTE: the synchronized modules' forward takes the data alone (they refuse a residual there)
        return self.forward(data) if residual is None else self.forward(data, residual)

    def forward(self, data, residual=None):
        """`Module.forward`, with an optional `residual` (a GPUArray of the data's shape and dtype) added before the
        activation: ``out = act(bn(data) + residual)``; backward then sets ``residualGrad``.

        Raises:
            ModuleError: as `Module.forward`, and for a residual of another shape, dtype or backend, or one given to
                in-place training (the input is rebuilt from the output, which the residual would enter).
        """
        if residual is not None:
            self.checkArray(residual, "residual")
            if not isinstance(data, gpuarray.GPUArray) or residual.shape != data.shape or residual.dtype != data.dtype:
                raise ModuleError(
                    "%s expects a residual of the data's shape %s and dtype %s; got shape %s and dtype %s"
                    % (self.describe(), getattr(data, "shape", None), getattr(data, "dtype", None), residual.shape,
                       residual.dtype)
                )
            if self.inplace and self.train:
                raise ModuleError(
                    "%s: in-place training takes no residual (the input is rebuilt from the output alone)"
                    % self.describe()
                )
            if self.renorm or self.virtualBatch is not None:
                raise ModuleError("%s: a residual does not combine with renorm or virtualBatch yet" % self.describe())
        # NOTE: taken by updateData, inside the snapshot of Module.forward: no line of this call runs after it
        self.pendingResidual = residual
        return super().forward(data)

    def dnnFusion(self, residual=None):
        """The keywords of `Dnn.batchNormNd` for the fused activation and `residual`."""
        fused = self.inplaceActivation() if self.inplace and self.train else self.fused
        extra = {} if fused is None else {"activation": fused.kind, "slope": Checks.slopeArgument(*fused)}
        if residual is not None:
            extra["residual"] = self.toDnn(residual)
        return extra

    def updateData(self, data):
        residual, self.pendingResidual = self.pendingResidual, None
        self.hadResidual = residual is not None
        try:
            if not self.train:
                if self.statisticsCollector is not None:
                    self.statisticsCollector(self, data)
                out = self.toDnn(data) if self.inplace else None
                result = Dnn.batchNormNd(
                    self.toDnn(data), self.scale, self.bias, self.mean, self.var, self.epsilon, test=True,
                    mode=self.dnnAxes, out=out, **self.dnnFusion(residual),
                )
                return self.fromDnn(result, data)

            x = self.toDnn(data)
            if self.virtualBatch is None:
                result = self.trainStep(x, x if self.inplace else None, residual)
            else:
                result = self.trainGhostBatches(x)
        except ValueError as e:
            raise ModuleError("%s: %s" % (self.describe(), e)) from None

        self.warnOfSkips()
        return self.fromDnn(result, data)

    def trainStep(self, x, out, residual=None):
        """One training normalization of `x` (the whole batch, or a ghost batch), into `out` (or a new array), and its
        running update: sets ``savemean``, ``saveinvvar``, ``renormCorrection``; returns the output."""
        factor = self.nextFactor()
        if self.renorm:
            out, savemean, saveinvvar, r, d = Dnn.batchRenormNd(
                x, self.scale, self.bias, self.mean, self.var, self.renormMean, self.renormStd, self.epsilon, factor,
                self.renormMomentum, self.dnnAxes, out=out, skipped=self.skipCounter(), **self.renormBounds,
            )
            self.renormCorrection = RenormCorrection(r, d)
        else:
            out, savemean, saveinvvar = Dnn.batchNormNd(
                x, self.scale, self.bias, self.mean, self.var, self.epsilon, factor, mode=self.dnnAxes, out=out,
                skipped=self.skipCounter(), **self.dnnFusion(residual),
            )
        self.numOfProps += 1
        self.savemean, self.saveinvvar = savemean, saveinvvar
        return out

    def trainGhostBatches(self, x):
        """Ghost batch normalization (Hoffer, Hubara & Soudry 2017, arXiv 1705.08741, Algorithm 1): `trainStep` on
        each ghost batch in turn, into its rows of one output; the per-ghost statistics are stacked on a new first
        axis of ``savemean``, ``saveinvvar`` (and ``renormCorrection``), ghost g in row g."""
        out = x.backend.gpuarray.empty(x.shape, x.dtype)
        ghosts = self.ghostBatches(x.shape[0])
        stacked = None
        for g, (start, stop) in enumerate(ghosts):
            self.trainStep(x[start:stop], out[start:stop])
            perGhost = [self.savemean, self.saveinvvar] + (list(self.renormCorrection) if self.renorm else [])
            if stacked is None:
                arrays = x.backend.gpuarray
                stacked = [arrays.empty((len(ghosts),) + ary.shape, ary.dtype) for ary in perGhost]
            for target, ary in zip(stacked, perGhost, strict=True):
                target[g].set(ary)
        self.savemean, self.saveinvvar = stacked[:2]
        self.renormCorrection = RenormCorrection(*stacked[2:]) if self.renorm else None
        return out

    def stateArrays(self, call, updParamGrads=True):
        if call == "forward" and self.train:
            renorm = [self.renormMean, self.renormStd] if self.renorm else []
            return [self.mean, self.var] + renorm + ([] if self.skipCounts is None else [self.skipCounts])
        return super().stateArrays(call, updParamGrads)

    # --- running updates skipped for non-finite statistics

    def skipCounter(self):
        """``skipCounts`` (created at the first call) when the running update is guarded, else None."""
        if not self.skipNonFinite:
            return None
        if self.skipMirror is None:
            arrays = self.mean.backend.gpuarray
            # NOTE: a copy of the module (`Module.__deepcopy__`) has counts of its own, without a mirror of them
            if self.skipCounts is None:
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
            x, dy = self.toDnn(self.inData), self.toDnn(grad)
            fused = self.fusedBackward(dy, updGrad)
            if fused:
                x = None if self.inplace and self.train else x
                # NOTE: the residual's gradient needs the backward's walks whether or not the input's is asked for
                updGrad = updGrad or "resgrad" in fused
            if self.train and self.virtualBatch is not None:
                ingrad, scalegrad, biasgrad = self.ghostBackward(x, dy, updGrad, paramGrads)
            elif self.train and self.renorm:
                ingrad, scalegrad, biasgrad = Dnn.batchRenormNdBackward(
                    x, dy, self.scale, self.savemean, self.saveinvvar, *self.renormCorrection, self.dnnAxes,
                    updGrad=updGrad, **paramGrads,
                )
            else:
                ingrad, scalegrad, biasgrad = Dnn.batchNormNdBackward(
                    x, dy, self.scale, self.savemean, self.saveinvvar, self.epsilon, self.dnnAxes, test=not self.train,
                    mean=self.mean, var=self.var, updGrad=updGrad, **paramGrads, **fused,
                )
            if updParamGrads and not overwrite:
                self.accumulate(self.vars["scale"], scalegrad, scale, momentum)
                self.accumulate(self.vars["bias"], biasgrad, scale, momentum)
            if self.hadResidual:
                self.residualGrad = self.fromDnn(fused["resgrad"], grad) if "resgrad" in fused else grad
            if updGrad:
                self.grad = self.fromDnn(ingrad, grad)
            return self.grad if updGrad else None
        except BaseException:
            snapshot.restore()
            raise

    def fusedBackward(self, dy, updGrad):
        """The keywords of `Dnn.batchNormNdBackward` after a fused forward (none after a plain one): the activation, the
        output, a new array for the residual's gradient, and in in-place training the bias and the input gradient
        written over `dy` (InPlace-ABN: no new memory)."""
        if self.fused is None and not (self.inplace and self.train):
            return {}
        fusion = self.dnnFusion()
        fusion.update(outdata=self.toDnn(self.data))
        if self.hadResidual and self.fused is not None:
            fusion["resgrad"] = dy.backend.gpuarray.empty(dy.shape, dy.dtype)
        if self.inplace and self.train:
            fusion["bias"] = self.bias
            if updGrad:
                fusion["ingrad"] = dy
        return fusion

    def ghostBackward(self, x, dy, updGrad, paramGrads):
        """The training backward of each ghost batch with its own statistics (`trainGhostBatches`), each writing its
        rows of one input gradient; the parameter gradients summed (into the arrays of `paramGrads` when given)."""
        ingrad = x.backend.gpuarray.empty(x.shape, x.dtype) if updGrad else None
        sums = None
        for g, (start, stop) in enumerate(self.ghostBatches(x.shape[0])):
            saved = (self.savemean[g], self.saveinvvar[g])
            outs = dict(paramGrads if g == 0 else {}, ingrad=ingrad[start:stop] if updGrad else None)
            if self.renorm:
                _, scalegrad, biasgrad = Dnn.batchRenormNdBackward(
                    x[start:stop], dy[start:stop], self.scale, *saved, *(ary[g] for ary in self.renormCorrection),
                    self.dnnAxes, updGrad=updGrad, **outs,
                )
            else:
                _, scalegrad, biasgrad = Dnn.batchNormNdBackward(
                    x[start:stop], dy[start:stop], self.scale, *saved, self.epsilon, self.dnnAxes, updGrad=updGrad,
                    **outs,
                )
            if sums is None:
                sums = (scalegrad, biasgrad)
            else:
                Blas.toVectorAddVector(sums[0], scalegrad)
                Blas.toVectorAddVector(sums[1], biasgrad)
        return (ingrad, *sums)

    def releaseResults(self):
        super().releaseResults()
        self.savemean, self.saveinvvar, self.renormCorrection = None, None, None
        self.hadResidual, self.residualGrad = False, None

    def reset(self):
        super().reset()
        self.savemean, self.saveinvvar, self.renormCorrection = None, None, None
        self.hadResidual, self.residualGrad = False, None


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
    from PuzzleLib.TestLib import Reference

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

        # ghost batches of 2 samples, each renormalized toward the moving statistics the one before left
        ghosts = BatchNormND(nd, maps, virtualBatch=2, renorm=True, renormMomentum=0.5, renormClipping={"rmax": 1.5})
        out = ghosts(gpuarray.to_gpu(hostData)).get()
        scale, bias, axes = ghosts.scale.get(), ghosts.bias.get(), Reference.spatialAxes(hostData.ndim)
        renormMean, renormStd = np.zeros(scale.shape), np.ones(scale.shape)
        for start in (0, 2):
            part = hostData[start : start + 2]
            ghost = Reference.batchRenormTrain(part, scale, bias, axes, 1e-5, renormMean, renormStd, 2 / 3, 1.5)
            assert np.allclose(out[start : start + 2], ghost.out, atol=1e-5)
            renormMean, renormStd = (renormMean + ghost.mean) / 2, (renormStd + ghost.sigma) / 2
        assert np.allclose(ghosts.renormStd.get(), renormStd, rtol=1e-5) and ghosts.numOfProps == 2


if __name__ == "__main__":
    unittest()
