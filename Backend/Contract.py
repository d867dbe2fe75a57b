"""The contract between the backend-independent front modules and the two backends, written once.

A backend (`Backend`) bundles five modules: its arrays (``gpuarray``) and four families of primitives. The CPU backend
(`PuzzleLib.Backend.Cpu`, numpy) and the CUDA backend (`PuzzleLib.Backend.Cuda`, pycuda and ``Kernels/*.cu``) each
implement every function of the protocols below with the same parameters; ``TestLib/tests/test_contract.py`` checks
both against this file (by reading their sources, so it runs where pycuda is not installed).

Division of labour: the front modules (`Backend.Dnn`, `Backend.TheanoBatchNorm`, `Backend.Blas`,
`Backend.ElementWise`, `Backend.Permute`) check every argument, pick the backend of the arrays they are given,
allocate the outputs from that backend's pool and handle empty data; a primitive receives arrays that already fit
(it only asserts what it relies on) and computes.

Batch-normalization primitives see the data as ``shape3 = (outer, maps, inner)``, normalized per map over ``outer``
and ``inner`` (``m = outer * inner`` elements per map): per-activation ``(N, C)`` is ``(N, C, 1)``, spatial
``(N, C, d1, ..., dk)`` is ``(N, C, d1 * ... * dk)``, channels-last ``(N, d1, ..., C)`` is ``(N * d1 * ..., C, 1)``.
Per-map arrays (parameters, statistics, parameter gradients) hold ``maps`` elements in any shape, float32 (float64 too
with float64 data on the CPU backend). Formulas: Ioffe & Szegedy 2015 (arXiv 1502.03167), Algorithm 1 and section 3;
the running variance is unbiased (m / (m - 1)), as in Theano and cuDNN.
"""

from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple, Protocol


class RunningStatistics(NamedTuple):
    """The running averages a model keeps per map: training updates them in place, evaluation normalizes with them.

    Attributes:
        mean (GPUArray): running mean; var (GPUArray): running unbiased variance.
    """

    mean: object
    var: object


class BatchStatistics(NamedTuple):
    """What a training forward saves for its backward, per map: the batch mean and 1 / sqrt(sigma2 + epsilon).

    Attributes:
        mean (GPUArray): the batch mean mu; invstd (GPUArray): the inverse standard deviation (biased sigma2).
    """

    mean: object
    invstd: object


class BatchMoments(NamedTuple):
    """The moments of one batch per map, as processes exchange them: the mean and the biased variance.

    Attributes:
        mean (GPUArray): the batch mean; var (GPUArray): mean((x - mean)**2), divided by the element count.
    """

    mean: object
    var: object


class RenormStatistics(NamedTuple):
    """The moving statistics Batch Renormalization corrects its training batches with, per map (Ioffe 2017, arXiv
    1702.03275; TensorFlow's ``renorm_mean`` and ``renorm_stddev``).

    Attributes:
        mean (GPUArray): moving average of the batch means; std (GPUArray): of the batch sqrt(sigma2 + epsilon).
    """

    mean: object
    std: object


class RenormCorrection(NamedTuple):
    """Batch Renormalization's per-map correction of one training batch, constants in backward:
    ``out = (xhat * r + d) * scale + bias``.

    Attributes:
        r (GPUArray): the clipped ratio of the batch's standard deviation to the moving one; d (GPUArray): the
            clipped shift of the batch mean from the moving one, in moving standard deviations.
    """

    r: object
    d: object


class RenormClipping(NamedTuple):
    """The bounds of Batch Renormalization's correction: r in [rmin, rmax], d in [-dmax, dmax]; floats, inf where a
    bound is absent."""

    rmin: float
    rmax: float
    dmax: float


class AffineParams(NamedTuple):
    """Per-map scale and bias of a normalization pass, ``out = xhat * scale + bias``.

    Attributes:
        scale (GPUArray); bias (GPUArray).
    """

    scale: object
    bias: object


class FusedActivation(NamedTuple):
    """An activation computed inside the batch-normalization passes, ``y = act(z)`` with z the normalized output (plus
    the residual, where one is given); its derivative is taken from y, so backward needs the output, not z.

    Kinds, with s = `slope`: ``"identity"`` (y = z), ``"relu"`` (max(z, 0)), ``"leakyRelu"`` (z, or s * z below 0),
    ``"elu"`` (z, or s * (exp(z) - 1) below 0; Clevert et al. 2015, arXiv 1511.07289, s is its alpha), ``"sigmoid"``,
    ``"tanh"``. Derivatives from y: 1; (y > 0); 1, or s where y <= 0; 1, or y + s where y <= 0; y * (1 - y);
    1 - y**2. Inverses (InPlace-ABN, Rota Bulo et al. 2018, arXiv 1712.02616) exist for identity, leakyRelu (s > 0)
    and elu (s > 0): z = y, or y / s, or log1p(y / s) where y < 0.

    Attributes:
        kind (str): one of `fusedActivations`; slope (float): the slope just below 0 (leakyRelu's negative slope,
            elu's alpha); 0 for the other kinds.
    """

    kind: str
    slope: float


# NOTE: the order is the kernels' numbering of the kinds (Kernels/BatchNorm.cu, ACT_*)
fusedActivations = ("identity", "relu", "leakyRelu", "elu", "sigmoid", "tanh")
# NOTE: InPlace-ABN divides by the scale to rebuild xhat; a |scale| below this divides by it instead (with the
# scale's sign, + for 0), the paper's guard against a vanishing scale without changing the forward's formula
reconstructionFloor = 1e-5


class GPUArrayModule(Protocol):
    """A backend's arrays (SPEC section 2): ``GPUArray`` (a subclass of `PuzzleLib.Backend.gpuarray.GPUArray`) and
    ``memoryPool`` (a `MemoryPool` over the backend's raw allocator), plus the three constructors.

    ``HostMirror(ary)`` is a host copy of `ary` that follows it without waiting for the device: ``refresh()`` queues a
    copy of its present contents (unless the previous one is still under way), ``latest()`` returns the newest copy
    that has completed, an ndarray, or None before the first has; neither blocks.
    """

    GPUArray: type
    memoryPool: object
    HostMirror: type

    def empty(self, shape, dtype):
        """An uninitialized C-contiguous array of `shape` and `dtype` from the backend's pool."""

    def zeros(self, shape, dtype):
        """An array of zeros of `shape` and `dtype` from the backend's pool."""

    def to_gpu(self, ary):
        """A new C-contiguous array holding a copy of the host array `ary` (any layout), same shape and dtype."""

    def hostBuffer(self, shape, dtype):
        """A host ndarray for ``GPUArray.get(out=...)`` (page-locked where the backend's memory is a device's)."""


class BatchNormPrimitives(Protocol):
    """Batch normalization over ``shape3``; ``dataTypes`` lists the data dtypes the backend computes in."""

    dataTypes: tuple

    def trainForward(
        self, data, out, shape3, *, scale, bias, running, saved, epsilon, factor, skipped, activation=None,
        residual=None,
    ):
        """Training forward with the batch statistics (m >= 2, `out` is not `data`).

        ``mu = mean(x)``, ``sigma2 = mean((x - mu)**2)`` (biased), ``invstd = 1 / sqrt(sigma2 + epsilon)``,
        ``out = (x - mu) * invstd * scale + bias``; writes ``saved.mean = mu`` and ``saved.invstd = invstd``; when
        `running` (a `RunningStatistics`) is not None, updates it in place:
        ``mean = (1 - factor) * mean + factor * mu``, ``var = (1 - factor) * var + factor * sigma2 * m / (m - 1)``.
        When `skipped` (a float32 per-map array, or None) is given, a map whose mu or sigma2 is not finite (as the
        backend computes them) keeps its running statistics and gains 1 in `skipped`; the decision is made where the
        statistics are finished, in the same pass.
        Statistics accumulate in at least float32 with a stable method (two-pass or Welford/Chan).
        With `activation` (a `FusedActivation`) and/or `residual` (an array like `data`) the pass writes
        ``out = act(xhat * scale + bias + residual)`` instead, in the same walk (`fusedForward`).
        """

    def batchStatistics(self, data, shape3, *, saved):
        """The per-map moments of the batch alone (m >= 1), for statistics merged across processes: writes
        ``saved.mean = mean(x)`` and ``saved.var = mean((x - mu)**2)`` (biased; 0 for one element), with the stable
        method of `trainForward`. `saved` is a `BatchMoments` of two float32 or two float64 arrays (whatever the data
        type); nothing else is written."""

    def normalize(self, data, out, shape3, *, scale, bias, saved, activation=None, residual=None):
        """The normalization pass of `trainForward` with given statistics (a `BatchStatistics`, such as those merged
        across processes): ``out = (x - saved.mean) * saved.invstd * scale + bias``, fused with `activation` and
        `residual` as `trainForward`. Nothing else is written."""

    def evalForward(self, data, out, shape3, *, scale, bias, running, epsilon, activation=None, residual=None):
        """Evaluation forward: ``out = (x - running.mean) / sqrt(running.var + epsilon) * scale + bias``, fused with
        `activation` and `residual` as `trainForward`; `out` may be `data` (in place: then no pool block is taken).
        Nothing else is written."""

    def backward(
        self, data, grad, ingrad, shape3, *, scale, saved, scalegrad, biasgrad, activation=None, outdata=None,
        bias=None, resgrad=None,
    ):
        """Backward after a training forward, with ``xhat = (x - saved.mean) * saved.invstd`` (non-empty data).

        Overwrites ``biasgrad = sum(grad)`` and ``scalegrad = sum(grad * xhat)``; when `ingrad` is not None,
        ``ingrad = scale * invstd / m * (m * grad - biasgrad - xhat * scalegrad)``. `ingrad` may be `grad` (in place).

        After a fused forward (`activation` given, with its output `outdata`): every formula takes
        ``grad * act'(outdata)`` in place of grad, computed in the same walks (`fusedBackward`), and `resgrad` (or
        None) receives it, the gradient of the residual. With `data` None (InPlace-ABN: the output overwrote the
        input) ``xhat = (act^-1(outdata) - bias) / scale`` instead, for an invertible activation (a |scale| below
        `reconstructionFloor` counts as that floor, with scale's sign); `saved.mean` is not read then. `bias` is read
        only then.
        """

    def inputGradient(self, data, grad, ingrad, shape3, *, scale, saved, scalegrad, biasgrad, count):
        """The input gradient of a training forward from given sums (non-empty data): with
        ``xhat = (x - saved.mean) * saved.invstd``,
        ``ingrad = scale * invstd * (grad - (biasgrad + xhat * scalegrad) / count)``. `scalegrad` and `biasgrad` are
        read, not written: sums over `count` elements per map, which may be more than this data holds (the batch of
        every process)."""

    def frozenBackward(
        self, data, grad, ingrad, shape3, *, scale, running, epsilon, scalegrad, biasgrad, activation=None,
        outdata=None, resgrad=None,
    ):
        """Backward after an evaluation forward, the statistics constants (non-empty data); with
        ``invstd = 1 / sqrt(running.var + epsilon)``: ``biasgrad = sum(grad)``,
        ``scalegrad = sum(grad * (x - running.mean) * invstd)``; when `ingrad` is not None,
        ``ingrad = grad * scale * invstd`` (the data is not read for it). After a fused forward, grad becomes
        ``grad * act'(outdata)`` and `resgrad` receives it, as in `backward`."""

    def renormStatistics(
        self, moments, count, *, scale, bias, running, renorm, saved, correction, corrected, epsilon, factor,
        renormMomentum, clipping, skipped,
    ):
        """The per-map step of a Batch Renormalization training forward (Ioffe 2017, arXiv 1702.03275), between the
        batch's `moments` (a `BatchMoments` over `count` >= 2 elements per map) and the normalization pass. With
        ``mu, sigma2 = moments``, ``sigma = sqrt(sigma2 + epsilon)`` and ``std = max(renorm.std, sqrt(epsilon))``
        (the moving values before this batch; the floor is TensorFlow's):

        - ``saved.mean = mu``, ``saved.invstd = 1 / sigma`` (a `BatchStatistics`);
        - ``correction.r = clip(sigma / std, clipping.rmin, clipping.rmax)``,
          ``correction.d = clip((mu - renorm.mean) / std, -clipping.dmax, clipping.dmax)`` (a `RenormCorrection`;
          a NaN stays NaN);
        - ``corrected.scale = r * scale``, ``corrected.bias = d * scale + bias`` (an `AffineParams`), what the
          normalization pass of `normalize` takes to compute ``((x - mu) / sigma * r + d) * scale + bias``;
        - the moving updates, in place: `running` (a `RunningStatistics`, or None) as `trainForward` updates it with
          `factor`, and ``renorm.mean = renormMomentum * renorm.mean + (1 - renormMomentum) * mu``,
          ``renorm.std = renormMomentum * renorm.std + (1 - renormMomentum) * sigma``. Where `skipped` is given, a
          map whose mu or sigma2 is not finite keeps both (running and renorm) and gains 1 in `skipped`.

        Per-map arrays are float32 (float64 with float64 data on the CPU backend), `clipping` a `RenormClipping`.
        """

    def renormCombine(self, correction, x, y, out):
        """``out = correction.r * x + correction.d * y`` per map (``out = r * x`` when `y` is None), for Batch
        Renormalization's backward: the scale a backward pass sees (``r * scale``) and the scale gradient
        (``r * sum(grad * xhat) + d * sum(grad)``). `out` may be `x` or `y`."""


class BlasPrimitives(Protocol):
    """Vector and matrix operations on arrays of one dtype from ``dataTypes``; outputs are given and fit."""

    dataTypes: tuple

    def addVectorToVector(self, x, y, out, alpha, beta):
        """``out = alpha * x + beta * y`` elementwise (non-empty); `out` may be `x` or `y`. With ``beta == 0`` `y` is
        not read (an inf or NaN there does not turn into 0 * inf)."""

    def toVectorAddVector(self, y, x, alpha):
        """``y += alpha * x`` elementwise (non-empty)."""

    def gemm(self, A, B, out, transpA, transpB, alpha, beta):
        """``out = alpha * op(A) @ op(B) + beta * out`` for 2D row-major arrays, op(X) = X.T when its flag is set;
        every dimension is positive. With ``beta == 0`` the previous contents of `out` are not read."""

    def sumOnMatrix(self, A, out, cols, alpha, beta):
        """``out = alpha * A.sum(axis=0 if cols else 1) + beta * out`` for a 2D `A`; `out` is non-empty. With
        ``beta == 0`` the previous contents of `out` are not read."""


class ElementWisePrimitives(Protocol):
    """The training stack's elementwise math, in the data's own dtype from ``dataTypes``; `out` may alias an input."""

    dataTypes: tuple

    def activation(self, act, data, out, slope):
        """``out = act(data)`` for act in sigmoid, relu, tanh, leakyRelu, elu (the formulas of `FusedActivation`, with
        `slope` a float; the other kinds ignore it)."""

    def activationBackward(self, act, grad, outdata, ingrad, slope):
        """``ingrad = grad * act'(x)``, expressed through the forward's output ``y = outdata``."""

    def addVectorToRows(self, data, vector, out):
        """``out[r, c] = data[r, c] + vector[c]`` for a 2D `data`."""

    def softmaxCrossEntropy(self, scores, labels, grad, rowStats, gradScale):
        """Per row of (rows, classes) `scores` with int32 `labels`: ``grad = (onehot - softmax) * gradScale``, and
        ``rowStats[r] = (-log softmax[label], 1 if the first largest score is at the label else 0, 1 if the label is
        out of range else 0)``. Every statistic is taken before `grad` is written (it may be the scores' memory)."""


class PermutePrimitives(Protocol):
    """Axis permutation into new memory; ``itemSizes`` lists the element sizes in bytes it moves (None: any)."""

    itemSizes: object

    def permute(self, src, perm, out):
        """``out = numpy.transpose(src, perm)`` for a non-empty `src` and an `out` of the permuted shape and src's
        dtype that does not overlap it."""


@dataclass(frozen=True)
class Backend:
    """One implementation of the contract: what ``array.backend`` returns and what the front modules call.

    Attributes:
        name (str): ``"cpu"`` or ``"cuda"``, as `PuzzleLib.Config.backend` spells it.
        gpuarray, batchNorm, blas, elementWise, permute (module): the backend's modules following
            `GPUArrayModule`, `BatchNormPrimitives`, `BlasPrimitives`, `ElementWisePrimitives` and `PermutePrimitives`.
    """

    name: str
    gpuarray: ModuleType
    batchNorm: ModuleType
    blas: ModuleType
    elementWise: ModuleType
    permute: ModuleType

    def __repr__(self):
        return "Backend(%r)" % self.name
