"""The numpy kernels' machinery: rows of the ``(outer, maps, inner)`` view cut into cache-sized chunks spread over the
cores, the two-pass statistics, the normalization pass and the fused activations, each the readable twin of a step of
the C kernels (``Kernels/BatchNorm.c``) and the CUDA kernels (``Kernels/BatchNorm.cu``). `NumpyBatchNorm.NumpyPlan`
puts them together into the primitives.

The work is cut into chunks of rows of about `CHUNK_ELEMENTS` elements that are spread over
`PuzzleLib.Config.cpuThreads` cores (numpy releases the GIL); every stage finishes a chunk while it is in cache, so a
pass reads its inputs and writes its output once. Statistics are two-pass (the mean, then the sum of squared
deviations): float32 sums over one row (numpy sums it pairwise) or over a chunk's column are added in float64, as
PyTorch's CPU kernels accumulate in double; where a chunk's columns are long (per-activation data of few features) the
second pass also sums the deviations and corrects the mean (the corrected two-pass algorithm). A map whose mean is 1e4
times its standard deviation keeps its variance well within SPEC section 3's 1e-3 relative: about 1e-6 where a map's
elements are contiguous, below 4e-4 for per-activation data.
"""

import threading
from concurrent import futures
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from PuzzleLib import Config
from PuzzleLib.Backend.Contract import reconstructionFloor
from PuzzleLib.Backend.Cpu.GPUArray import empty, hostView

CHUNK_ELEMENTS = 1 << 17
# NOTE: a float32 sum loses about one ulp of its running total per value it adds one after another; up to this many
# values a mean of 1e4 times the standard deviation moves the variance by less than 4e-4 relative (32 * 2^-24 * 1e4
# standard deviations, squared), within SPEC section 3's 1e-3
MAX_SEQUENTIAL_TERMS = 32

_executor, _executorWorkers, _executorLock = None, 0, threading.Lock()


def executor(threads):
    """The worker pool, with at least `threads` workers (made anew when `Config.cpuThreads` grew)."""
    global _executor, _executorWorkers
    with _executorLock:
        if _executor is None or _executorWorkers < threads:
            _executor, _executorWorkers = ThreadPoolExecutor(threads, thread_name_prefix="PuzzleLibCpu"), threads
        return _executor


def waitForAll(tasks):
    """Waits until every task has finished or was cancelled, through further interrupts (the first exception is the one
    the caller re-raises)."""
    for task in tasks:
        task.cancel()
    while True:
        try:
            futures.wait(tasks)
            return
        except BaseException:  # a second Ctrl-C must not cut the wait short
            continue


def computeType(dtype):
    return np.dtype(np.float64) if dtype == np.float64 else np.dtype(np.float32)


class Chunks:
    """Rows of the (outer, maps, inner) view, cut into chunks for the cores.

    With inner > 1 a row is one map's ``inner`` contiguous elements (rows = outer * maps, row i belongs to map
    i % maps); with inner == 1 a row holds one element of every map (rows = outer).
    """

    def __init__(self, shape3):
        self.outer, self.maps, self.inner = shape3
        self.byMapRows = self.inner > 1
        self.rows, self.rowLength = (self.outer * self.maps, self.inner) if self.byMapRows else (self.outer, self.maps)
        step = max(1, CHUNK_ELEMENTS // max(self.rowLength, 1))
        self.slices = [slice(start, min(start + step, self.rows)) for start in range(0, self.rows, step)]
        self.chunkElements = step * self.rowLength
        # NOTE: numpy sums a row pairwise, but a column (inner == 1) row after row: that many terms per partial sum
        self.sequentialTerms = 1 if self.byMapRows else min(step, self.rows)

    def view(self, ary):
        return hostView(ary).reshape(self.rows, self.rowLength)

    def perMap(self, vector, dtype):
        """A per-map float vector expanded once per call so that ``part(expanded, rows)`` broadcasts against rows."""
        vector = np.asarray(vector).astype(dtype)
        return np.tile(vector, self.outer)[:, None] if self.byMapRows else vector[None, :]

    def part(self, expanded, rows):
        return expanded[rows] if self.byMapRows else expanded

    def run(self, work, dtype=None):
        """Calls ``work(rows, scratch)`` for every chunk, the chunks spread over the cores; `scratch` is a chunk-sized
        buffer of `dtype` (from the pool) private to the calling thread, or None."""
        threads = Config.cpuThreads
        groups = [self.slices[t::threads] for t in range(min(threads, len(self.slices)))]
        workspace = None if dtype is None else empty((len(groups), self.chunkElements), dtype)

        stop = threading.Event()

        def runGroup(t):
            scratch = None if workspace is None else hostView(workspace)[t]
            # NOTE: a NaN or inf in the data gives what the formulas give, quietly, as in the C and CUDA kernels
            # (numpy's error state is per thread, so it is set here)
            with np.errstate(invalid="ignore", over="ignore"):
                for rows in groups[t]:
                    if stop.is_set():
                        return
                    work(rows, None if scratch is None else scratch[: (rows.stop - rows.start) * self.rowLength])

        # NOTE: a single chunk runs on the calling thread; handing it to the pool would only add latency
        if len(groups) == 1:
            runGroup(0)
            return

        tasks = [executor(threads).submit(runGroup, t) for t in range(len(groups))]
        try:
            for task in tasks:
                task.result()
        except BaseException:
            # NOTE: an exception (a worker's, or KeyboardInterrupt in this thread) must not leave the call while a
            # worker still writes into the output, whose block the pool would hand to the next array
            stop.set()
            waitForAll(tasks)
            raise

    def mapTotals(self, partials):
        """Per-map float64 totals from per-chunk partial sums collected by `sums`."""
        if self.byMapRows:
            return partials.reshape(self.outer, self.maps).sum(axis=0)
        return partials.sum(axis=0)

    def sums(self, x, y=None, center=None, dtype=np.float32, deviationSums=False):
        """Per-map float64 sums of x, or of d * y with d = x - center, or of d^2 when y is x and center is given.

        Each chunk sums in `dtype` (a row pairwise, or at most a chunk of rows); the partials are added in float64.
        With `deviationSums` (and a center) returns ``(sum of d, sum of d * y)``.
        """
        xv = x.reshape(self.rows, self.rowLength)
        yv = None if y is None else y.reshape(self.rows, self.rowLength)
        centers = None if center is None else self.perMap(center, dtype)
        shape = (self.rows,) if self.byMapRows else (len(self.slices), self.maps)
        partials = np.empty(shape, dtype=np.float64)
        deviations = np.empty(shape, dtype=np.float64) if deviationSums else None
        index = {rows.start: i for i, rows in enumerate(self.slices)}
        axis, subscripts = (1, "ij,ij->i") if self.byMapRows else (0, "ij,ij->j")

        def work(rows, scratch):
            xs = xv[rows]
            if center is not None:
                deviation = scratch.reshape(xs.shape)
                np.subtract(xs, self.part(centers, rows), out=deviation, casting="same_kind")
                xs = deviation
            ys = xs if (y is x and center is not None) else (None if yv is None else yv[rows])

            at = rows if self.byMapRows else index[rows.start]
            partials[at] = np.add.reduce(xs, axis=axis, dtype=dtype) if ys is None else np.einsum(subscripts, xs, ys)
            if deviationSums:
                deviations[at] = np.add.reduce(xs, axis=axis, dtype=dtype)

        self.run(work, dtype=None if center is None else dtype)
        if deviationSums:
            return self.mapTotals(deviations), self.mapTotals(partials)
        return self.mapTotals(partials)


def mapVector(ary, maps):
    return hostView(ary).reshape(maps)


def normalizeRows(chunks, x, y, *, center, gain, shift, activation=None, residual=None):
    """y = (x - center) * gain + shift per map, in the compute type; y may be x (in place). The deviation comes first:
    folding the center into the shift (``x * gain + shift'``) would lose |center| / std times more to rounding. Only
    float16 data needs a float32 buffer, a chunk-sized host temporary (so in-place evaluation takes no pool block); the
    other types compute in y itself. With `residual` (rows like x) and `activation` (a `FusedActivation`),
    ``y = act((x - center) * gain + shift + residual)``, each chunk finished while it is in cache."""
    ctype = computeType(x.dtype)
    centers, gains, shifts = (chunks.perMap(vector, ctype) for vector in (center, gain, shift))
    fused = activation is not None or residual is not None

    def work(rows, scratch):
        inOutput = y.dtype == ctype
        deviation = y[rows] if inOutput else np.empty(y[rows].shape, ctype)
        np.subtract(x[rows], chunks.part(centers, rows), out=deviation, casting="same_kind")
        deviation *= chunks.part(gains, rows)
        if not fused:
            np.add(deviation, chunks.part(shifts, rows), out=y[rows], casting="same_kind")
            return
        deviation += chunks.part(shifts, rows)
        if residual is not None:
            np.add(deviation, residual[rows], out=deviation, casting="same_kind")
        if activation is not None:
            activate(deviation, activation)
        if not inOutput:
            y[rows] = deviation

    chunks.run(work)


# --- fused activations (`Contract.FusedActivation`): the twins of actForward, actDerivative and actInverse in
# Kernels/BatchNorm.cu; each works on a chunk in place or into a chunk-sized temporary


def activate(v, activation):
    """v = act(v) in place (v of the compute type)."""
    kind, slope = activation
    if kind == "relu":
        np.maximum(v, 0, out=v)
    elif kind in ("leakyRelu", "elu"):
        negative = np.minimum(v, 0)
        if kind == "elu":
            np.expm1(negative, out=negative)
        negative *= slope
        np.maximum(v, 0, out=v)
        v += negative
    elif kind == "sigmoid":
        np.negative(v, out=v)
        np.exp(v, out=v)
        v += 1
        np.reciprocal(v, out=v)
    elif kind == "tanh":
        np.tanh(v, out=v)


def activationDerivative(y, activation, ctype):
    """act'(z) from the output y = act(z), a new array of `ctype`."""
    kind, slope = activation
    y = y.astype(ctype, copy=False)
    if kind == "identity":
        return np.ones_like(y)
    if kind == "relu":
        return (y > 0).astype(ctype)
    if kind == "leakyRelu":
        return np.where(y > 0, ctype.type(1), ctype.type(slope))
    if kind == "elu":
        return np.where(y > 0, ctype.type(1), y + ctype.type(slope))
    if kind == "sigmoid":
        return y * (1 - y)
    return 1 - y * y


def activationInverse(y, activation, ctype):
    """z = act^-1(y) for an invertible activation (identity, leakyRelu or elu with slope > 0), a new array of
    `ctype`."""
    kind, slope = activation
    z = y.astype(ctype, copy=True)
    if kind == "leakyRelu":
        negative = z < 0
        z[negative] /= slope
    elif kind == "elu":
        negative = z < 0
        z[negative] = np.log1p(z[negative] / ctype.type(slope))
    return z


def moments(chunks, x, corrected=False):
    """Per-map float64 ``(mu, sigma2)`` of the rows: two passes, corrected where columns are long (see the file's
    docstring) or where `corrected` asks for a mean as exact as the variance."""
    m = chunks.outer * chunks.inner
    ctype = computeType(x.dtype)
    mu = chunks.sums(x, dtype=ctype) / m
    if chunks.sequentialTerms <= MAX_SEQUENTIAL_TERMS and not corrected:
        return mu, chunks.sums(x, x, center=mu, dtype=ctype) / m

    # NOTE: the corrected two-pass algorithm (Chan, Golub & LeVeque 1983): the second pass also sums the deviations
    # from the first pass's mean, which repairs that mean where its float32 partial sums, long columns, lost digits;
    # the deviations are taken from the center as the pass uses it, rounded to the compute type
    center = mu.astype(ctype).astype(np.float64)
    deviation, squares = chunks.sums(x, x, center=center, dtype=ctype, deviationSums=True)
    return center + deviation / m, np.maximum(squares / m - (deviation / m) ** 2, 0.0)


def rowsOf(chunks, ary):
    """The chunk rows of `ary`, or None."""
    return None if ary is None else chunks.view(ary)


def gradientSums(chunks, x, g, center, invstd, scalegrad, biasgrad):
    """biasgrad = sum(g), scalegrad = sum(g * (x - center) * invstd); returns (dbias, dscale) in float64."""
    ctype = computeType(x.dtype)
    dbias = chunks.sums(g, dtype=ctype)
    dscale = chunks.sums(x, g, center=center, dtype=ctype) * invstd
    mapVector(biasgrad, chunks.maps)[...] = dbias
    mapVector(scalegrad, chunks.maps)[...] = dscale
    return dbias, dscale


def gradientFactors(scale, invstd, dbias, dscale, count):
    """The per-map float64 ``(gain, slope, offset)`` of the training input gradient
    ``scale * invstd * (g - (dbias + xhat * dscale) / count) = gain * g + slope * (x - mu) + offset``."""
    gain = scale * invstd
    return gain, -gain * invstd * dscale / count, -gain * dbias / count


def inputGradientPass(chunks, x, g, dx, center, gain, slope, offset):
    """dx = gain * g + slope * (x - center) + offset per map (float64 vectors, taken to the compute type once)."""
    ctype = computeType(x.dtype)
    centers, gains = chunks.perMap(center, ctype), chunks.perMap(gain, ctype)
    slopes, offsets = chunks.perMap(slope, ctype), chunks.perMap(offset, ctype)

    def work(rows, scratch):
        term = scratch.reshape(dx[rows].shape)
        np.subtract(x[rows], chunks.part(centers, rows), out=term, casting="same_kind")
        term *= chunks.part(slopes, rows)
        term += chunks.part(offsets, rows)
        np.multiply(g[rows], chunks.part(gains, rows), out=dx[rows], casting="same_kind")
        np.add(dx[rows], term, out=dx[rows], casting="same_kind")

    chunks.run(work, dtype=ctype)


def guardedScale(scale):
    """The scale InPlace-ABN divides by: `scale`, or `Contract.reconstructionFloor` with scale's sign (+ for 0) where
    |scale| is below it."""
    floor = np.where(scale < 0, -reconstructionFloor, reconstructionFloor)
    return np.where(np.abs(scale) < reconstructionFloor, floor, scale)


class FusedGradient:
    """The backward walks after a forward fused with `activation` (a `FusedActivation`): the output's gradient
    ``dz = g * act'(y)`` per chunk, and the deviation ``x - center`` of each element, or xhat itself rebuilt from the
    output, ``(act^-1(y) - bias) / scale``, where the input is gone (InPlace-ABN, `x` None).

    Args:
        chunks (`Chunks`); g, y, x (row views, x None when rebuilt); activation (`FusedActivation`);
        centers (float64 per-map vector: the statistics' mean, or the bias when rebuilt); scale (float64 per-map
        vector: the parameters' scale, read when rebuilt).
    """

    def __init__(self, chunks, g, y, x, activation, centers, scale):
        self.chunks, self.g, self.y, self.x, self.activation = chunks, g, y, x, activation
        self.ctype = computeType(g.dtype)
        self.centers = chunks.perMap(centers, self.ctype)
        # NOTE: a rebuilt xhat = (z - bias) / scale needs no further scaling by invstd
        self.inverseScales = None if x is not None else chunks.perMap(1.0 / guardedScale(scale), self.ctype)

    def deviation(self, rows):
        part = self.chunks.part
        if self.x is None:
            dev = activationInverse(self.y[rows], self.activation, self.ctype)
            dev -= part(self.centers, rows)
            dev *= part(self.inverseScales, rows)
            return dev
        return np.subtract(self.x[rows], part(self.centers, rows), dtype=self.ctype)

    def gradientOf(self, rows):
        return np.multiply(self.g[rows], activationDerivative(self.y[rows], self.activation, self.ctype),
                           dtype=self.ctype)

    def sums(self, dz):
        """Per-map float64 ``(sum(dz), sum(dz * deviation))``, float64 totals of compute-type partials as in
        `Chunks.sums`; dz goes to the rows `dz` where given (the residual's gradient)."""
        chunks = self.chunks
        shape = (chunks.rows,) if chunks.byMapRows else (len(chunks.slices), chunks.maps)
        sumG, sumGD = np.empty(shape), np.empty(shape)
        index = {rows.start: i for i, rows in enumerate(chunks.slices)}
        axis, subscripts = (1, "ij,ij->i") if chunks.byMapRows else (0, "ij,ij->j")

        def work(rows, scratch):
            dzRows = self.gradientOf(rows)
            if dz is not None:
                dz[rows] = dzRows
            at = rows if chunks.byMapRows else index[rows.start]
            sumG[at] = np.add.reduce(dzRows, axis=axis, dtype=self.ctype)
            sumGD[at] = np.einsum(subscripts, dzRows, self.deviation(rows))

        chunks.run(work)
        return chunks.mapTotals(sumG), chunks.mapTotals(sumGD)

    def inputGradient(self, dx, dz, gain, slope=None, offset=None):
        """``dx = gain * dz + slope * deviation + offset`` per map (``gain * dz`` without a slope: the frozen
        backward), dz recomputed, or read from the rows `dz` where the sums wrote it; `dx` may be the rows of g."""
        chunks, ctype = self.chunks, self.ctype
        gains = chunks.perMap(gain, ctype)
        terms = None if slope is None else (chunks.perMap(slope, ctype), chunks.perMap(offset, ctype))

        def work(rows, scratch):
            dzRows = self.gradientOf(rows) if dz is None else dz[rows].astype(ctype)
            dzRows *= chunks.part(gains, rows)
            if terms is not None:
                term = self.deviation(rows)
                term *= chunks.part(terms[0], rows)
                term += chunks.part(terms[1], rows)
                dzRows += term
            dx[rows] = dzRows

        chunks.run(work)
