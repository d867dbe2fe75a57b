"""SPEC section 4 on every backend: numbers against the float64 reference, the factor rule, evaluation and in-place
evaluation, backward in both modes, accumulation, empty modules, persistence and every error path."""

import gc

import h5py
import numpy as np
import pytest

from PuzzleLib.Backend import Dnn, gpuarray
from PuzzleLib.Backend.BatchNormLayout import BatchNormLayout, modeAxes
from PuzzleLib.Modules import BatchNorm, BatchNorm1D, BatchNorm2D, BatchNorm3D, BatchNormND, ModuleError
from PuzzleLib.TestLib import Backends, Reference
from PuzzleLib.TestLib.GradientCheck import moduleInputGradientError, numericGradient, relativeError

EPS = 1e-5


def makeModule(kind, maps, **kwargs):
    if kind == "perActivation":
        return BatchNorm(maps, **kwargs)
    nd = int(kind[-2])
    return {1: BatchNorm1D, 2: BatchNorm2D, 3: BatchNorm3D}.get(nd, lambda m, **kw: BatchNormND(nd, m, **kw))(
        maps, **kwargs
    )


def normalizedAxes(module, ndim):
    return (0,) if isinstance(module, BatchNorm) else Reference.spatialAxes(ndim)


def moduleState(bn):
    return {name: getattr(bn, name).get() for name in ("scale", "bias", "mean", "var")}, bn.numOfProps


def assertSameState(bn, state):
    arrays, numOfProps = state
    assert bn.numOfProps == numOfProps
    for name, value in arrays.items():
        assert np.array_equal(getattr(bn, name).get(), value), name


CASES = {
    "per_activation": ("perActivation", (16, 10)),
    "batch_of_two": ("perActivation", (2, 5)),
    "spatial_1d": ("spatial1D", (4, 3, 7)),
    "spatial_2d": ("spatial2D", (5, 4, 6, 3)),
    "spatial_3d": ("spatial3D", (2, 3, 4, 3, 5)),
    "spatial_4d": ("spatial4D", (2, 2, 3, 2, 2, 3)),
    "wide_maps": ("spatial2D", (3, 64, 2, 2)),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "not_affine"])
def test_training_forward_matches_reference(case, affine):
    kind, shape = CASES[case]
    bn = makeModule(kind, shape[1], affine=affine)
    host = np.random.normal(1.5, 2.0, size=shape).astype(np.float32)
    axes = normalizedAxes(bn, host.ndim)

    if not affine:
        assert np.array_equal(bn.scale.get(), np.ones(bn.scale.shape, np.float32)) and bn.vars == {}

    out = bn(gpuarray.to_gpu(host))
    ref = Reference.batchNormTrain(host, bn.scale.get(), bn.bias.get(), axes, EPS)

    assert out.shape == shape and out.dtype == np.float32
    np.testing.assert_allclose(out.get(), ref.out, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(bn.savemean.get().ravel(), ref.mean.ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.saveinvvar.get().ravel(), ref.invstd.ravel(), rtol=1e-5)
    # NOTE: the first batch replaces the initial statistics (factor = initFactor / 1 = 1)
    np.testing.assert_allclose(bn.mean.get().ravel(), ref.mean.ravel(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bn.var.get().ravel(), ref.unbiasedVar.ravel(), rtol=1e-5)
    assert bn.numOfProps == 1


def test_attribute_shapes_and_initial_values():
    np.random.seed(0)
    bn = BatchNorm(300)
    assert bn.scale.shape == bn.bias.shape == bn.mean.shape == bn.var.shape == (1, 300, 1, 1)
    assert all(getattr(bn, name).dtype == np.float32 for name in ("scale", "bias", "mean", "var"))
    scale = bn.scale.get().astype(np.float64)
    assert abs(scale.mean() - 1.0) < 0.003 and 0.008 < scale.std() < 0.012
    assert not np.any(bn.bias.get()) and not np.any(bn.mean.get())
    assert np.array_equal(bn.var.get(), np.ones((1, 300, 1, 1), np.float32))
    assert set(bn.vars) == {"scale", "bias"} and set(bn.attrs) == {"mean", "var"}
    assert BatchNormND(4, 3).mean.shape == (1, 3, 1, 1, 1, 1) and BatchNorm1D(5).var.shape == (1, 5, 1)

    bn = BatchNorm2D(7, epsilon=1e-3, initFactor=0.5, minFactor=0.2, sscale=0.0, affine=True, name="b", inplace=True)
    attrs = (bn.maps, bn.nd, bn.epsilon, bn.initFactor, bn.minFactor, bn.affine, bn.name, bn.inplace, bn.numOfProps)
    assert attrs == (7, 2, 1e-3, 0.5, 0.2, True, "b", True, 0)
    assert BatchNorm(4).size == 4


def test_large_mean_channel_keeps_its_variance():
    np.random.seed(5)
    host = np.random.normal(0.0, 1.0, size=(64, 3, 16, 16)).astype(np.float32)
    host[:, 1] += 1e4
    bn = BatchNorm2D(3)
    out = bn(gpuarray.to_gpu(host)).get()

    ref = Reference.batchNormTrain(host, bn.scale.get(), bn.bias.get(), (0, 2, 3), EPS)
    relative = np.abs(bn.var.get().ravel() - ref.unbiasedVar.ravel()) / ref.unbiasedVar.ravel()
    assert relative.max() < 1e-3
    # NOTE: relative to the mean, plus 1e-7 of the maps' unit spread: float32 sums of 16384 values of unit spread are
    # off by about 1e-8, so the two maps whose means are near 0 may miss a pure relative 1e-6
    np.testing.assert_allclose(bn.mean.get().ravel(), ref.mean.ravel(), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out, ref.out, atol=2e-3)


@pytest.mark.parametrize("shape", [(20000, 4), (65536, 2), (300000, 3), (512, 4096)])
def test_large_mean_per_activation_over_many_rows(shape):
    np.random.seed(6)
    host = np.random.normal(1e4, 1.0, size=shape).astype(np.float32)
    bn = BatchNorm(shape[1])
    out = bn(gpuarray.to_gpu(host)).get()
    params = [getattr(bn, name).get().reshape(1, shape[1]) for name in ("scale", "bias")]
    ref = Reference.batchNormTrain(host, *params, (0,), EPS)
    assert np.max(np.abs(bn.var.get().ravel() - ref.unbiasedVar.ravel()) / ref.unbiasedVar.ravel()) < 1e-3
    np.testing.assert_allclose(bn.mean.get().ravel(), ref.mean.ravel(), rtol=1e-6)
    np.testing.assert_allclose(out, ref.out, atol=2e-3)


def referenceSchedule(batches, initFactor, minFactor, axes):
    mean, var = 0.0, 1.0
    for n, batch in enumerate(batches, start=1):
        x = batch.astype(np.float64)
        factor = max(initFactor / n, minFactor)
        m = x.size // x.shape[1]
        mean = (1 - factor) * mean + factor * x.mean(axis=axes)
        var = (1 - factor) * var + factor * x.var(axis=axes) * m / (m - 1)
        yield mean, var


@pytest.mark.parametrize("initFactor, minFactor", [(1.0, 0.1), (0.5, 0.2), (1.0, 0.0), (0.3, 0.3)])
def test_factor_rule_over_many_batches(initFactor, minFactor):
    np.random.seed(7)
    batches = [np.random.normal(n * 0.3, 1.0 + 0.1 * n, size=(6, 3, 4, 4)).astype(np.float32) for n in range(14)]
    bn = BatchNorm2D(3, initFactor=initFactor, minFactor=minFactor)

    for batch, (mean, var) in zip(batches, referenceSchedule(batches, initFactor, minFactor, (0, 2, 3)), strict=True):
        bn(gpuarray.to_gpu(batch))
        np.testing.assert_allclose(bn.mean.get().ravel(), mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bn.var.get().ravel(), var, rtol=1e-5)
    assert bn.numOfProps == len(batches)


def test_evaluation_uses_running_statistics_and_changes_nothing():
    np.random.seed(8)
    bn = BatchNorm2D(4)
    for _ in range(3):
        bn(gpuarray.to_gpu(np.random.normal(2.0, 3.0, size=(8, 4, 5, 5)).astype(np.float32)))

    bn.evalMode()
    state = moduleState(bn)
    host = np.random.normal(0.0, 1.0, size=(3, 4, 5, 5)).astype(np.float32)
    data = gpuarray.to_gpu(host)
    out = bn(data)

    arrays = state[0]
    expected = Reference.batchNormEval(host, arrays["scale"], arrays["bias"], arrays["mean"], arrays["var"], EPS)
    np.testing.assert_allclose(out.get(), expected, atol=2e-5, rtol=1e-5)
    assert out.ptr != data.ptr and np.array_equal(data.get(), host)
    assertSameState(bn, state)
    assert bn.savemean is None


def test_batch_of_one_is_fine_in_evaluation():
    bn = BatchNorm(3)
    bn.evalMode()
    host = np.array([[1.0, 2.0, 3.0]], np.float32)
    out = bn(gpuarray.to_gpu(host))
    expected = Reference.batchNormEval(host, bn.scale.get(), bn.bias.get(), np.zeros(3), np.ones(3), EPS, (0,))
    np.testing.assert_allclose(out.get(), expected, rtol=1e-6)


@pytest.mark.parametrize("kind, shape", [("perActivation", (32, 16)), ("spatial2D", (4, 8, 6, 6))])
def test_inplace_evaluation_writes_over_the_input_and_takes_no_block(kind, shape):
    bn = makeModule(kind, shape[1], inplace=True)
    bn.evalMode()
    host = np.random.normal(3.0, 2.0, size=shape).astype(np.float32)
    data = gpuarray.to_gpu(host)
    scale, bias, mean, var = (getattr(bn, name).get() for name in ("scale", "bias", "mean", "var"))
    expected = Reference.batchNormEval(host, scale, bias, mean, var, EPS, normalizedAxes(bn, host.ndim))

    gc.collect()
    before = gpuarray.memoryPool.stats()
    out = bn(data)
    after = gpuarray.memoryPool.stats()

    assert out.ptr == data.ptr
    assert after["allocations"] == before["allocations"] and after["activeBytes"] == before["activeBytes"]
    np.testing.assert_allclose(data.get(), expected, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
def test_inplace_training_with_an_activation_that_cannot_be_inverted_is_an_error_that_changes_nothing(activation):
    bn = BatchNorm2D(3, inplace=True, activation=activation)
    host = np.random.randn(4, 3, 2, 2).astype(np.float32)
    data = gpuarray.to_gpu(host)
    state = moduleState(bn)
    with pytest.raises(ModuleError, match="in-place training.*inverts exactly.*got activation='%s'" % activation):
        bn(data)
    assertSameState(bn, state)
    assert np.array_equal(data.get(), host) and bn.data is None


@pytest.mark.parametrize("case", ["per_activation", "spatial_1d", "spatial_2d", "spatial_3d"])
def test_training_backward_matches_reference(case):
    kind, shape = CASES[case]
    bn = makeModule(kind, shape[1])
    host = np.random.normal(-1.0, 2.0, size=shape).astype(np.float32)
    grad = np.random.randn(*shape).astype(np.float32)
    axes = normalizedAxes(bn, host.ndim)

    bn(gpuarray.to_gpu(host))
    returned = bn.backward(gpuarray.to_gpu(grad))
    dx, dscale, dbias = Reference.batchNormBackward(host, grad, bn.scale.get(), axes, EPS)

    assert returned is bn.grad and bn.grad.shape == shape
    np.testing.assert_allclose(bn.grad.get(), dx, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(bn.vars["bias"].grad.get().ravel(), dbias.ravel(), atol=1e-4, rtol=1e-5)


def test_evaluation_backward_treats_statistics_as_constants():
    bn = BatchNorm2D(3)
    bn(gpuarray.to_gpu(np.random.normal(1.0, 2.0, size=(6, 3, 4, 4)).astype(np.float32)))
    bn.evalMode()
    host = np.random.randn(2, 3, 4, 4).astype(np.float32)
    grad = np.random.randn(2, 3, 4, 4).astype(np.float32)
    bn(gpuarray.to_gpu(host))
    bn.backward(gpuarray.to_gpu(grad))

    dx, dscale, dbias = Reference.frozenBackward(host, grad, bn.scale.get(), bn.mean.get(), bn.var.get(), EPS)
    np.testing.assert_allclose(bn.grad.get(), dx, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(bn.vars["bias"].grad.get().ravel(), dbias.ravel(), atol=1e-4, rtol=1e-5)


def test_parameter_gradients_accumulate_with_scale_and_momentum():
    bn = BatchNorm1D(3)
    hosts = [np.random.randn(4, 3, 5).astype(np.float32) for _ in range(2)]
    grads = [np.random.randn(4, 3, 5).astype(np.float32) for _ in range(2)]

    expected = []
    for host, grad in zip(hosts, grads, strict=True):
        _, dscale, dbias = Reference.batchNormBackward(host, grad, bn.scale.get(), (0, 2), EPS)
        expected.append((dscale.ravel(), dbias.ravel()))

    bn(gpuarray.to_gpu(hosts[0]))
    bn.backward(gpuarray.to_gpu(grads[0]))
    bn(gpuarray.to_gpu(hosts[1]))
    bn.backward(gpuarray.to_gpu(grads[1]), scale=0.5, momentum=2.0)

    np.testing.assert_allclose(
        bn.vars["scale"].grad.get().ravel(), 0.5 * expected[1][0] + 2.0 * expected[0][0], atol=2e-4
    )
    np.testing.assert_allclose(
        bn.vars["bias"].grad.get().ravel(), 0.5 * expected[1][1] + 2.0 * expected[0][1], atol=2e-4
    )

    bn.zeroGradParams()
    assert not np.any(bn.vars["scale"].grad.get()) and not np.any(bn.vars["bias"].grad.get())


def test_default_backward_writes_parameter_gradients_in_place_without_arrays_of_their_own():
    """With scale 1 and momentum 0 a parameter gradient is the new sum itself: it goes straight into var.grad (old
    contents, NaN here, are overwritten, not read), so the call takes two pool blocks fewer than one that
    accumulates."""
    bn = BatchNorm2D(3)
    host = np.random.normal(1.0, 2.0, size=(4, 3, 5, 2)).astype(np.float32)
    grad = np.random.randn(4, 3, 5, 2).astype(np.float32)
    data, dy = gpuarray.to_gpu(host), gpuarray.to_gpu(grad)
    _, dscale, dbias = Reference.batchNormBackward(host, grad, bn.scale.get(), (0, 2, 3), EPS)

    def allocations(**kwargs):
        bn(data)
        gc.collect()
        before = gpuarray.memoryPool.stats()["allocations"]
        bn.backward(dy, **kwargs)
        return gpuarray.memoryPool.stats()["allocations"] - before

    gradArrays = [bn.vars[name].grad for name in ("scale", "bias")]
    accumulating = allocations(scale=1.0, momentum=0.5)
    for ary in gradArrays:
        ary.fill(np.nan)
    overwriting = allocations()

    assert accumulating - overwriting == 2
    assert [bn.vars[name].grad for name in ("scale", "bias")] == gradArrays
    np.testing.assert_allclose(gradArrays[0].get(), dscale, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(gradArrays[1].get(), dbias, atol=1e-4, rtol=1e-5)


def backwardCase(shape=(5, 3, 4, 2)):
    """Data, gradient, scale, batch statistics and running statistics for `Dnn.batchNormNdBackward` (spatial), as
    GPUArrays, with the host data and gradient."""
    host = np.random.normal(2.0, 3.0, size=shape).astype(np.float32)
    grad = np.random.randn(*shape).astype(np.float32)
    axes = Reference.spatialAxes(len(shape))
    exact = host.astype(np.float64)
    mean, var = exact.mean(axis=axes, keepdims=True), exact.var(axis=axes, keepdims=True)
    perMap = {
        "scale": np.random.normal(1.0, 0.5, size=mean.shape), "savemean": mean,
        "saveinvvar": 1 / np.sqrt(var + EPS), "mean": mean + 0.25, "var": var * 1.5,
    }
    arrays = {name: gpuarray.to_gpu(value.astype(np.float32)) for name, value in perMap.items()}
    return host, grad, gpuarray.to_gpu(host), gpuarray.to_gpu(grad), arrays


@pytest.mark.parametrize("test", [False, True], ids=["after_training", "after_evaluation"])
def test_dnn_backward_writes_parameter_gradients_into_the_given_arrays(test):
    host, grad, data, dy, arrays = backwardCase()
    # NOTE: both per-map shapes: the keepdims one and the one without the normalized axes; NaN is overwritten
    scalegrad = gpuarray.to_gpu(np.full((1, 3, 1, 1), np.nan, np.float32))
    biasgrad = gpuarray.to_gpu(np.full((3,), np.nan, np.float32))

    ingrad, gotScale, gotBias = Dnn.batchNormNdBackward(
        data, dy, arrays["scale"], arrays["savemean"], arrays["saveinvvar"], EPS, "spatial", test=test,
        mean=arrays["mean"], var=arrays["var"], scalegrad=scalegrad, biasgrad=biasgrad,
    )
    scale = arrays["scale"].get()
    if test:
        dx, dscale, dbias = Reference.frozenBackward(host, grad, scale, arrays["mean"].get(), arrays["var"].get(), EPS)
    else:
        dx, dscale, dbias = Reference.batchNormBackward(host, grad, scale, (0, 2, 3), EPS)

    assert gotScale is scalegrad and gotBias is biasgrad
    np.testing.assert_allclose(ingrad.get(), dx, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(scalegrad.get(), dscale, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(biasgrad.get(), dbias.ravel(), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize(
    "case", ["scale", "saveinvvar", "grad", "data", "each_other", "float64", "wrong_shape"]
)
def test_dnn_backward_refuses_parameter_gradient_outputs_it_cannot_write_and_writes_nothing(case):
    # NOTE: data of one element per map and position, so that a row of data or grad is a per-map shaped view
    host, grad, data, dy, arrays = backwardCase((4, 3, 1, 1))
    biasgrad = gpuarray.to_gpu(np.full((1, 3, 1, 1), 7.0, np.float32))
    scalegrad, pattern = {
        "scale": (arrays["scale"], "scalegrad must not share memory with scale"),
        "saveinvvar": (arrays["saveinvvar"], "scalegrad must not share memory with saveinvvar"),
        "grad": (dy[1:2], "scalegrad must not share memory with grad"),
        "data": (data[3:4], "scalegrad must not share memory with data"),
        "each_other": (biasgrad, "biasgrad must not share memory with scalegrad"),
        "float64": (gpuarray.zeros((1, 3, 1, 1), np.float64), "scalegrad must have dtype float32; got float64"),
        "wrong_shape": (gpuarray.zeros((1, 3, 1), np.float32), r"scalegrad must have shape \(1, 3, 1, 1\)"),
    }[case]
    before = {name: ary.get() for name, ary in dict(arrays, data=data, grad=dy, biasgrad=biasgrad).items()}

    with pytest.raises(ValueError, match=pattern):
        Dnn.batchNormNdBackward(
            data, dy, arrays["scale"], arrays["savemean"], arrays["saveinvvar"], EPS, "spatial", scalegrad=scalegrad,
            biasgrad=biasgrad,
        )
    after = {name: ary.get() for name, ary in dict(arrays, data=data, grad=dy, biasgrad=biasgrad).items()}
    for name, value in before.items():
        assert np.array_equal(after[name], value), name


def test_backward_flags_skip_what_is_not_asked_for():
    bn = BatchNorm(4)
    host, grad = np.random.randn(5, 4).astype(np.float32), np.random.randn(5, 4).astype(np.float32)
    bn(gpuarray.to_gpu(host))
    bn.backward(gpuarray.to_gpu(grad), updParamGrads=False)
    assert not np.any(bn.vars["scale"].grad.get()) and bn.grad is not None

    bn.grad = None
    bn.backward(gpuarray.to_gpu(grad), updGrad=False)
    _, dscale, _ = Reference.batchNormBackward(host, grad, bn.scale.get().reshape(1, 4), (0,), EPS)
    assert bn.grad is None
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), atol=1e-5)


def test_not_affine_has_no_trainable_parameters():
    bn = BatchNorm2D(3, affine=False)
    host, grad = np.random.randn(4, 3, 2, 2).astype(np.float32), np.random.randn(4, 3, 2, 2).astype(np.float32)
    bn(gpuarray.to_gpu(host))
    bn.backward(gpuarray.to_gpu(grad))
    bn.updateParams(0.5)
    assert bn.vars == {} and set(bn.attrs) == {"scale", "bias", "mean", "var"}
    assert np.array_equal(bn.scale.get(), np.ones((1, 3, 1, 1), np.float32)) and not np.any(bn.bias.get())
    dx, _, _ = Reference.batchNormBackward(host, grad, np.ones(3), (0, 2, 3), EPS)
    np.testing.assert_allclose(bn.grad.get(), dx, atol=2e-5)


def test_update_params_adds_the_scaled_gradient():
    bn = BatchNorm(3)
    host, grad = np.random.randn(4, 3).astype(np.float32), np.random.randn(4, 3).astype(np.float32)
    scale0, bias0 = bn.scale.get().astype(np.float64), bn.bias.get().astype(np.float64)
    bn(gpuarray.to_gpu(host))
    bn.backward(gpuarray.to_gpu(grad))
    _, dscale, dbias = Reference.batchNormBackward(host, grad, scale0.reshape(1, 3), (0,), EPS)
    bn.updateParams(0.1)
    np.testing.assert_allclose(bn.scale.get().ravel(), scale0.ravel() + 0.1 * dscale.ravel(), atol=1e-5)
    np.testing.assert_allclose(bn.bias.get().ravel(), bias0.ravel() + 0.1 * dbias.ravel(), atol=1e-5)


@pytest.mark.parametrize(
    "kind, shape", [("perActivation", (5, 3)), ("spatial2D", (3, 2, 3, 2)), ("spatial1D", (2, 2, 4))]
)
def test_finite_difference_gradients_in_float64(kind, shape, backend):
    Backends.skipUnless(backend.name, np.float64, Dnn.dataTypes(backend))
    bn = makeModule(kind, shape[1])
    bn.calcMode(np.float64)
    host = np.random.normal(0.5, 1.5, size=shape)
    grad = np.random.randn(*shape)

    assert moduleInputGradientError(bn, host, grad) < 1e-6

    axes = normalizedAxes(bn, len(shape))
    scale, bias = bn.scale.get().astype(np.float64), bn.bias.get().astype(np.float64)
    numericScale = numericGradient(lambda s: Reference.batchNormTrain(host, s, bias, axes, EPS).out, scale, grad)
    assert relativeError(bn.vars["scale"].grad.get(), numericScale) < 1e-5


def test_float16_calc_mode_keeps_float32_statistics():
    bn = BatchNorm2D(3)
    bn.calcMode(np.float16)
    host = np.random.normal(1.0, 2.0, size=(4, 3, 5, 5)).astype(np.float16)
    out = bn(gpuarray.to_gpu(host))
    ref = Reference.batchNormTrain(host, bn.scale.get(), bn.bias.get(), (0, 2, 3), EPS)
    assert out.dtype == np.float16 and bn.mean.dtype == np.float32 and bn.scale.dtype == np.float32
    np.testing.assert_allclose(out.get().astype(np.float64), ref.out, atol=1e-2)
    np.testing.assert_allclose(bn.var.get().ravel(), ref.unbiasedVar.ravel(), rtol=1e-3)


def test_mode_switches_drop_cached_results():
    bn = BatchNorm(3)
    bn(gpuarray.to_gpu(np.random.randn(4, 3).astype(np.float32)))
    bn.backward(gpuarray.to_gpu(np.random.randn(4, 3).astype(np.float32)))
    bn.evalMode()
    assert (bn.inData, bn.data, bn.grad, bn.savemean, bn.saveinvvar, bn.train) == (None, None, None, None, None, False)
    bn.trainMode()
    assert bn.train and bn.data is None
    with pytest.raises(ModuleError, match="before forward"):
        bn.backward(gpuarray.to_gpu(np.zeros((4, 3), np.float32)))


# --- errors


@pytest.mark.parametrize(
    "make, shape, dtype, pattern",
    [
        (
            lambda: BatchNorm2D(3),
            (2, 3, 4),
            np.float32,
            r"4D data \(batch, maps, height, width\); got shape \(2, 3, 4\)",
        ),
        (lambda: BatchNorm2D(3), (2, 5, 4, 4), np.float32, r"data has 5 maps \(expected: 3\)"),
        (lambda: BatchNorm(6), (2, 6, 1), np.float32, r"2D data \(batch, size\); got shape \(2, 6, 1\)"),
        (lambda: BatchNorm(6), (2, 5), np.float32, r"5 features \(expected: 6\)"),
        (lambda: BatchNorm1D(2), (2, 2, 3), np.float16, "dtype float32.*got float16"),
        (lambda: BatchNorm3D(2), (2, 2, 3, 3), np.float32, "5D data"),
    ],
    ids=["rank", "maps", "bn_rank", "bn_size", "dtype", "rank_3d"],
)
def test_bad_data_is_a_module_error_that_changes_nothing(make, shape, dtype, pattern):
    bn = make()
    state = moduleState(bn)
    with pytest.raises(ModuleError, match=pattern):
        bn(gpuarray.to_gpu(np.ones(shape, dtype=dtype)))
    assertSameState(bn, state)
    assert bn.data is None and bn.inData is None


def test_host_array_instead_of_gpuarray_is_a_module_error():
    with pytest.raises(ModuleError, match="GPUArray; got ndarray"):
        BatchNorm(3)(np.ones((2, 3), np.float32))


@pytest.mark.parametrize("shape", [(1, 4), (1, 4, 1, 1)], ids=["batch_of_one", "one_pixel_of_one"])
def test_one_element_per_map_in_training_is_an_error_that_changes_nothing(shape):
    bn = BatchNorm(4) if len(shape) == 2 else BatchNorm2D(4)
    bn(gpuarray.to_gpu(np.random.randn(3, *shape[1:]).astype(np.float32)))
    state = moduleState(bn)
    with pytest.raises(ModuleError, match="at least 2 elements per map"):
        bn(gpuarray.to_gpu(np.ones(shape, np.float32)))
    assertSameState(bn, state)


def test_grad_of_wrong_shape_or_dtype_is_a_module_error():
    bn = BatchNorm(3)
    bn(gpuarray.to_gpu(np.random.randn(4, 3).astype(np.float32)))
    before = bn.vars["scale"].grad.get()
    with pytest.raises(ModuleError, match=r"grad of shape \(4, 3\).*got shape \(3, 4\)"):
        bn.backward(gpuarray.to_gpu(np.ones((3, 4), np.float32)))
    with pytest.raises(ModuleError, match="dtype float32.*dtype float16"):
        bn.backward(gpuarray.to_gpu(np.ones((4, 3), np.float16)))
    assert bn.grad is None and np.array_equal(bn.vars["scale"].grad.get(), before)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        ({"epsilon": 0.0}, "epsilon must be a finite number > 0"),
        ({"epsilon": -1e-5}, "epsilon must be a finite number > 0"),
        ({"epsilon": None}, "epsilon must be a finite number > 0; got None"),
        ({"epsilon": float("inf")}, "epsilon must be a finite number > 0"),
        ({"minFactor": 1.5}, r"minFactor must be in \[0, 1\]"),
        ({"minFactor": -0.1}, r"minFactor must be in \[0, 1\]"),
        ({"minFactor": "0.1"}, r"minFactor must be in \[0, 1\]; got '0.1'"),
        ({"initFactor": 0.0}, r"initFactor must be in \(0, 1\]"),
        ({"initFactor": 1.5}, r"initFactor must be in \(0, 1\]; got 1.5"),
        ({"initFactor": float("nan")}, r"initFactor must be in \(0, 1\]"),
        ({"sscale": float("inf")}, "sscale must be a finite number >= 0"),
        ({"sscale": float("nan")}, "sscale must be a finite number >= 0"),
        ({"affine": "no"}, "affine must be True or False; got 'no'"),
        ({"inplace": None}, "inplace must be True or False"),
    ],
)
def test_bad_constructor_arguments_are_value_errors(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        BatchNorm2D(3, **kwargs)


@pytest.mark.parametrize(
    "make",
    [
        lambda: BatchNorm(0),
        lambda: BatchNorm(2.5),
        lambda: BatchNormND(0, 3),
        lambda: BatchNormND(2, -1),
        lambda: BatchNorm2D(True),
    ],
)
def test_sizes_must_be_positive_ints(make):
    with pytest.raises(ValueError, match="must be a positive int"):
        make()


def test_messages_name_the_constructor_argument():
    with pytest.raises(ValueError, match=r"BatchNorm: size must be a positive int; got \{\}"):
        BatchNorm({})
    with pytest.raises(ValueError, match="BatchNorm2D: maps must be a positive int"):
        BatchNorm2D({})
    with pytest.raises(ValueError, match="BatchNorm: initFactor"):
        BatchNorm(3, initFactor=2.0)


def test_unsupported_calc_mode_is_a_module_error():
    bn = BatchNorm(3)
    with pytest.raises(ModuleError, match="calc types .* got int32"):
        bn.calcMode(np.int32)
    assert bn.calctype == np.float32


@pytest.mark.parametrize("T", [None, "bogus"], ids=["none", "not_a_dtype"])
def test_calc_mode_of_something_that_is_not_a_dtype_is_a_module_error_naming_it(T):
    bn = BatchNorm(3)
    with pytest.raises(ModuleError, match=r"BatchNorm: calcMode expects a data type \(one of float32.*\); got %r" % T):
        bn.calcMode(T)
    assert bn.calctype == np.float32


# --- empty modules and persistence


def test_empty_module_has_no_arrays_until_loaded(tmp_path):
    bn = BatchNorm2D(3, empty=True)
    assert (bn.scale, bn.bias, bn.mean, bn.var, bn.vars, bn.attrs) == (None, None, None, None, {}, {})
    with pytest.raises(ModuleError, match="empty"):
        bn(gpuarray.to_gpu(np.ones((2, 3, 2, 2), np.float32)))
    assert bn.numOfProps == 0

    source = BatchNorm2D(3)
    source(gpuarray.to_gpu(np.random.randn(4, 3, 2, 2).astype(np.float32)))
    source.save(tmp_path / "bn.h5")
    bn.load(tmp_path / "bn.h5", name="BatchNorm2D")
    for name in ("scale", "bias", "mean", "var"):
        assert np.array_equal(getattr(bn, name).get(), getattr(source, name).get())
    assert set(bn.vars) == {"scale", "bias"}
    bn.evalMode()
    host = np.random.randn(2, 3, 2, 2).astype(np.float32)
    np.testing.assert_allclose(
        bn(gpuarray.to_gpu(host)).get(), source.evalMode() or source(gpuarray.to_gpu(host)).get()
    )


def test_save_writes_puzzlelib_layout_and_load_restores(tmp_path):
    bn = BatchNorm2D(4, name="bn1")
    for _ in range(2):
        bn(gpuarray.to_gpu(np.random.normal(2.0, 1.0, size=(3, 4, 2, 2)).astype(np.float32)))
    bn.save(str(tmp_path / "net.h5"))

    with h5py.File(tmp_path / "net.h5", "r") as f:
        assert set(f.keys()) == {"params", "links", "attrs"}
        assert set(f["params"].keys()) == {"0", "1"}
        assert (f["links"]["bn1.scale"][()], f["links"]["bn1.bias"][()]) == (0, 1)
        assert set(f["attrs"].keys()) == {"bn1.mean", "bn1.var"}
        assert np.array_equal(f["params"]["0"][()], bn.scale.get())
        assert np.array_equal(f["attrs"]["bn1.var"][()], bn.var.get())

    other = BatchNorm2D(4, name="bn1")
    other.load(tmp_path / "net.h5")
    for name in ("scale", "bias", "mean", "var"):
        assert np.array_equal(getattr(other, name).get(), getattr(bn, name).get())


def test_not_affine_saves_scale_and_bias_among_the_parameters(tmp_path):
    # NOTE: as PuzzleLib does, whose loader reads scale and bias through links even when affine=False
    BatchNorm(3, affine=False, name="n").save(tmp_path / "n.h5")
    with h5py.File(tmp_path / "n.h5", "r") as f:
        assert set(f["attrs"].keys()) == {"n.mean", "n.var"} and set(f["links"].keys()) == {"n.scale", "n.bias"}
        assert np.array_equal(f["params"][str(f["links"]["n.scale"][()])][()], np.ones((1, 3, 1, 1), np.float32))


def test_load_errors_name_the_problem_and_change_nothing(tmp_path):
    bn = BatchNorm2D(3, name="a")
    state = moduleState(bn)

    with pytest.raises(ModuleError, match="missing or not an HDF5 file"):
        bn.load(tmp_path / "absent.h5")

    (tmp_path / "corrupt.h5").write_bytes(b"definitely not hdf5" * 10)
    with pytest.raises(ModuleError, match="missing or not an HDF5 file"):
        bn.load(tmp_path / "corrupt.h5")

    BatchNorm2D(4, name="a").save(tmp_path / "four.h5")
    with pytest.raises(ModuleError, match=r"'a\.(scale|bias|mean|var)'.*shape \(1, 3, 1, 1\).*shape \(1, 4, 1, 1\)"):
        bn.load(tmp_path / "four.h5")

    BatchNorm2D(3, name="b").save(tmp_path / "other_name.h5")
    with pytest.raises(ModuleError, match="no params entry 'a.scale'"):
        bn.load(tmp_path / "other_name.h5")

    good = BatchNorm2D(3, name="a")
    good.save(tmp_path / "partial.h5")
    with h5py.File(tmp_path / "partial.h5", "r+") as f:
        del f["attrs"]["a.var"]
        f["attrs"].create_dataset("a.var", data=np.ones((1, 3, 1, 1), np.float64))
    with pytest.raises(ModuleError, match="'a.var'.*dtype float32.*float64"):
        bn.load(tmp_path / "partial.h5")

    assertSameState(bn, state)


# --- memory


def test_training_loop_stops_making_raw_allocations_after_warm_up():
    bn = BatchNorm2D(8)
    host = np.random.randn(16, 8, 12, 12).astype(np.float32)
    grad = gpuarray.to_gpu(np.random.randn(16, 8, 12, 12).astype(np.float32))

    def step():
        bn(gpuarray.to_gpu(host))
        bn.backward(grad)
        bn.updateParams(1e-3)

    # NOTE: warm-up takes two steps: during the second, the first step's outputs are still alive while new ones are made
    step()
    step()
    gc.collect()
    misses = gpuarray.memoryPool.stats()["misses"]
    for _ in range(5):
        step()
    gc.collect()
    stats = gpuarray.memoryPool.stats()
    assert stats["misses"] == misses and stats["hits"] > 0


@pytest.mark.parametrize("train", [False, True], ids=["evaluation", "training"])
def test_repeated_forwards_reuse_the_previous_output_block_unless_it_is_held(train):
    bn = BatchNorm2D(4)
    if not train:
        bn.evalMode()
    host = np.random.randn(8, 4, 6, 6).astype(np.float32)
    data = gpuarray.to_gpu(host)
    bn(data)
    first = bn.data.ptr

    gc.collect()
    misses = gpuarray.memoryPool.stats()["misses"]
    for _ in range(3):
        bn(data)
        assert bn.data.ptr == first
    assert gpuarray.memoryPool.stats()["misses"] == misses

    held = bn.data
    expected = held.get()
    bn(gpuarray.to_gpu(2 * host))
    assert bn.data.ptr != held.ptr
    np.testing.assert_array_equal(held.get(), expected)


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("test", [False, True], ids=["after_training", "after_evaluation"])
def test_backward_of_empty_data_gives_zero_parameter_gradients(test):
    shape, stat = (0, 3, 4, 4), gpuarray.to_gpu(np.full((1, 3, 1, 1), 2.0, np.float32))
    data, grad = gpuarray.empty(shape, np.float32), gpuarray.empty(shape, np.float32)
    ingrad, scalegrad, biasgrad = Dnn.batchNormNdBackward(
        data, grad, stat, savemean=stat, saveinvvar=stat, mode="spatial", test=test, mean=stat, var=stat
    )
    assert ingrad.shape == shape
    assert np.array_equal(scalegrad.get(), np.zeros((1, 3, 1, 1), np.float32))
    assert np.array_equal(biasgrad.get(), np.zeros((1, 3, 1, 1), np.float32))


# --- data with an empty axis


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_evaluation_of_data_with_an_empty_spatial_axis_gives_an_empty_output_and_zero_parameter_gradients(dtype):
    shape = (2, 3, 0, 4)
    bn = BatchNorm2D(3)
    bn.calcMode(dtype)
    bn.evalMode()
    state = moduleState(bn)

    out = bn(gpuarray.to_gpu(np.zeros(shape, dtype)))
    assert out.shape == shape and out.dtype == dtype
    ingrad = bn.backward(gpuarray.to_gpu(np.zeros(shape, dtype)))
    assert ingrad.shape == shape and ingrad.dtype == dtype
    for name in ("scale", "bias"):
        assert np.array_equal(bn.vars[name].grad.get(), np.zeros((1, 3, 1, 1), np.float32)), name
    assertSameState(bn, state)


@pytest.mark.parametrize("mode", ["spatial", (0, 2), (0, 3)], ids=["spatial", "axes_0_2_permuted", "axes_0_3"])
def test_dnn_evaluation_of_data_with_an_empty_axis_gives_an_empty_output_also_in_place(mode):
    shape = (2, 3, 0, 4)
    data = gpuarray.to_gpu(np.zeros(shape, np.float32))
    pshape = BatchNormLayout(shape, modeAxes(mode, 4)).paramShape
    scale, bias = gpuarray.to_gpu(np.ones(pshape, np.float32)), gpuarray.zeros(pshape, np.float32)
    mean, var = gpuarray.zeros(pshape, np.float32), gpuarray.to_gpu(np.ones(pshape, np.float32))

    out = Dnn.batchNormNd(data, scale, bias, mean, var, test=True, mode=mode)
    assert out.shape == shape and out.dtype == np.float32 and out.ptr != data.ptr
    assert Dnn.batchNormNd(data, scale, bias, mean, var, test=True, mode=mode, out=data) is data


def test_training_on_data_with_an_empty_spatial_axis_stays_an_error():
    shape = (2, 3, 0, 4)
    data, stat = gpuarray.to_gpu(np.zeros(shape, np.float32)), gpuarray.to_gpu(np.ones((1, 3, 1, 1), np.float32))
    with pytest.raises(ValueError, match=r"at least 2 elements per map .* shape \(2, 3, 0, 4\) has 0"):
        Dnn.batchNormNd(data, stat, stat, stat, stat, test=False)

    bn = BatchNorm2D(3)
    state = moduleState(bn)
    with pytest.raises(ModuleError, match=r"BatchNorm2D: training needs at least 2 elements per map .* has 0"):
        bn(data)
    assertSameState(bn, state)


# --- numbers that must never be silently wrong


@pytest.mark.parametrize("offset", [0.0, 100.0, 1000.0])
def test_float16_evaluation_is_within_one_ulp_for_any_offset(offset, backend):
    Backends.skipUnless(backend.name, np.float16, Dnn.dataTypes(backend))
    host = (offset + np.random.uniform(0.0, 1.0, size=(64, 6, 5, 5))).astype(np.float16)
    bn = BatchNorm2D(6)
    bn.calcMode(np.float16)
    bn(gpuarray.to_gpu(host))
    bn.evalMode()
    out = bn(gpuarray.to_gpu(host)).get()

    ref = Reference.batchNormEval(
        host.astype(np.float64), bn.scale.get(), bn.bias.get(), bn.mean.get(), bn.var.get(), EPS
    )
    ulp = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
    error = np.abs(out.astype(np.float64) - ref) / ulp
    assert error.max() <= 1.0, "off by %.2f fp16 ulps (offset %g)" % (error.max(), offset)


def test_momentum_zero_does_not_read_a_poisoned_gradient():
    bn = BatchNorm(3)
    host = np.random.randn(8, 3).astype(np.float32)
    grad = np.random.randn(8, 3).astype(np.float32)
    bn(gpuarray.to_gpu(host))
    bn.vars["scale"].grad.fill(np.inf)
    bn.vars["bias"].grad.fill(np.nan)

    bn.backward(gpuarray.to_gpu(grad))
    _, dscale, dbias = Reference.batchNormBackward(host, grad, bn.scale.get().reshape(1, 3), (0,), EPS)
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), atol=1e-5)
    np.testing.assert_allclose(bn.vars["bias"].grad.get().ravel(), dbias.ravel(), atol=1e-5)


def test_in_place_evaluation_refuses_the_scale_gradient_but_gives_the_input_gradient():
    bn = BatchNorm(4, inplace=True)
    bn.mean.set(np.random.normal(2.0, 1.0, size=(1, 4, 1, 1)).astype(np.float32))
    bn.var.set(np.random.uniform(4.0, 9.0, size=(1, 4, 1, 1)).astype(np.float32))
    bn.evalMode()
    host = np.random.normal(2.0, 3.0, size=(5, 4)).astype(np.float32)
    grad = np.random.randn(5, 4).astype(np.float32)
    bn(gpuarray.to_gpu(host))
    before = bn.vars["scale"].grad.get()

    with pytest.raises(ModuleError, match="overwrote its input.*updParamGrads=False"):
        bn.backward(gpuarray.to_gpu(grad))
    assert np.array_equal(bn.vars["scale"].grad.get(), before) and bn.grad is None

    bn.backward(gpuarray.to_gpu(grad), updParamGrads=False)
    dx, _, _ = Reference.frozenBackward(
        host, grad, bn.scale.get().reshape(1, 4), bn.mean.get().reshape(1, 4), bn.var.get().reshape(1, 4), EPS, (0,)
    )
    np.testing.assert_allclose(bn.grad.get(), dx, atol=1e-6, rtol=1e-6)
    assert np.array_equal(bn.vars["scale"].grad.get(), before)
