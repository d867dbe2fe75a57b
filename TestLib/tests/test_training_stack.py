"""The training stack (Linear, Activation, Sequential, CrossEntropy, SGD, MomentumSGD, Backend.ElementWise) against
float64 numpy references and float64 finite differences, on every backend.

Float64 gradient checks run where the backend computes in float64 (the CPU backend) and skip with the reason elsewhere.
"""

import h5py
import numpy as np
import pytest

from PuzzleLib.Backend import ElementWise, gpuarray
from PuzzleLib.Containers import Sequential
from PuzzleLib.Cost import CrossEntropy
from PuzzleLib.Modules import Activation, BatchNorm, Linear, ModuleError
from PuzzleLib.Optimizers import SGD, MomentumSGD
from PuzzleLib.TestLib import Backends
from PuzzleLib.TestLib.GradientCheck import numericGradient, relativeError


def requireFloat64(backend):
    """Float64 gradient checks need a backend that computes in float64 (the CPU backend)."""
    Backends.skipUnless(backend.name, np.float64, ElementWise.dataTypes(backend))


def refSigmoid(x):
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def refSoftmax(s):
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


# --- Backend.ElementWise against numpy


@pytest.mark.parametrize("inplace", [False, True], ids=["new_output", "inplace"])
@pytest.mark.parametrize("shape", [(7, 33), (300, 257)], ids=["small", "many_blocks"])
@pytest.mark.parametrize(
    "act, slope",
    [("sigmoid", None), ("relu", None), ("tanh", None), ("leakyRelu", None), ("leakyRelu", 0.2), ("elu", None),
     ("elu", 0.5)],
    ids=["sigmoid", "relu", "tanh", "leakyRelu", "leakyRelu_0.2", "elu", "elu_0.5"],
)
def test_activation_forward_backward(act, slope, shape, inplace):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(shape) * 5).astype(np.float32)
    x[0, :3] = (-100.0, 100.0, 0.0)
    g = rng.standard_normal(shape).astype(np.float32)
    xd, gd = x.astype(np.float64), g.astype(np.float64)
    s = {"leakyRelu": 0.01, "elu": 1.0}.get(act, 0.0) if slope is None else slope

    ref = {
        "sigmoid": refSigmoid(xd), "relu": np.maximum(xd, 0.0), "tanh": np.tanh(xd),
        "leakyRelu": np.where(xd > 0, xd, s * xd), "elu": np.where(xd > 0, xd, s * np.expm1(np.minimum(xd, 0))),
    }[act]
    # NOTE: the derivatives written from the input, independently of the library's from-the-output form
    refGrad = {
        "sigmoid": gd * refSigmoid(xd) * refSigmoid(-xd),
        "relu": gd * (xd > 0),
        "tanh": gd / np.cosh(np.clip(xd, -50, 50)) ** 2,
        "leakyRelu": np.where(xd > 0, gd, s * gd),
        "elu": np.where(xd > 0, gd, s * gd * np.exp(np.minimum(xd, 0))),
    }[act]

    data, grad = gpuarray.to_gpu(x), gpuarray.to_gpu(g)
    y = ElementWise.activation(data, act, out=data if inplace else None, slope=slope)
    assert np.allclose(y.get(), ref, atol=1e-6, rtol=1e-5) and (y.ptr == data.ptr) == inplace
    ingrad = ElementWise.activationBackward(grad, y, act, out=grad if inplace else None, slope=slope)
    assert np.allclose(ingrad.get(), refGrad, atol=1e-6, rtol=1e-4) and (ingrad.ptr == grad.ptr) == inplace


def test_activation_rejects_bad_input():
    data = gpuarray.to_gpu(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="softplus"):
        ElementWise.activation(data, "softplus")
    with pytest.raises(ValueError, match="shape"):
        ElementWise.activation(data, "relu", out=gpuarray.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="int32"):
        ElementWise.activation(gpuarray.to_gpu(np.zeros(3, dtype=np.int32)), "relu")
    with pytest.raises(ValueError, match="Activation: activation must be one of"):
        Activation("softplus")
    with pytest.raises(ValueError, match="slope applies to leakyRelu and elu only"):
        ElementWise.activation(data, "relu", slope=0.1)
    with pytest.raises(ValueError, match="slope of elu must be a finite number >= 0; got -1"):
        ElementWise.activationBackward(data, data, "elu", slope=-1.0)
    with pytest.raises(ValueError, match="Activation: slope of leakyRelu must be a finite number >= 0; got nan"):
        Activation("leakyRelu", slope=float("nan"))


@pytest.mark.parametrize("shape", [(5, 9), (129, 333)], ids=["small", "many_blocks"])
def test_add_vector_to_rows(shape):
    rng = np.random.default_rng(2)
    x, v = rng.standard_normal(shape).astype(np.float32), rng.standard_normal(shape[1]).astype(np.float32)
    np.testing.assert_allclose(
        ElementWise.addVectorToRows(gpuarray.to_gpu(x), gpuarray.to_gpu(v)).get(), x.astype(np.float64) + v, atol=1e-6
    )
    data = gpuarray.to_gpu(x)
    out = ElementWise.addVectorToRows(data, gpuarray.to_gpu(v), out=data)
    assert out.ptr == data.ptr
    assert np.allclose(out.get(), x.astype(np.float64) + v, atol=1e-6)
    with pytest.raises(ValueError, match=r"\(%d,\)" % shape[1]):
        ElementWise.addVectorToRows(data, gpuarray.to_gpu(v[:-1]))


@pytest.mark.parametrize("classes", [3, 10, 40, 1000])
def test_softmax_cross_entropy_large_scores_and_ties(classes):
    rng = np.random.default_rng(classes)
    s = (rng.standard_normal((50, classes)) * 30 + 1000).astype(np.float32)
    s[0, :] = 5.0  # a full tie: the first class is the prediction
    labels = rng.integers(0, classes, size=50).astype(np.int32)
    labels[0] = 0

    grad, lossSum, correct = ElementWise.softmaxCrossEntropy(gpuarray.to_gpu(s), gpuarray.to_gpu(labels))
    sd = s.astype(np.float64)
    p = refSoftmax(sd)
    rows = np.arange(50)
    assert abs(lossSum - np.sum(-np.log(p[rows, labels]))) < 1e-3 * max(1.0, abs(lossSum))
    assert np.allclose(grad.get(), (np.eye(classes)[labels] - p) / 50, atol=1e-6)
    assert correct == int(np.sum(np.argmax(sd, axis=1) == labels))
    assert correct >= 1


def test_softmax_cross_entropy_may_write_its_gradient_over_the_scores():
    rng = np.random.default_rng(4)
    s = rng.standard_normal((30, 7)).astype(np.float32) * 3
    labels = rng.integers(0, 7, size=30).astype(np.int32)
    scores = gpuarray.to_gpu(s)

    grad, lossSum, correct = ElementWise.softmaxCrossEntropy(scores, gpuarray.to_gpu(labels), out=scores)
    sd = s.astype(np.float64)
    p = refSoftmax(sd)
    assert grad.ptr == scores.ptr
    assert np.allclose(grad.get(), (np.eye(7)[labels] - p) / 30, atol=1e-6)
    assert abs(lossSum - np.sum(-np.log(p[np.arange(30), labels]))) < 1e-4 * max(1.0, abs(lossSum))
    assert correct == int(np.sum(np.argmax(sd, axis=1) == labels))


def test_cross_entropy_rejects_bad_labels_and_accumulates_nothing():
    cost = CrossEntropy()
    scores = gpuarray.to_gpu(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ModuleError, match=r"\[0, 4\); 1 of 3"):
        cost(scores, gpuarray.to_gpu(np.array([0, -1, 3], dtype=np.int32)))
    with pytest.raises(ModuleError, match="int32"):
        cost(scores, gpuarray.to_gpu(np.array([0, 1, 3], dtype=np.int64)))
    with pytest.raises(ModuleError, match=r"shape \(3,\)"):
        cost(scores, gpuarray.to_gpu(np.array([0, 1], dtype=np.int32)))
    assert cost.accumCount == 0 and cost.error is None


def test_cross_entropy_accumulates_over_batches():
    rng = np.random.default_rng(4)
    cost = CrossEntropy()
    losses, hits, total = [], 0, 0
    for batch in (5, 8):
        s = rng.standard_normal((batch, 3)).astype(np.float64)
        labels = rng.integers(0, 3, size=batch).astype(np.int32)
        cost(gpuarray.to_gpu(s.astype(np.float32)), gpuarray.to_gpu(labels))
        losses.extend(-np.log(refSoftmax(s)[np.arange(batch), labels]))
        hits += int(np.sum(s.argmax(axis=1) == labels))
        total += batch
    assert abs(cost.getMeanError() - np.mean(losses)) < 1e-5
    assert cost.getAccuracy() == hits / total


# --- Linear


def test_linear_init_schemes():
    np.random.seed(5)
    shapes = {"xavier": np.sqrt(6.0 / 500), "uniform": 1.0}
    for scheme, bound in shapes.items():
        W = Linear(200, 300, initscheme=scheme, wscale=2.0).W.get()
        assert np.abs(W).max() <= 2.0 * bound + 1e-6 and np.abs(W).max() > 1.9 * bound
    assert abs(Linear(400, 300, initscheme="he").W.get().std() - np.sqrt(2.0 / 400)) < 0.003
    assert abs(Linear(400, 300, initscheme="gaussian", wscale=0.1).W.get().std() - 0.1) < 0.003
    with pytest.raises(ValueError, match="initscheme"):
        Linear(3, 4, initscheme="orthogonal")
    with pytest.raises(ValueError, match="insize"):
        Linear(0, 4)


def test_linear_without_bias_and_errors():
    np.random.seed(6)
    fc = Linear(4, 3, useBias=False)
    assert sorted(fc.vars) == ["W"]
    x = np.random.randn(2, 4).astype(np.float32)
    assert np.allclose(fc(gpuarray.to_gpu(x)).get(), x.astype(np.float64) @ fc.W.get(), atol=1e-6)
    with pytest.raises(ModuleError, match="2D data"):
        fc(gpuarray.to_gpu(np.zeros((2, 4, 1), dtype=np.float32)))
    with pytest.raises(ModuleError, match="empty"):
        Linear(4, 3, empty=True)(gpuarray.to_gpu(x))


def test_linear_gradient_check(backend):
    requireFloat64(backend)
    rng = np.random.default_rng(7)
    np.random.seed(7)
    fc = Linear(6, 4, initscheme="gaussian", wscale=0.5)
    fc.calcMode(np.float64)
    fc.vars["b"].data.set(rng.standard_normal(4))
    x, g = rng.standard_normal((5, 6)), rng.standard_normal((5, 4))

    fc(gpuarray.to_gpu(x))
    fc.backward(gpuarray.to_gpu(g))
    numeric = numericGradient(lambda v: fc(gpuarray.to_gpu(v)).get(), x, g)
    assert relativeError(fc.grad.get(), numeric) < 1e-8

    for name in ("W", "b"):
        var = fc.vars[name]
        analytic = var.grad.get()

        def func(value, var=var):
            var.data.set(value)
            return fc(gpuarray.to_gpu(x)).get()

        numeric = numericGradient(func, var.data.get(), g)
        assert relativeError(analytic, numeric) < 1e-8, name


@pytest.mark.parametrize(
    "act, slope", [("sigmoid", None), ("relu", None), ("tanh", None), ("leakyRelu", 0.1), ("elu", 0.7)],
    ids=["sigmoid", "relu", "tanh", "leakyRelu", "elu"],
)
def test_activation_gradient_check(act, slope, backend):
    requireFloat64(backend)
    rng = np.random.default_rng(8)
    x, g = rng.standard_normal((4, 5)) * 2, rng.standard_normal((4, 5))
    x[np.abs(x) < 1e-3] = 0.5  # keep relu's kink away from the finite-difference step
    module = Activation(act, slope=slope)
    module.calcMode(np.float64)
    module(gpuarray.to_gpu(x))
    analytic = module.backward(gpuarray.to_gpu(g)).get()
    numeric = numericGradient(lambda v: module(gpuarray.to_gpu(v)).get(), x, g)
    assert relativeError(analytic, numeric) < 1e-8


# --- Sequential


def buildNet(name="net", hidden=5):
    net = Sequential(name=name)
    net.append(Linear(6, hidden, initscheme="gaussian", wscale=0.5, name="fc0"))
    net.append(BatchNorm(hidden, name="bn0"))
    net.append(Activation("sigmoid", name="act0"))
    net.append(Linear(hidden, 3, initscheme="gaussian", wscale=0.5, name="fc1"))
    return net


def test_sequential_with_batchnorm_gradient_check(backend):
    """The loss of Linear -> BatchNorm -> sigmoid -> Linear -> CrossEntropy, differentiated by finite differences
    with respect to the input and to the first layer's weights (whose gradient flows back through BatchNorm)."""
    requireFloat64(backend)
    rng = np.random.default_rng(9)
    np.random.seed(9)
    net = buildNet()
    net.calcMode(np.float64)
    x = rng.standard_normal((8, 6))
    labels = gpuarray.to_gpu(rng.integers(0, 3, size=8).astype(np.int32))
    cost = CrossEntropy()

    def loss(value):
        error, _ = cost(net(gpuarray.to_gpu(value)), labels)
        return np.float64(error)

    _, grad = cost(net(gpuarray.to_gpu(x)), labels)
    net.backward(grad)
    # NOTE: the cost hands back the negated gradient, so the analytic gradient of the loss is minus what flows back
    assert relativeError(-net.grad.get(), numericGradient(loss, x, np.float64(1.0))) < 1e-7

    W = net["fc0"].vars["W"]
    analytic = -W.grad.get()

    def lossOfW(value):
        W.data.set(value)
        return loss(x)

    assert relativeError(analytic, numericGradient(lossOfW, W.data.get(), np.float64(1.0))) < 1e-7


def test_sequential_rejects_bad_data_before_any_child_runs():
    np.random.seed(10)
    net = Sequential()
    net.append(Linear(6, 5))
    net.append(BatchNorm(5))
    net.append(Linear(4, 2))
    with pytest.raises(ModuleError, match="expected: 4"):
        net(gpuarray.to_gpu(np.random.randn(8, 6).astype(np.float32)))
    assert net[1].numOfProps == 0 and np.array_equal(net[1].mean.get(), np.zeros((1, 5, 1, 1)))

    with pytest.raises(ModuleError, match="empty"):
        Sequential()(gpuarray.to_gpu(np.zeros((2, 2), dtype=np.float32)))
    with pytest.raises(ModuleError, match="unique"):
        net.append(Linear(2, 2, name="0"))
    with pytest.raises(ModuleError, match="Module"):
        net.append(np.zeros(3))


def test_sequential_refuses_a_child_that_cannot_run_before_any_child_runs():
    net = Sequential()
    net.append(BatchNorm(5, name="bn"))
    net.append(Linear(5, 2, empty=True, name="fc"))
    with pytest.raises(ModuleError, match="Linear 'fc' is empty"):
        net(gpuarray.to_gpu(np.random.randn(8, 5).astype(np.float32)))
    assert net["bn"].numOfProps == 0 and np.array_equal(net["bn"].mean.get(), np.zeros((1, 5, 1, 1)))


def test_sequential_modes_propagate_and_calcmode_is_atomic():
    np.random.seed(11)
    net = buildNet()
    net.evalMode()
    assert not any(module.train for module in net)
    net.trainMode()
    assert all(module.train for module in net)

    # NOTE: float16 is a BatchNorm calc type but not Linear's, so the chain refuses and BatchNorm is changed back
    unsupported = [t for t in (np.float16, np.int32) if np.dtype(t) not in ElementWise.dataTypes(net.backend)][0]
    with pytest.raises(ModuleError):
        net.calcMode(unsupported)
    assert all(module.calctype == np.float32 for module in net)

    # NOTE: numpy reads None as float64, which the CPU backend computes in: the chain must refuse it, not switch
    with pytest.raises(ModuleError, match="expects a data type.*got None"):
        net.calcMode(None)
    assert net.calctype == np.float32 and all(module.calctype == np.float32 for module in net)


def test_sequential_save_load_roundtrip_and_failed_load(tmp_path):
    np.random.seed(12)
    net = buildNet()
    net(gpuarray.to_gpu(np.random.randn(8, 6).astype(np.float32)))
    path = tmp_path / "net.hdf"
    net.save(path)

    with h5py.File(path, "r") as f:
        keys = set(f["links"]) | set(f["attrs"])
        assert set(f["params"]) == {str(index) for index in range(6)}
    assert keys == {"net.fc0.W", "net.fc0.b", "net.bn0.scale", "net.bn0.bias", "net.bn0.mean", "net.bn0.var"} | {
        "net.fc1.W",
        "net.fc1.b",
    }

    np.random.seed(13)
    other = buildNet()
    other.load(path)
    for key, var in net.namedVars().items():
        assert np.array_equal(other.namedVars()[key].data.get(), var.data.get()), key
    assert np.array_equal(other["bn0"].var.get(), net["bn0"].var.get())

    # NOTE: fc0 and bn0 match the file, fc1 does not: nothing may change, not even the layers read before fc1
    wider = buildNet(hidden=7)
    before = {key: var.data.get() for key, var in wider.namedVars().items()}
    with pytest.raises(ModuleError, match="net.fc0.W"):
        wider.load(path)
    for key, var in wider.namedVars().items():
        assert np.array_equal(var.data.get(), before[key]), key


def test_sequential_loads_into_float64_net(tmp_path, backend):
    requireFloat64(backend)
    np.random.seed(14)
    net = buildNet()
    net.save(tmp_path / "net.hdf")
    other = buildNet()
    other.calcMode(np.float64)
    other.load(tmp_path / "net.hdf")
    assert other["fc0"].W.dtype == np.float64
    assert np.array_equal(other["fc0"].W.get(), net["fc0"].W.get().astype(np.float64))


# --- optimizers


def test_sgd_and_momentum_against_numpy():
    rng = np.random.default_rng(15)
    for Rule in (SGD, MomentumSGD):
        np.random.seed(15)
        net = buildNet()
        optimizer = Rule(0.05) if Rule is SGD else Rule(0.05, 0.8)
        optimizer.setupOn(net)
        params = {key: var.data.get().astype(np.float64) for key, var in net.namedVars().items()}
        velocity = {key: np.zeros_like(value) for key, value in params.items()}
        assert set(params) == {"net.fc0.W", "net.fc0.b", "net.bn0.scale", "net.bn0.bias", "net.fc1.W", "net.fc1.b"}

        for _ in range(3):
            for key, var in net.namedVars().items():
                g = rng.standard_normal(var.shape).astype(np.float32)
                var.grad.set(g)
                if Rule is SGD:
                    params[key] = params[key] + 0.05 * g
                else:
                    velocity[key] = 0.8 * velocity[key] + 0.05 * g
                    params[key] = params[key] + velocity[key]
            optimizer.update()

        for key, var in net.namedVars().items():
            assert np.allclose(var.data.get(), params[key], atol=1e-5), (Rule.__name__, key)

        optimizer.zeroGradParams()
        assert all(not var.grad.get().any() for var in net.namedVars().values())


def test_optimizer_notices_replaced_parameters(backend):
    requireFloat64(backend)
    net = buildNet()
    optimizer = MomentumSGD(0.1)
    optimizer.setupOn(net)
    net.calcMode(np.float64)
    with pytest.raises(ModuleError, match="setupOn again"):
        optimizer.update()
    with pytest.raises(ValueError, match="momRate"):
        MomentumSGD(0.1, 1.0)


def test_training_descends_on_a_separable_problem():
    """A few SGD steps on the same batch must lower the loss (sign convention end to end)."""
    rng = np.random.default_rng(16)
    np.random.seed(16)
    net = buildNet()
    hostX = rng.standard_normal((30, 6)).astype(np.float32)
    x = gpuarray.to_gpu(hostX)
    labels = gpuarray.to_gpu(np.argmax(hostX[:, :3], axis=1).astype(np.int32))
    cost, optimizer = CrossEntropy(), SGD(0.5)
    optimizer.setupOn(net)

    errors = []
    for _ in range(50):
        error, grad = cost(net(x), labels)
        net.backward(grad)
        optimizer.update()
        errors.append(error)
    assert errors[-1] < 0.7 * errors[0] and errors[1] < errors[0]
