"""The contract between the backend-independent front modules and the two backends, written once.

A backend (`Backend`) bundles five modules: its arrays (``gpuarray``) and four families of primitives. The CPU backend
(`PuzzleLib.Backend.Cpu`, C kernels and numpy) and the CUDA backend (`PuzzleLib.Backend.Cuda`, pycuda and
``Kernels/*.cu``) each implement every function of the protocols below with the same parameters;
``TestLib/tests/test_contract.py`` checks both against this file (by reading their sources, so it runs where pycuda is
not installed).

Batch normalization is the exception to "functions with parameters": a call is planned once per data shape, dtype,
normalized axes and options (`Backend.BatchNormPlan`), and its primitives are the methods of the plan, each taking
the plan and one record of the call's arrays defined here (`TrainForward`, `EvalForward`, `Normalize`, `Moments`,
`Backward`, `FrozenBackward`, `InputGradient`, `RenormStep`, `RenormCombine`, and the two that are made of these,
`RenormForward` and `RenormBackward`): each parameter list is written once, in its record. What each primitive
computes is said on `BatchNormPlan`'s method of the same name.

Division of labour: the front modules (`Backend.Dnn`, `Backend.TheanoBatchNorm`, `Backend.Blas`,
`Backend.ElementWise`, `Backend.Permute`) check every argument, pick the backend of the arrays they are given and
allocate the outputs from that backend's pool; a module checks its own contract and calls the plans itself. A
primitive receives arrays that already fit and computes; empty data and axes without an ``(outer, maps, inner)`` view
never reach a backend (`BatchNormPlan.EmptyPlan`, `BatchNormPlan.PermutedPlan`).

Batch-normalization primitives see the data as ``shape3 = (outer, maps, inner)``, normalized per map over ``outer``
and ``inner`` (``m = outer * inner`` elements per map): per-activation ``(N, C)`` is ``(N, C, 1)``, spatial
``(N, C, d1, ..., dk)`` is ``(N, C, d1 * ... * dk)``, channels-last ``(N, d1, ..., C)`` is ``(N * d1 * ..., C, 1)``.
Per-map arrays (parameters, statistics, parameter gradients) hold ``maps`` elements in any shape, float32 (float64 too
with float64 data on the CPU backend). A record field that is None is a null pointer: absent (no running statistics,
no residual, no input gradient). Formulas: Ioffe & Szegedy 2015 (arXiv 1502.03167), Algorithm 1 and section 3; the
running variance is unbiased (m / (m - 1)), as in Theano and cuDNN.
"""

import collections
from dataclasses import dataclass
from types import ModuleType
from typing import NamedTuple, Protocol


class BatchMoments(NamedTuple):
    """The moments of one batch per map, as processes exchange them: the mean and the biased variance.

    Attributes:
        mean (GPUArray): the batch mean; var (GPUArray): mean((x - mean)**2), divided by the element count.
    """

    mean: object
    var: object


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

# --- the records of a batch-normalization call: one per primitive of `BatchNormPlan`, every array a GPUArray or None


def record(name, fields, doc):
    """A record type (a `collections.namedtuple`) of the space-separated `fields`, those after a ``|`` defaulting to
    None, documented by `doc`."""
    required, _, optional = fields.partition("|")
    result = collections.namedtuple(name, required.split() + optional.split(), defaults=[None] * len(optional.split()))
    result.__doc__ = doc
    return result


TrainForward = record(
    "TrainForward", "data out scale bias mean var skipped savemean saveinvvar factor | residual backup stamp mirror",
    "A training forward: `data` normalized with its batch statistics into `out` (`data` itself only for "
    "InPlace-ABN); `savemean`, `saveinvvar` receive mu and 1 / sqrt(sigma2 + epsilon); `mean`, `var` (both or "
    "neither) move by `factor`, guarded by the counter `skipped` where it is given; `residual` is added before "
    "the plan's activation. `backup` (float32, ``3 * maps + 1`` elements; with float32 `mean` and `var`) receives "
    "what the running update overwrites, `mean`, `var` and `skipped` (0 without) in rows of `maps`, then `stamp` "
    "(an integer below 2**24, as a float): `Modules.Transaction.KernelBackup`. `mirror` (with `skipped`; a "
    "`HostMirror`'s ``target``) receives the count of each map the update skips as it counts it, so the counts "
    "reach the host without a copy.",
)

EvalForward = record(
    "EvalForward", "data out scale bias mean var | residual",
    "An evaluation forward with the running `mean` and `var`; `out` may be `data` (in place).",
)

Normalize = record(
    "Normalize", "data out scale bias savemean saveinvvar | residual",
    "The normalization pass of a training forward with given statistics `savemean`, `saveinvvar`.",
)

Moments = record(
    "Moments", "data mean var",
    "The batch's per-map moments alone: `mean` and the biased `var` (float32 or float64 arrays, both alike).",
)

Backward = record(
    "Backward", "data grad ingrad scale savemean saveinvvar scalegrad biasgrad | bias outdata resgrad",
    "A backward after a training forward: `scalegrad` and `biasgrad` are overwritten with the sums, `ingrad` "
    "(None: not computed; it may be `grad`) with the input gradient. After a fused forward `outdata` is its "
    "output and `resgrad` (or None) receives the residual's gradient; `data` None rebuilds xhat from `outdata` "
    "with `bias` (InPlace-ABN).",
)

FrozenBackward = record(
    "FrozenBackward", "data grad ingrad scale mean var scalegrad biasgrad | outdata resgrad",
    "A backward after an evaluation forward with the running `mean` and `var` (constants); the rest as "
    "`Backward`.",
)

InputGradient = record(
    "InputGradient", "data grad ingrad scale savemean saveinvvar scalegrad biasgrad count",
    "The input gradient of a training forward from given sums `scalegrad`, `biasgrad` over `count` elements per "
    "map (read, not written).",
)

RenormStep = record(
    "RenormStep",
    "batchMean batchVar count scale bias mean var renormMean renormStd savemean saveinvvar r d "
    "correctedScale correctedBias skipped factor renormMomentum clipping",
    "Batch Renormalization's per-map step between the batch moments (`batchMean`, biased `batchVar`, over `count` "
    "elements per map) and the normalization pass: writes `savemean`, `saveinvvar`, the correction `r`, `d` and "
    "the corrected parameters `correctedScale`, `correctedBias`; moves `mean`, `var` (both or neither) by "
    "`factor` and `renormMean`, `renormStd` by `renormMomentum`, guarded by `skipped` where it is given; "
    "`clipping` is a `RenormClipping`.",
)

RenormForward = record(
    "RenormForward",
    "data out scale bias mean var renormMean renormStd skipped savemean saveinvvar r d factor "
    "renormMomentum clipping",
    "Batch Renormalization's training forward (`RenormStep` between `Moments` and `Normalize`): the fields of "
    "`TrainForward` and `RenormStep` it needs; `savemean`, `saveinvvar`, `r`, `d` are its outputs.",
)

RenormBackward = record(
    "RenormBackward", "data grad ingrad scale savemean saveinvvar r d scalegrad biasgrad",
    "Batch Renormalization's backward, r and d constants: `Backward` with the scale ``r * scale``, then the scale "
    "gradient ``r * sum(dz * xhat) + d * sum(dz)``.",
)

RenormCombine = record(
    "RenormCombine", "r d x y out",
    "``out = r * x + d * y`` per map (``r * x`` when `y` is None); `out` may be `x` or `y`.",
)


class PlanOptions(NamedTuple):
    """What a batch-normalization plan is made for besides the data: `epsilon` (> 0), the fused `activation` (a
    `FusedActivation`, or None) and whether a `residual` is added."""

    epsilon: float
    activation: object = None
    residual: bool = False


class GPUArrayModule(Protocol):
    """A backend's arrays (SPEC section 2): ``GPUArray`` (a subclass of `PuzzleLib.Backend.gpuarray.GPUArray`) and
    ``memoryPool`` (a `MemoryPool` over the backend's raw allocator), plus the three constructors.

    ``Backup(arrays)`` copies the contents of `arrays` (of this backend) so that ``restore()`` can put them back, in
    the cheapest way the backend has (`Modules.Transaction.Snapshot` takes one before a call that writes them).

    ``HostMirror(ary)`` is a host copy of `ary` that follows it without waiting for the device (a copy of its contents
    at creation): ``refresh()`` queues a copy of its present contents, after the work queued before; ``latest()``
    returns the mirror's ndarray, which such copies and the kernels that write ``target`` update as they land (read it
    at once, or copy it); neither blocks. ``target`` is an array of `ary`'s shape and dtype that a kernel writing `ary`
    may write the same values to, so that they reach the mirror with no copy (CUDA: the mirror's page-locked memory,
    mapped into the device); None where the mirror is `ary` itself (the CPU backend).
    """

    GPUArray: type
    memoryPool: object
    Backup: type
    HostMirror: type

    def empty(self, shape, dtype):
        """An uninitialized C-contiguous array of `shape` and `dtype` from the backend's pool."""

    def zeros(self, shape, dtype):
        """An array of zeros of `shape` and `dtype` from the backend's pool."""

    def emptyLike(self, ary):
        """An uninitialized array of the shape and dtype of `ary` (an array of this backend) from the backend's pool:
        `empty` without the checks, which an existing array's shape and dtype have passed."""

    def to_gpu(self, ary):
        """A new C-contiguous array holding a copy of the host array `ary` (any layout), same shape and dtype."""

    def hostBuffer(self, shape, dtype):
        """A host ndarray for ``GPUArray.get(out=...)`` (page-locked where the backend's memory is a device's)."""


class BatchNormBackend(Protocol):
    """A backend's batch normalization: the data dtypes it computes in, and the plan of a call (`BatchNormPlan`, whose
    methods are the primitives) for a layout with an ``(outer, maps, inner)`` view and data that is not empty."""

    dataTypes: tuple

    def plan(self, backend, layout, dtype, options):
        """The `BatchNormPlan` on `backend` (the `Backend` this module belongs to) of data of `layout` (a
        `BatchNormLayout`) and `dtype` for `options` (a `PlanOptions`), on the implementation that serves it (chosen
        here, once per plan)."""


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


@dataclass(frozen=True, eq=False)
class Backend:
    """One implementation of the contract: what ``array.backend`` returns and what the front modules call.

    Attributes:
        name (str): ``"cpu"`` or ``"cuda"``, as `PuzzleLib.Config.backend` spells it.
        gpuarray, batchNorm, blas, elementWise, permute (module): the backend's modules following
            `GPUArrayModule`, `BatchNormBackend`, `BlasPrimitives`, `ElementWisePrimitives` and `PermutePrimitives`.
    """

    name: str
    gpuarray: ModuleType
    batchNorm: ModuleType
    blas: ModuleType
    elementWise: ModuleType
    permute: ModuleType

    def __repr__(self):
        return "Backend(%r)" % self.name
