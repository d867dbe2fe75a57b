"""Batch normalization of the CPU backend over numpy: `NumpyPlan`, whose methods are the primitives of
`Backend.BatchNormPlan` (which states what each computes). The fallback where the C kernels (`Backend.Cpu.CBatchNorm`)
cannot be built, the implementation of the passes fused with an activation or a residual, and the readable reference
of both the C and the CUDA kernels. The machinery (chunks over the cores, two-pass statistics) is in
`Backend.Cpu.NumpyChunks`.

Data, output and gradients are float32, float16 (computed in float32) or float64 (computed in float64, for
finite-difference gradient checks); per-map parameters and statistics are float32 (float64 with float64 data).
Formulas: Ioffe & Szegedy 2015 (arXiv 1502.03167), Algorithm 1 and section 3; Batch Renormalization: Ioffe 2017
(arXiv 1702.03275).
"""

import numpy as np

from PuzzleLib.Backend.BatchNormPlan import BatchNormPlan
from PuzzleLib.Backend.Cpu.NumpyChunks import (
    Chunks,
    FusedGradient,
    computeType,
    gradientFactors,
    gradientSums,
    inputGradientPass,
    mapVector,
    moments,
    normalizeRows,
    rowsOf,
)
from PuzzleLib.Backend.StatisticsUpdate import guardedUpdate, runningUpdates

NAME = "numpy"
dataTypes = (np.dtype(np.float32), np.dtype(np.float16), np.dtype(np.float64))
float64 = np.float64


def saveRunning(call, maps):
    """The running statistics and skip counts of a `Contract.TrainForward` as they are, into its ``backup`` (rows of
    `maps`, 0 for counts it does not have), and its ``stamp`` last: the C kernel's saveRunning."""
    backup = mapVector(call.backup, 3 * maps + 1)
    backup[:maps] = mapVector(call.mean, maps)
    backup[maps : 2 * maps] = mapVector(call.var, maps)
    backup[2 * maps : 3 * maps] = 0.0 if call.skipped is None else mapVector(call.skipped, maps)
    backup[3 * maps] = call.stamp


class NumpyPlan(BatchNormPlan):
    """The numpy kernels' plan: the ``(outer, maps, inner)`` rows cut into chunks once (`Chunks`)."""

    name = NAME

    def __init__(self, backend, layout, dtype, options):
        super().__init__(backend, layout, dtype, options)
        self.chunks = Chunks(self.shape3)

    def vector(self, ary, dtype=None):
        """The per-map host vector of `ary` (a view; a copy of `dtype` when given)."""
        vector = mapVector(ary, self.maps)
        return vector if dtype is None else vector.astype(dtype)

    def trainForward(self, call):
        """The statistics of `moments`, then one normalization pass (fused with the activation and the residual)."""
        chunks, m = self.chunks, self.m
        x = chunks.view(call.data)
        with np.errstate(invalid="ignore", over="ignore"):
            mu, sigma2 = moments(chunks, x)
            invstd = 1.0 / np.sqrt(sigma2 + self.epsilon)
        normalizeRows(
            chunks, x, chunks.view(call.out), center=mu, gain=invstd * self.vector(call.scale),
            shift=self.vector(call.bias), activation=self.activation, residual=rowsOf(chunks, call.residual),
        )
        self.vector(call.savemean)[...] = mu
        self.vector(call.saveinvvar)[...] = invstd
        if call.mean is None:
            return
        if call.backup is not None:
            saveRunning(call, self.maps)
        finite = None if call.skipped is None else np.isfinite(mu) & np.isfinite(sigma2)
        guardedUpdate(runningUpdates(self.vector(call.mean), self.vector(call.var), mu, sigma2, m, call.factor), finite)
        if finite is not None:
            counts = self.vector(call.skipped)
            counts[...] += ~finite
            if call.mirror is not None:
                self.vector(call.mirror)[~finite] = counts[~finite]

    def batchStatistics(self, call):
        """The corrected two passes of `moments` alone: where processes merge their moments, an error in a process's
        mean enters the merged variance through the spread of the processes' means (Chan's cross term), so the mean is
        repaired (about 1e-8 relative for float32 data at a mean 1e4 times the standard deviation, against 1e-4
        uncorrected)."""
        mu, sigma2 = moments(self.chunks, self.chunks.view(call.data), corrected=True)
        self.vector(call.mean)[...] = mu
        self.vector(call.var)[...] = sigma2

    def normalize(self, call):
        """The pass of `normalizeRows` with gain = scale * saveinvvar, in float64."""
        chunks = self.chunks
        normalizeRows(
            chunks, chunks.view(call.data), chunks.view(call.out), center=self.vector(call.savemean),
            gain=self.vector(call.scale) * self.vector(call.saveinvvar, float64), shift=self.vector(call.bias),
            activation=self.activation, residual=rowsOf(chunks, call.residual),
        )

    def evalForward(self, call):
        """One pass of `normalizeRows` with the running statistics; gain = scale / sqrt(var + epsilon) in float64, once
        per call."""
        chunks = self.chunks
        normalizeRows(
            chunks, chunks.view(call.data), chunks.view(call.out), center=self.vector(call.mean),
            gain=self.vector(call.scale) / np.sqrt(self.vector(call.var, float64) + self.epsilon),
            shift=self.vector(call.bias), activation=self.activation, residual=rowsOf(chunks, call.residual),
        )

    def backward(self, call):
        """The two sums in one pass each, then the pass of `inputGradientPass`; after a fused forward, the walks of
        `FusedGradient`."""
        invstd = self.vector(call.saveinvvar, float64)
        if self.activation is not None:
            center = self.vector(call.savemean, float64) if call.data is not None else None
            self.fusedBackward(call, center, invstd, frozen=False)
            return
        chunks = self.chunks
        x, g = chunks.view(call.data), chunks.view(call.grad)
        mu = self.vector(call.savemean, float64)
        dbias, dscale = gradientSums(chunks, x, g, mu, invstd, call.scalegrad, call.biasgrad)
        if call.ingrad is not None:
            factors = gradientFactors(self.vector(call.scale), invstd, dbias, dscale, self.m)
            inputGradientPass(chunks, x, g, chunks.view(call.ingrad), mu, *factors)

    def inputGradient(self, call):
        """The pass of `inputGradientPass` with the given sums."""
        chunks = self.chunks
        invstd = self.vector(call.saveinvvar, float64)
        factors = gradientFactors(
            self.vector(call.scale), invstd, self.vector(call.biasgrad, float64), self.vector(call.scalegrad, float64),
            call.count,
        )
        inputGradientPass(
            chunks, chunks.view(call.data), chunks.view(call.grad), chunks.view(call.ingrad),
            self.vector(call.savemean, float64), *factors,
        )

    def frozenBackward(self, call):
        """The two sums, then ingrad = grad * (scale * invstd) per map (the data is not read for it); after a fused
        forward, the walks of `FusedGradient`."""
        invstd = 1.0 / np.sqrt(self.vector(call.var, float64) + self.epsilon)
        if self.activation is not None:
            self.fusedBackward(call, self.vector(call.mean, float64), invstd, frozen=True)
            return
        chunks = self.chunks
        x, g = chunks.view(call.data), chunks.view(call.grad)
        gradientSums(chunks, x, g, self.vector(call.mean, float64), invstd, call.scalegrad, call.biasgrad)
        if call.ingrad is None:
            return

        dx = chunks.view(call.ingrad)
        gains = chunks.perMap(self.vector(call.scale) * invstd, computeType(x.dtype))

        def inputGradient(rows, scratch):
            np.multiply(g[rows], chunks.part(gains, rows), out=dx[rows], casting="same_kind")

        chunks.run(inputGradient)

    def fusedBackward(self, call, center, invstd, frozen):
        """Backward after a forward fused with the plan's activation: the sums walk (dz into `resgrad` where given),
        then the input-gradient walk; with `data` None xhat is rebuilt from the output (InPlace-ABN), its deviation
        already scaled (``devScale`` 1)."""
        chunks = self.chunks
        scale = self.vector(call.scale, float64)
        rebuilt = call.data is None
        centers = self.vector(call.bias) if rebuilt else center
        walks = FusedGradient(
            chunks, chunks.view(call.grad), chunks.view(call.outdata), None if rebuilt else chunks.view(call.data),
            self.activation, centers, scale,
        )
        dz = rowsOf(chunks, call.resgrad)
        devScale = 1.0 if rebuilt else invstd
        dbias, sumGD = walks.sums(dz)
        dscale = sumGD * devScale
        self.vector(call.biasgrad)[...] = dbias
        self.vector(call.scalegrad)[...] = dscale
        if call.ingrad is None:
            return
        gain = scale * invstd
        if frozen:
            walks.inputGradient(chunks.view(call.ingrad), dz, gain)
        else:
            walks.inputGradient(chunks.view(call.ingrad), dz, gain, -gain * devScale * dscale / self.m,
                                -gain * dbias / self.m)

    def renormStatistics(self, call):
        """Batch Renormalization's per-map step in float64, the twin of the CUDA kernel ``bnRenormStatistics``; both
        CPU kernel sets run it (it reads and writes per-map vectors only)."""
        vector, epsilon = self.vector, self.epsilon
        mu, sigma2 = vector(call.batchMean, float64), vector(call.batchVar, float64)
        renormMean, renormStd = vector(call.renormMean), vector(call.renormStd)
        clipping, count = call.clipping, call.count
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            sigma = np.sqrt(sigma2 + epsilon)
            std = np.maximum(renormStd, np.sqrt(epsilon), dtype=float64)
            # NOTE: np.clip keeps a NaN a NaN, as the kernel's comparisons do
            r = np.clip(sigma / std, clipping.rmin, clipping.rmax)
            d = np.clip((mu - renormMean) / std, -clipping.dmax, clipping.dmax)
            scale = vector(call.scale)
            outputs = ((call.savemean, mu), (call.saveinvvar, 1.0 / sigma), (call.r, r), (call.d, d),
                       (call.correctedScale, r * scale), (call.correctedBias, d * scale + vector(call.bias)))
            for target, value in outputs:
                vector(target)[...] = value

            finite = None if call.skipped is None else np.isfinite(mu) & np.isfinite(sigma2)
            weight = 1.0 - call.renormMomentum
            updates = [(renormMean, mu, weight), (renormStd, sigma, weight)]
            if call.mean is not None:
                updates += runningUpdates(vector(call.mean), vector(call.var), mu, sigma2, count, call.factor)
            guardedUpdate(updates, finite)
        if finite is not None:
            vector(call.skipped)[...] += ~finite

    def renormCombine(self, call):
        """``out = r * x + d * y`` per map in float64."""
        result = self.vector(call.r, float64) * self.vector(call.x)
        if call.y is not None:
            result += self.vector(call.d) * self.vector(call.y, float64)
        self.vector(call.out)[...] = result
