"""Batch normalization fused with an activation and a residual, and InPlace-ABN (Rota Bulo et al. 2018, arXiv
1712.02616): `Dnn.batchNormNd` / `batchNormNdBackward` with ``activation``, ``residual`` and ``data=None``, the modules'
``activation``, ``slope``, ``residual`` and in-place training, and `Sequential`'s refusal of an in-place module after
one that reads its memory; on every backend, against a float64 numpy reference written here and float64 finite
differences."""

import numpy as np
import pytest

from PuzzleLib.Backend import Dnn, gpuarray
from PuzzleLib.Containers.Sequential import Sequential
from PuzzleLib.Modules import BatchNorm, BatchNorm2D
from PuzzleLib.Modules.Activation import Activation
from PuzzleLib.Modules.Linear import Linear
from PuzzleLib.Modules.Module import ModuleError
from PuzzleLib.TestLib import Reference
from PuzzleLib.TestLib.GradientCheck import numericGradient, relativeError
from PuzzleLib.TestLib.Reference import activation as act

EPS = 1e-5
ACTIVATIONS = [("identity", None), ("relu", None), ("leakyRelu", 0.1), ("elu", 0.7), ("sigmoid", None), ("tanh", None)]
INVERTIBLE = [("identity", None), ("leakyRelu", 0.1), ("elu", 0.7)]
# NOTE: mode, data shape, normalized axes
CASES = {
    "spatial": ("spatial", (4, 3, 5, 6), (0, 2, 3)),
    "perActivation": ("perActivation", (16, 3), (0,)),
    "channelsLast": ((0, 1, 2), (3, 4, 5, 3), (0, 1, 2)),
}
# NOTE: the float32 checks also take the shapes of CUDA's resident passes: a block per map (136 maps, more than the
# stand-in driver's 132 multiprocessors; whole slices of 8 and of 4 vectors a thread), maps split over 32 blocks to
# fill the multiprocessors (4 maps), and over 2 where a block does not hold a map (4800 vectors); over rows, a column
# of 96 channels split over 72 blocks (the last with 8 of its 16 rows), and 280 channels in 3 columns of 24 lanes (2
# of the last idle)
FLOAT32_CASES = dict(CASES, resident=("spatial", (8, 136, 30, 40), (0, 2, 3)),
                     residentUnaligned=("spatial", (32, 136, 7, 7), (0, 2, 3)),
                     residentSplit=("spatial", (64, 4, 32, 32), (0, 2, 3)),
                     residentSplitHeld=("spatial", (16, 136, 30, 40), (0, 2, 3)),
                     residentRows=((0, 1, 2), (8, 11, 13, 96), (0, 1, 2)),
                     residentRowsColumns=("perActivation", (600, 280), (0,)))


def fusedReference(x, scale, bias, residual, axes, kind, slope):
    """act(bn(x) + residual) in float64, bn the training forward of `Reference.batchNormTrain` (biased sigma2, Ioffe &
    Szegedy 2015)."""
    return act(Reference.batchNormTrain(x, scale, bias, axes, EPS).out + residual, kind, slope)


def outputGradient(grad, y, kind, slope):
    """dz = grad * act'(y), the derivative taken from the activation's output y (as the fused backward takes it)."""
    if kind in ("leakyRelu", "elu"):
        return grad * np.where(y > 0, 1.0, slope if kind == "leakyRelu" else y + slope)
    return grad * {"relu": (y > 0), "sigmoid": y * (1 - y), "tanh": 1 - y * y}.get(kind, 1.0)


def perMap(values, shape, axes, dtype):
    """`values` repeated over the maps of `shape`, in the keepdims shape."""
    keep = tuple(1 if axis in axes else dim for axis, dim in enumerate(shape))
    return np.resize(np.asarray(values, dtype=np.float64), int(np.prod(keep))).reshape(keep).astype(dtype)


def float64Only():
    if np.dtype(np.float64) not in Dnn.dataTypes():
        pytest.skip("this backend does not compute in float64")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind, slope", ACTIVATIONS, ids=[a for a, _ in ACTIVATIONS])
def test_fused_forward_and_backward_match_float64_finite_differences(case, kind, slope):
    float64Only()
    mode, shape, axes = CASES[case]
    x = np.random.normal(1.0, 2.0, shape)
    residual = np.random.randn(*shape)
    scale, bias = perMap([1.5, -0.7, 0.9], shape, axes, np.float64), perMap([0.3, -0.2, 0.5], shape, axes, np.float64)
    grad = np.random.randn(*shape)
    arrays = [gpuarray.to_gpu(a) for a in (x, scale, bias)]

    out, savemean, saveinvvar = Dnn.batchNormNd(
        *arrays, None, None, EPS, mode=mode, activation=kind, slope=slope, residual=gpuarray.to_gpu(residual)
    )
    np.testing.assert_allclose(out.get(), fusedReference(x, scale, bias, residual, axes, kind, slope), atol=1e-12)

    resgrad = gpuarray.empty(shape, np.float64)
    ingrad, scalegrad, biasgrad = Dnn.batchNormNdBackward(
        arrays[0], gpuarray.to_gpu(grad), arrays[1], savemean, saveinvvar, EPS, mode, activation=kind, slope=slope,
        outdata=out, resgrad=resgrad,
    )
    forward = {
        "x": lambda v: fusedReference(v, scale, bias, residual, axes, kind, slope),
        "residual": lambda v: fusedReference(x, scale, bias, v, axes, kind, slope),
        "scale": lambda v: fusedReference(x, v, bias, residual, axes, kind, slope),
        "bias": lambda v: fusedReference(x, scale, v, residual, axes, kind, slope),
    }
    points = {"x": x, "residual": residual, "scale": scale, "bias": bias}
    results = {"x": ingrad, "residual": resgrad, "scale": scalegrad, "bias": biasgrad}
    for name, func in forward.items():
        numeric = numericGradient(func, points[name], grad)
        assert relativeError(results[name].get().reshape(numeric.shape), numeric) < 1e-7, name


@pytest.mark.parametrize("case", sorted(FLOAT32_CASES))
@pytest.mark.parametrize("kind, slope", ACTIVATIONS, ids=[a for a, _ in ACTIVATIONS])
def test_fused_float32_matches_the_float64_reference_in_both_modes(case, kind, slope):
    mode, shape, axes = FLOAT32_CASES[case]
    x = np.random.normal(1.0, 2.0, shape).astype(np.float32)
    residual = np.random.randn(*shape).astype(np.float32)
    scale, bias = perMap([1.5, -0.7, 0.9], shape, axes, np.float32), perMap([0.3, -0.2, 0.5], shape, axes, np.float32)
    mean, var = perMap([0.5, 1.0, 1.5], shape, axes, np.float32), perMap([4.0, 3.0, 5.0], shape, axes, np.float32)
    arrays = [gpuarray.to_gpu(a) for a in (x, scale, bias, mean, var)]

    out, _, _ = Dnn.batchNormNd(
        *arrays, EPS, 0.5, mode=mode, activation=kind, slope=slope, residual=gpuarray.to_gpu(residual)
    )
    ref = fusedReference(x, scale, bias, residual, axes, kind, slope)
    np.testing.assert_allclose(out.get(), ref, atol=3e-5, rtol=1e-5)

    # NOTE: the training forward moved the running statistics; evaluation normalizes with the moved ones
    mean, var = arrays[3].get(), arrays[4].get()
    evalOut = Dnn.batchNormNd(*arrays, EPS, test=True, mode=mode, activation=kind, slope=slope)
    z = Reference.batchNormEval(x, scale, bias, mean, var, EPS, axes)
    np.testing.assert_allclose(evalOut.get(), act(z, kind, slope), atol=3e-5, rtol=1e-5)

    # the frozen backward: dz = grad * act'(y), then batch norm's with constant statistics
    grad = np.random.randn(*shape).astype(np.float32)
    y = act(z, kind, slope)
    dz = outputGradient(grad, y, kind, slope)
    resgrad = gpuarray.empty(shape, np.float32)
    ingrad, scalegrad, biasgrad = Dnn.batchNormNdBackward(
        arrays[0], gpuarray.to_gpu(grad), arrays[1], None, None, EPS, mode, test=True, mean=arrays[3], var=arrays[4],
        activation=kind, slope=slope, outdata=evalOut, resgrad=resgrad,
    )
    refIngrad, refScalegrad, refBiasgrad = Reference.frozenBackward(x, dz, scale, mean, var, EPS, axes)
    np.testing.assert_allclose(resgrad.get(), dz, atol=3e-5)
    np.testing.assert_allclose(ingrad.get(), refIngrad, atol=3e-5)
    np.testing.assert_allclose(biasgrad.get(), refBiasgrad, atol=2e-4)
    np.testing.assert_allclose(scalegrad.get(), refScalegrad, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("case", sorted(FLOAT32_CASES))
@pytest.mark.parametrize("kind, slope", ACTIVATIONS + [("inplaceLeakyRelu", 0.1)],
                         ids=[a for a, _ in ACTIVATIONS] + ["inplaceLeakyRelu"])
def test_fused_float32_training_backward_matches_the_float64_reference(case, kind, slope):
    """The training backward after a fused training forward with a residual, in float32: dz = grad * act'(y) (written
    to resgrad), then batch norm's backward (`Reference.batchNormBackward`); in place (InPlace-ABN: x rebuilt from y,
    ingrad over grad) for the invertible leaky ReLU."""
    mode, shape, axes = FLOAT32_CASES[case]
    inplace = kind == "inplaceLeakyRelu"
    kind = "leakyRelu" if inplace else kind
    x = np.random.normal(1.0, 2.0, shape).astype(np.float32)
    residual = None if inplace else np.random.randn(*shape).astype(np.float32)
    grad = np.random.randn(*shape).astype(np.float32)
    scale, bias = perMap([1.5, -0.7, 0.9], shape, axes, np.float32), perMap([0.3, -0.2, 0.5], shape, axes, np.float32)
    data, scaleArray, biasArray, dy = (gpuarray.to_gpu(a) for a in (x, scale, bias, grad))

    out, savemean, saveinvvar = Dnn.batchNormNd(
        data, scaleArray, biasArray, None, None, EPS, mode=mode, activation=kind, slope=slope,
        residual=None if inplace else gpuarray.to_gpu(residual), out=data if inplace else None,
    )
    resgrad = None if inplace else gpuarray.empty(shape, np.float32)
    ingrad, scalegrad, biasgrad = Dnn.batchNormNdBackward(
        None if inplace else data, dy, scaleArray, savemean, saveinvvar, EPS, mode, activation=kind, slope=slope,
        outdata=out, resgrad=resgrad, bias=biasArray if inplace else None, ingrad=dy if inplace else None,
    )
    y = fusedReference(x, scale, bias, 0.0 if inplace else residual, axes, kind, slope)
    dz = outputGradient(grad, y, kind, slope)
    refIngrad, refScalegrad, refBiasgrad = Reference.batchNormBackward(x, dz, scale, axes, EPS)
    if not inplace:
        np.testing.assert_allclose(resgrad.get(), dz, atol=3e-5)
    np.testing.assert_allclose(ingrad.get(), refIngrad, atol=1e-4, rtol=1e-4)
    m = x.size // scale.size
    np.testing.assert_allclose(biasgrad.get(), refBiasgrad.reshape(biasgrad.shape), atol=1e-5 * np.sqrt(m), rtol=1e-4)
    np.testing.assert_allclose(scalegrad.get(), refScalegrad.reshape(scalegrad.shape), atol=1e-5 * np.sqrt(m),
                               rtol=1e-4)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("kind, slope", INVERTIBLE, ids=[a for a, _ in INVERTIBLE])
def test_inplace_abn_rebuilds_the_input_and_matches_finite_differences(case, kind, slope):
    float64Only()
    mode, shape, axes = CASES[case]
    x = np.random.normal(1.0, 2.0, shape)
    # NOTE: a negative scale and one below the reconstruction floor's reach are both exact
    scale, bias = perMap([1.5, -0.7, 2e-5], shape, axes, np.float64), perMap([0.3, -0.2, 0.5], shape, axes, np.float64)
    grad = np.random.randn(*shape)
    data, scaleArray, biasArray = (gpuarray.to_gpu(a) for a in (x, scale, bias))

    out, savemean, saveinvvar = Dnn.batchNormNd(
        data, scaleArray, biasArray, None, None, EPS, mode=mode, activation=kind, slope=slope, out=data
    )
    assert out.ptr == data.ptr
    dy = gpuarray.to_gpu(grad)
    ingrad, scalegrad, biasgrad = Dnn.batchNormNdBackward(
        None, dy, scaleArray, savemean, saveinvvar, EPS, mode, activation=kind, slope=slope, outdata=out,
        bias=biasArray, ingrad=dy,
    )
    assert ingrad.ptr == dy.ptr
    numeric = numericGradient(lambda v: fusedReference(v, scale, bias, 0.0, axes, kind, slope), x, grad)
    assert relativeError(ingrad.get(), numeric) < 1e-7
    numeric = numericGradient(lambda v: fusedReference(x, v, bias, 0.0, axes, kind, slope), scale, grad)
    assert relativeError(scalegrad.get(), numeric) < 1e-7


@pytest.mark.parametrize("kind, slope", INVERTIBLE, ids=[a for a, _ in INVERTIBLE])
@pytest.mark.parametrize("shape", [(8, 5, 4, 6), (32, 5)], ids=["spatial", "perActivation"])
def test_inplace_module_matches_the_module_that_keeps_its_input(kind, slope, shape):
    make = BatchNorm2D if len(shape) == 4 else BatchNorm
    activation = None if kind == "identity" else kind
    keeping = make(shape[1], activation=activation, slope=slope)
    inplace = make(shape[1], activation=activation, slope=slope, inplace=True)
    hostScale = np.random.normal(0.0, 1.0, keeping.scale.shape).astype(np.float32)
    for module in (keeping, inplace):
        module.scale.set(hostScale)
    host = np.random.normal(1.0, 2.0, shape).astype(np.float32)
    hostGrad = np.random.randn(*shape).astype(np.float32)

    expected = keeping(gpuarray.to_gpu(host)).get()
    expectedGrad = keeping.backward(gpuarray.to_gpu(hostGrad)).get()

    data, grad = gpuarray.to_gpu(host), gpuarray.to_gpu(hostGrad)
    out = inplace(data)
    assert out.ptr == data.ptr
    np.testing.assert_allclose(out.get(), expected, atol=1e-6)
    ingrad = inplace.backward(grad)
    assert ingrad.ptr == grad.ptr
    np.testing.assert_allclose(ingrad.get(), expectedGrad, atol=2e-5, rtol=1e-4)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(
            inplace.vars[name].grad.get(), keeping.vars[name].grad.get(), atol=1e-4, rtol=1e-4
        )
    np.testing.assert_allclose(inplace.mean.get(), keeping.mean.get(), rtol=1e-6)
    np.testing.assert_allclose(inplace.var.get(), keeping.var.get(), rtol=1e-6)


def test_module_residual_gradient_and_activation_derivative():
    bn = BatchNorm2D(3, activation="relu")
    host, hostResidual = np.random.randn(4, 3, 5, 5).astype(np.float32), np.random.randn(4, 3, 5, 5).astype(np.float32)
    hostGrad = np.random.randn(4, 3, 5, 5).astype(np.float32)
    out = bn(gpuarray.to_gpu(host), residual=gpuarray.to_gpu(hostResidual))
    ref = fusedReference(host, bn.scale.get(), bn.bias.get(), hostResidual, (0, 2, 3), "relu", None)
    np.testing.assert_allclose(out.get(), ref, atol=2e-5)
    bn.backward(gpuarray.to_gpu(hostGrad))
    np.testing.assert_allclose(bn.residualGrad.get(), hostGrad * (ref > 0), atol=1e-6)

    # without an activation the residual's gradient is the output's
    plain = BatchNorm2D(3)
    plain(gpuarray.to_gpu(host), residual=gpuarray.to_gpu(hostResidual))
    grad = gpuarray.to_gpu(hostGrad)
    plain.backward(grad)
    assert plain.residualGrad is grad


def test_refusals_name_what_was_expected_and_change_nothing():
    with pytest.raises(ValueError, match="activation must be one of .*got 'swish'"):
        BatchNorm2D(3, activation="swish")
    with pytest.raises(ValueError, match="slope applies to leakyRelu and elu only"):
        BatchNorm2D(3, activation="relu", slope=0.2)
    with pytest.raises(ValueError, match="does not combine with renorm"):
        BatchNorm2D(3, activation="relu", renorm=True)

    host = np.random.randn(4, 3, 2, 2).astype(np.float32)
    for module, residual in (
        (BatchNorm2D(3, inplace=True, activation="leakyRelu", slope=0.0), None),
        (BatchNorm2D(3, inplace=True), gpuarray.to_gpu(host)),
        (BatchNorm2D(3, activation="elu"), gpuarray.to_gpu(np.zeros((4, 3, 2, 3), np.float32))),
    ):
        data = gpuarray.to_gpu(host)
        before = module.mean.get(), module.numOfProps
        with pytest.raises(ModuleError):
            module(data, residual=residual)
        assert np.array_equal(data.get(), host) and np.array_equal(module.mean.get(), before[0])
        assert module.numOfProps == before[1] and module.data is None

    data = gpuarray.to_gpu(host)
    with pytest.raises(ValueError, match="only with an invertible activation"):
        Dnn.batchNormNd(data, *(gpuarray.to_gpu(np.ones((1, 3, 1, 1), np.float32)) for _ in range(2)), None, None,
                        out=data, activation="relu")
    assert np.array_equal(data.get(), host)


def test_sequential_refuses_an_inplace_module_after_one_that_reads_its_memory():
    net = Sequential()
    net.append(BatchNorm2D(3, activation="relu"))
    with pytest.raises(ModuleError, match="writes its output over its input, which BatchNorm2D reads"):
        net.append(BatchNorm2D(3, inplace=True, activation="leakyRelu"))
    assert len(net) == 1

    chain = Sequential()
    chain.append(Activation("relu"))
    with pytest.raises(ModuleError, match="Activation reads in its backward"):
        chain.append(Activation("sigmoid", inplace=True))

    # a Linear reads its input, not its output: InPlace-ABN may follow it
    fine = Sequential()
    fine.append(Linear(4, 3))
    fine.append(BatchNorm(3, inplace=True, activation="leakyRelu"))
    fine.append(Linear(3, 2))
    assert len(fine) == 3


def test_inplace_abn_stack_saves_one_array_per_layer_and_trains_the_same():
    """A stack of Linear (a 1x1 convolution of channels-last data) + BatchNorm with leaky ReLU: InPlace-ABN keeps one
    array per layer where the fused module keeps two; the pool's peak shows it, and the gradients agree."""
    rows, features, layers = 2048, 16, 6

    def build(inplace):
        np.random.seed(3)
        net = Sequential()
        for _ in range(layers):
            net.append(Linear(features, features))
            net.append(BatchNorm(features, activation="leakyRelu", inplace=inplace))
        return net

    host = np.random.randn(rows, features).astype(np.float32)
    hostGrad = np.random.randn(rows, features).astype(np.float32)
    peaks, grads = {}, {}
    for inplace in (False, True):
        net = build(inplace)
        for _ in range(2):
            net(gpuarray.to_gpu(host))
            net.backward(gpuarray.to_gpu(hostGrad))
        net.reset()
        gpuarray.memoryPool.resetStats()
        start = gpuarray.memoryPool.stats()["activeBytes"]
        net(gpuarray.to_gpu(host))
        grads[inplace] = net.backward(gpuarray.to_gpu(hostGrad)).get()
        peaks[inplace] = gpuarray.memoryPool.stats()["peakActiveBytes"] - start
        net.reset()

    array = rows * features * 4
    assert peaks[False] - peaks[True] >= (layers - 1) * array, peaks
    np.testing.assert_allclose(grads[True], grads[False], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("inplace", [False, True], ids=["keepsInput", "inplaceAbn"])
def test_fused_vectors_across_maps_match_the_float64_reference(inplace):
    """Per-activation data of 16 maps (vectors of several maps per access on the CUDA rows kernels, one map per
    element), a leaky ReLU and (without `inplace`) a residual: the training forward, and the backward that takes dz =
    dy * act'(y) (from the output alone with `inplace`), against the float64 reference."""
    shape, axes, slope = (96, 16), (0,), 0.1
    rng = np.random.default_rng(11)
    x = rng.normal(1.0, 2.0, shape).astype(np.float32)
    residual = rng.standard_normal(shape).astype(np.float32) if not inplace else None
    scale = rng.uniform(0.5, 1.5, (1, 16)).astype(np.float32)
    bias = rng.normal(0.0, 0.3, (1, 16)).astype(np.float32)
    grad = rng.standard_normal(shape).astype(np.float32)
    data = gpuarray.to_gpu(x)

    out, savemean, saveinvvar = Dnn.batchNormNd(
        data, gpuarray.to_gpu(scale), gpuarray.to_gpu(bias), None, None, EPS, mode="perActivation",
        activation="leakyRelu", slope=slope, residual=None if inplace else gpuarray.to_gpu(residual),
        out=data if inplace else None,
    )
    z = Reference.batchNormTrain(x, scale, bias, axes, EPS).out + (0.0 if inplace else residual)
    y = act(z, "leakyRelu", slope)
    np.testing.assert_allclose(out.get(), y, atol=3e-5, rtol=1e-5)

    resgrad = None if inplace else gpuarray.empty(shape, np.float32)
    ingrad, scalegrad, biasgrad = Dnn.batchNormNdBackward(
        None if inplace else gpuarray.to_gpu(x), gpuarray.to_gpu(grad), gpuarray.to_gpu(scale), savemean, saveinvvar,
        EPS, "perActivation", activation="leakyRelu", slope=slope, outdata=out, resgrad=resgrad,
        bias=gpuarray.to_gpu(bias) if inplace else None,
    )
    dz = grad.astype(np.float64) * np.where(y > 0, 1.0, slope)
    refIngrad, refScalegrad, refBiasgrad = Reference.batchNormBackward(x, dz, scale, axes, EPS)
    if not inplace:
        np.testing.assert_allclose(resgrad.get(), dz, atol=1e-5)
    np.testing.assert_allclose(ingrad.get(), refIngrad, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(biasgrad.get().ravel(), np.ravel(refBiasgrad), atol=2e-4)
    np.testing.assert_allclose(scalegrad.get().ravel(), np.ravel(refScalegrad), atol=2e-4, rtol=1e-4)
