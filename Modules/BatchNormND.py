"""BatchNormND: batch normalization of maps over the batch and all spatial axes (channels first or last); plain batch
normalization with the non-finite guard and in-place evaluation, training through one of the parts of
`Modules.BatchNormParts` (renorm, ghost batches, fused activation, InPlace-ABN)."""

import math

import numpy as np

from PuzzleLib import Config
from PuzzleLib.Backend import BatchNormPlan, Checks, gpuarray
from PuzzleLib.Backend.Contract import EvalForward, FrozenBackward, PlanOptions
from PuzzleLib.Modules.Arguments import checkBool, checkNumber, checkPositiveInt
from PuzzleLib.Modules.BatchNormParts import trainingPart
from PuzzleLib.Modules.BatchNormParts.RenormTraining import RenormTraining, checkClipping
from PuzzleLib.Modules.BatchNormParts.RunningUpdate import RunningUpdate
from PuzzleLib.Modules.Module import Module, ModuleError
from PuzzleLib.Modules.Variable import Variable

float32, float64 = np.dtype(np.float32), np.dtype(np.float64)
# NOTE: the plans a module keeps for its calls (`BatchNormND.planOf`): a training and an evaluation shape or two
PLANS_KEPT = 8


class BatchNormND(RunningUpdate, Module):
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
        renorm (bool): keyword only. Batch Renormalization in training (Ioffe 2017, arXiv 1702.03275; TensorFlow's
            ``renorm``; the formulas are `BatchNormParts.RenormTraining`'s): each training batch corrected by (r, d)
            toward the moving ``renormMean`` and ``renormStd``; ``mean`` and ``var`` follow the factor schedule above
            and serve evaluation, which is unchanged. Default False. See `Backend.Dnn.batchRenormNd`.
        renormClipping (dict or None): keyword only, with renorm: the bounds, some of ``{"rmax": float >= 1, "rmin":
            float in [0, 1], "dmax": float >= 0}``; a missing bound is none, a missing rmin is 1 / rmax (the paper's
            interval; TensorFlow's is 0). None (the default): no clipping, TensorFlow's default. Assign
            ``bn.renormClipping`` between steps to follow the paper's schedule (rmax from 1 to 3, dmax from 0 to 5).
        renormMomentum (float): keyword only, in [0, 1], the weight of the old value in the renorm statistics'
            update. Default 0.99 (TensorFlow's ``renorm_momentum``).
        virtualBatch (int or None): keyword only. Ghost batch normalization (Hoffer, Hubara & Soudry 2017, arXiv
            1705.08741; Keras's ``virtual_batch_size``; `BatchNormParts.GhostBatches`): in training, ghost batches of
            `virtualBatch` samples (the last holds the rest) each normalized with its own statistics and moving the
            running ones in turn (``numOfProps`` grows by the ghost count). None (the default): the whole batch.
        activation (str or None): keyword only. ``"relu"``, ``"leakyRelu"``, ``"elu"``, ``"sigmoid"`` or ``"tanh"``,
            computed in the normalization pass, ``out = act(bn(x) [+ residual])`` (`BatchNormParts.FusedTraining`);
            None (the default): none. Not with renorm or virtualBatch yet.
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
            `virtualBatch`, of shape (ghosts,) + the parameters' shape, ghost batch g in row g. The module keeps the
            two arrays of a plain training forward and writes them anew in each: read them before the next forward
            (as backward does), or copy them.
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
        "savemean", "saveinvvar", "renormCorrection", "residualGrad", "hadResidual", "skipMirror", "statisticsBuffers",
        "kernelBackup", "plans",
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
        renormPart = RenormTraining(checkClipping(owner, renormClipping), float(renormMomentum)) if renorm else None
        if virtualBatch is not None:
            checkPositiveInt(owner, "virtualBatch", virtualBatch)
        try:
            fused = Checks.fusedActivation(activation, slope)
        except ValueError as e:
            raise ValueError("%s: %s" % (owner, e)) from None
        training = trainingPart(owner, fused, bool(inplace), renormPart, virtualBatch)

        super().__init__(name)
        self.nd, self.maps, self.axis = int(nd), int(maps), axis
        self.normalizedAxes = tuple(dim for dim in range(self.nd + 2) if dim != axis)
        # NOTE: of the data's rank with `maps` on `axis`, 1 elsewhere
        self.paramShape = tuple(self.maps if dim == axis else 1 for dim in range(self.nd + 2))
        self.epsilon, self.initFactor, self.minFactor, self.sscale = epsilon, initFactor, minFactor, sscale
        self.affine, self.inplace = affine, inplace
        self.numOfProps = 0
        self.savemean, self.saveinvvar, self.renormCorrection, self.statisticsBuffers = None, None, None, None
        self.kernelBackup, self.plans = None, None
        self.skipNonFinite = bool(skipNonFinite)
        self.skipCounts, self.skipMirror, self.warnedSkips = None, None, False
        self.renorm, self.renormMomentum, self.renormPart = bool(renorm), float(renormMomentum), renormPart
        self.virtualBatch = None if virtualBatch is None else int(virtualBatch)
        self.activation, self.fused, self.training = activation, fused, training
        # NOTE: whether the last forward took a residual, and the gradient backward gives it
        self.hadResidual, self.residualGrad = False, None

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
    def renormClipping(self):
        """Batch Renormalization's clipping bounds, a dict with some of the keys rmax, rmin, dmax (a copy). Assign a
        new dict to change them between training steps, as the paper's schedule of rmax and dmax does; it is checked
        as the constructor checks it (ValueError)."""
        return {} if self.renormPart is None else dict(self.renormPart.bounds)

    @renormClipping.setter
    def renormClipping(self, clipping):
        if not self.renorm:
            raise ValueError("%s: renormClipping needs renorm=True" % self.describe())
        self.renormPart.setBounds(checkClipping(self.describe(), clipping))

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
        return self.backend.batchNorm.dataTypes

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

    # --- checks: the module's own contract, in its own words (the plans take its arrays unchecked)

    def checkData(self, data, residual=None):
        """`Module.checkData`, and a residual of the data's shape, dtype and backend that the training part takes."""
        super().checkData(data)
        if residual is not None:
            self.checkArray(residual, "residual")
            if residual.shape != data.shape or residual.dtype != data.dtype:
                raise ModuleError(
                    "%s expects a residual of the data's shape %s and dtype %s; got shape %s and dtype %s"
                    % (self.describe(), data.shape, data.dtype, residual.shape, residual.dtype)
                )
            self.training.checkResidual(self)

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
                % (self.describe(), self.maps, self.axis, " (channels-last)" if self.channelsLast else "",
                   shape[self.axis])
            )
        if self.train:
            self.training.checkBatch(self, shape)

    def checkReady(self):
        if self.scale is None:
            raise ModuleError("%s is empty: set or load its parameters before calling it" % self.describe())
        if self.inplace and self.train:
            self.training.checkInPlace(self)

    def checkBackward(self, updParamGrads):
        """After an in-place evaluation forward the input is gone (the output overwrote it), and the scale gradient
        needs it: only the input gradient, ``backward(grad, updParamGrads=False)``, can be computed then."""
        if self.inplace and not self.train and updParamGrads:
            raise ModuleError(
                "%s: the in-place evaluation forward overwrote its input, which the scale gradient needs; call "
                "backward(grad, updParamGrads=False) for the input gradient alone, or use inplace=False"
                % self.describe()
            )

    def elementsPerMap(self, shape):
        """m, the elements each map of data of `shape` (checked: `maps` maps) holds, the product of the normalized
        axes."""
        return math.prod(shape) // self.maps

    def nextFactor(self):
        """The factor of the next training batch: ``max(initFactor / (numOfProps + 1), minFactor)``."""
        return max(self.initFactor / (self.numOfProps + 1), self.minFactor)

    def layoutText(self):
        spatial = self.spatialText or ", ".join("d%d" % (i + 1) for i in range(self.nd))
        names = ["batch"] + [name.strip() for name in spatial.split(",")]
        names.insert(self.axis, "maps")
        return ", ".join(names)

    # --- what the parts use

    def planOf(self, data, activation=None, residual=False):
        """The `Backend.BatchNormPlan` of a call on `data` (or arrays of its shape and dtype) over the module's
        normalized axes, with `activation` (a `Contract.FusedActivation` or None) and a `residual` or not.

        The module keeps the plans it has used (a few) under every value `BatchNormPlan.planOf` keys its cache on,
        so a call finds its plan with one lookup, without building the options anew."""
        key = (data.backend, data.shape, data.dtype, self.epsilon, activation, residual, Config.cpuKernels)
        plans = self.plans
        plan = None if plans is None else plans.get(key)
        if plan is None:
            if plans is None or len(plans) >= PLANS_KEPT:
                plans = self.plans = {}
            plan = plans[key] = BatchNormPlan.planOf(
                data, self.normalizedAxes, PlanOptions(self.epsilon, activation, residual)
            )
        return plan

    def savedStatistics(self, data):
        """The two per-map arrays a plain training forward saves its batch statistics in: the module's own, made on
        the first forward and written anew by each (the backward after it reads them; no pool block per call)."""
        buffers = self.statisticsBuffers
        if buffers is None or buffers[0].backend is not data.backend:
            buffers = self.statisticsBuffers = self.newStatistics(data, 2)
        return buffers

    def newStatistics(self, data, count, wide=False):
        """`count` new per-map arrays of the parameters' shape on the data's backend, float32 (float64 for float64
        data when `wide`)."""
        dtype = float64 if wide and data.dtype == float64 else float32
        arrays, shape = data.backend.gpuarray, self.paramShape
        return [arrays.empty(shape, dtype) for _ in range(count)]

    # --- forward and backward

    def updateData(self, data, residual=None):
        """Training: the training part's forward (statistics, running update, normalization), then the warning of a
        skipped update; evaluation: one pass with the running statistics, in place with `inplace`."""
        self.hadResidual = residual is not None
        if self.train:
            training = self.training
            out = training.output(self, data)
            training.train(self, data, out, residual)
            self.warnOfSkips()
            return out
        out = data if self.inplace else data.backend.gpuarray.emptyLike(data)
        self.planOf(data, self.fused, residual is not None).evalForward(
            EvalForward(data, out, self.scale, self.bias, self.mean, self.var, residual)
        )
        return out

    def backwardStep(self, grad, updGrad, updParamGrads, scale, momentum):
        """Both gradients from one backward of the plan: the batch statistics after a training forward (the training
        part's backward), the running ones (constants) after an evaluation forward. See `Module.backward`."""
        # NOTE: with the defaults (scale 1, momentum 0) a parameter gradient is the new sum itself: the kernels write it
        # straight into var.grad, with no array of its own and no accumulate pass
        overwrite = updParamGrads and scale == 1.0 and momentum == 0.0
        if overwrite:
            sums = (self.vars["scale"].grad, self.vars["bias"].grad)
        else:
            sums = tuple(self.newStatistics(grad, 2))
        if self.train:
            training = self.training
            ingrad = training.inputGradient(self, grad, updGrad)
            training.backward(self, self.inData, grad, ingrad, sums, training.results(self))
        else:
            ingrad = self.frozenBackward(grad, updGrad, sums)
        if updParamGrads and not overwrite:
            self.accumulate(self.vars["scale"], sums[0], scale, momentum)
            self.accumulate(self.vars["bias"], sums[1], scale, momentum)
        return ingrad if updGrad else None

    def frozenBackward(self, grad, updGrad, sums):
        """The backward after an evaluation forward, the running statistics constants; after a fused one, through the
        activation's derivative, with the residual's gradient."""
        arrays, fused = grad.backend.gpuarray, self.fused
        resgrad = arrays.emptyLike(grad) if self.hadResidual and fused is not None else None
        ingrad = arrays.emptyLike(grad) if updGrad or resgrad is not None else None
        self.planOf(grad, fused).frozenBackward(FrozenBackward(
            self.inData, grad, ingrad, self.scale, self.mean, self.var, *sums, None if fused is None else self.data,
            resgrad,
        ))
        if self.hadResidual:
            self.residualGrad = grad if fused is None else resgrad
        return ingrad

    def stateArrays(self, call, updParamGrads=True):
        if call == "forward" and self.train:
            return self.training.stateArrays(self)
        return super().stateArrays(call, updParamGrads)

    # --- what backward reads, for containers

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

    def releaseResults(self):
        super().releaseResults()
        self.savemean, self.saveinvvar, self.renormCorrection = None, None, None
        self.hadResidual, self.residualGrad = False, None


def unittest():
    from PuzzleLib.TestLib import Reference

    for nd in (1, 2, 3):
        maps = 3
        bn = BatchNormND(nd, maps)
        hostData, ref = Reference.checkModule(bn, (4, maps) + (5, 3, 2)[:nd], seed=nd)

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
            ghost = Reference.batchRenormTrain(part, scale, bias, axes, 1e-5, renormMean, renormStd,
                                               rmin=2 / 3, rmax=1.5)
            assert np.allclose(out[start : start + 2], ghost.out, atol=1e-5)
            renormMean, renormStd = (renormMean + ghost.mean) / 2, (renormStd + ghost.sigma) / 2
        assert np.allclose(ghosts.renormStd.get(), renormStd, rtol=1e-5) and ghosts.numOfProps == 2


if __name__ == "__main__":
    unittest()
