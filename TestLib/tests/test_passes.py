"""The network passes `Passes.batchNorm` (a Linear batch-normalized, its bias dropped, its activation fused) and
`Passes.foldBatchNorm` (each BatchNorm after a Linear folded into its weights for inference), and the module copies
they rest on (``copy.deepcopy``); on every backend, against float64 numpy references written here, the unfused module
chains, and float64 finite differences."""

import copy

import numpy as np
import pytest
from mpi4py import MPI

from PuzzleLib.Backend import ElementWise, gpuarray
from PuzzleLib.Containers import Sequential
from PuzzleLib.Modules import Activation, BatchNorm, BatchNorm2D, Linear, ModuleError, SyncBatchNorm
from PuzzleLib.Passes import batchNorm, foldBatchNorm
from PuzzleLib.TestLib import Backends, Reference
from PuzzleLib.TestLib.GradientCheck import numericGradient, relativeError
from PuzzleLib.TestLib.Reference import activation as act

EPS = 1e-5
# NOTE: (Activation kind, slope) of the layers; None: a Linear alone
LAYER_ACTIVATIONS = [None, ("sigmoid", None), ("relu", None), ("tanh", None), ("leakyRelu", 0.2), ("elu", 0.5)]


def makeLayer(activation, insize=6, outsize=5, withBias=True):
    """A Linear with Gaussian weights and a nonzero bias, alone or in a Sequential with an Activation."""
    linear = Linear(insize, outsize, initscheme="gaussian", useBias=withBias)
    if withBias:
        linear.b.set(np.random.normal(3.0, 1.0, outsize).astype(np.float32))
    if activation is None:
        return linear, linear
    layer = Sequential()
    layer.append(linear)
    kind, slope = activation
    layer.append(Activation(kind, slope=slope))
    return layer, linear


def hostParams(bn):
    return bn.scale.get().ravel().astype(np.float64), bn.bias.get().ravel().astype(np.float64)


# --- batchNorm(layer)


@pytest.mark.parametrize("activation", LAYER_ACTIVATIONS, ids=lambda a: "linear" if a is None else a[0])
def test_batch_norm_block_against_reference(activation):
    layer, linear = makeLayer(activation)
    block = batchNorm(layer)
    fc, bn = block[0], block[1]
    kind, slope = activation if activation is not None else (None, None)
    assert isinstance(fc, Linear) and not fc.useBias and "b" not in fc.vars and fc.b is None
    assert isinstance(bn, BatchNorm) and bn.size == 5 and bn.activation == kind
    assert len(block) == 2 and fc is not linear and fc.W.ptr != linear.W.ptr

    x = np.random.randn(12, 6).astype(np.float32)
    g = np.random.randn(12, 5).astype(np.float32)
    W, b = linear.W.get().astype(np.float64), linear.b.get().astype(np.float64)
    scale, bias = hostParams(bn)
    # NOTE: the reference keeps the layer's bias (3 on average): the normalization takes it out
    h = x.astype(np.float64) @ W
    ref = Reference.batchNormTrain(h + b, scale, bias, (0,), EPS)
    z = ref.out
    y = act(z, kind, slope)
    out = block(gpuarray.to_gpu(x)).get()
    np.testing.assert_allclose(out, y, atol=2e-5)
    np.testing.assert_allclose(bn.mean.get().ravel(), ref.mean.ravel() - b, atol=2e-5)
    np.testing.assert_allclose(bn.var.get().ravel(), ref.unbiasedVar.ravel(), rtol=1e-4)

    # NOTE: the input and weight gradients from the float64 chain rule, act' from the input side
    eps = 1e-7
    dz = g * (act(z + eps, kind, slope) - act(z - eps, kind, slope)) / (2 * eps)
    dh, dscale, _ = Reference.batchNormBackward(h, dz, scale, (0,), EPS)
    ingrad = block.backward(gpuarray.to_gpu(g)).get()
    np.testing.assert_allclose(ingrad, dh @ W.T, atol=1e-4)
    np.testing.assert_allclose(fc.vars["W"].grad.get(), x.astype(np.float64).T @ dh, atol=1e-4)
    np.testing.assert_allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), atol=1e-4)


@pytest.mark.parametrize("activation", LAYER_ACTIVATIONS, ids=lambda a: "linear" if a is None else a[0])
def test_batch_norm_block_equals_chain_with_bias(activation):
    """The documented equivalence: the block computes what Linear (with its bias) -> BatchNorm -> Activation computes,
    in training (outputs and gradients; the bias's gradient is 0) and in evaluation after the same steps."""
    layer, linear = makeLayer(activation)
    block = batchNorm(layer)
    chain = Sequential()
    chain.append(copy.deepcopy(linear))
    chain.append(BatchNorm(5))
    chain[1].scale.set(block[1].scale.get())
    if activation is not None:
        chain.append(Activation(activation[0], slope=activation[1]))

    for _ in range(3):
        x = np.random.normal(1.0, 2.0, (10, 6)).astype(np.float32)
        g = np.random.randn(10, 5).astype(np.float32)
        np.testing.assert_allclose(block(gpuarray.to_gpu(x)).get(), chain(gpuarray.to_gpu(x)).get(), atol=2e-5)
        gradBlock = block.backward(gpuarray.to_gpu(g)).get()
        gradChain = chain.backward(gpuarray.to_gpu(g)).get()
        np.testing.assert_allclose(gradBlock, gradChain, atol=2e-5)
        np.testing.assert_allclose(block[0].vars["W"].grad.get(), chain[0].vars["W"].grad.get(), atol=1e-4)
        assert np.abs(chain[0].vars["b"].grad.get()).max() < 1e-4
        for net in (block, chain):
            net.updateParams(0.05)

    block.evalMode()
    chain.evalMode()
    x = np.random.normal(1.0, 2.0, (7, 6)).astype(np.float32)
    np.testing.assert_allclose(block(gpuarray.to_gpu(x)).get(), chain(gpuarray.to_gpu(x)).get(), atol=5e-5)


def test_batch_norm_options_and_activation_keyword():
    linear = Linear(4, 3, initscheme="gaussian")
    block = batchNorm(linear, name="block", epsilon=1e-3, activation="leakyRelu", slope=0.3, minFactor=0.5)
    bn = block[1]
    assert block.name == "block" and bn.epsilon == 1e-3 and bn.minFactor == 0.5
    assert bn.fused.kind == "leakyRelu" and bn.fused.slope == 0.3
    assert linear.useBias and "b" in linear.vars
    assert set(block.namedVars()) == {"block.0.W", "block.1.scale", "block.1.bias"}


def test_batch_norm_float64_gradient_check(backend):
    Backends.skipUnless(backend.name, np.float64, ElementWise.dataTypes(backend))
    layer, linear = makeLayer(("elu", 0.5), insize=4, outsize=3)
    linear.calcMode(np.float64)
    block = batchNorm(layer)
    assert block[1].calctype == np.float64 and block.calctype == np.float64
    x, g = np.random.randn(6, 4), np.random.randn(6, 3)

    block(gpuarray.to_gpu(x))
    ingrad = block.backward(gpuarray.to_gpu(g)).get()
    Wgrad = block[0].vars["W"].grad.get()
    # NOTE: 1e-6, not 1e-8: the batch statistics backward reads are kept in float32 (as the module's parameters)
    assert relativeError(ingrad, numericGradient(lambda v: block(gpuarray.to_gpu(v)).get(), x, g)) < 1e-6

    W = block[0].W.get()

    def outputForWeights(values):
        block[0].W.set(values)
        return block(gpuarray.to_gpu(x)).get()

    assert relativeError(Wgrad, numericGradient(outputForWeights, W, g)) < 1e-6


@pytest.mark.parametrize(
    "build, expected",
    [
        (lambda: Activation("relu"), "got Activation"),
        (lambda: BatchNorm(3), "got BatchNorm"),
        (lambda: Sequential(), "holding nothing"),
        (lambda: chainOf(Activation("relu"), Linear(3, 3)), "holding Activation, Linear"),
        (lambda: chainOf(Linear(3, 3), BatchNorm(3)), "holding Linear, BatchNorm"),
        (lambda: chainOf(Linear(3, 3), Activation("relu"), Linear(3, 3)), "holding Linear, Activation, Linear"),
    ],
    ids=["activation", "batchnorm", "empty_sequential", "activation_first", "batchnorm_after", "three_children"],
)
def test_batch_norm_rejects_other_layers(build, expected):
    accepted = "batchNorm expects a Linear, or a Sequential of a Linear and one Activation"
    with pytest.raises(ModuleError, match=accepted) as e:
        batchNorm(build())
    assert expected in str(e.value)


def chainOf(*modules):
    chain = Sequential()
    for module in modules:
        chain.append(module)
    return chain


def test_batch_norm_bad_options_change_nothing():
    layer, linear = makeLayer(("relu", None))
    W, b = linear.W.get(), linear.b.get()
    own = "the layer has its own Activation \\('relu'\\); the options activation, slope"
    with pytest.raises(ValueError, match=own):
        batchNorm(layer, activation="elu", slope=1.0)
    with pytest.raises(ValueError, match="BatchNorm: epsilon must be a finite number > 0; got -1"):
        batchNorm(layer, epsilon=-1)
    with pytest.raises(TypeError, match="momentum"):
        batchNorm(linear, momentum=0.9)
    assert linear.useBias and np.array_equal(linear.W.get(), W) and np.array_equal(linear.b.get(), b)
    assert len(layer) == 2


# --- foldBatchNorm(net)


def trainedNet(affine, activation, withBias=True):
    """Linear -> BatchNorm (affine or not, with a fused activation or not) -> Linear, after 4 training steps on data of
    mean 2 and std 3, so the running statistics are far from 0 and 1."""
    net = Sequential(name="net")
    net.append(Linear(6, 5, initscheme="gaussian", useBias=withBias))
    kind, slope = activation if activation is not None else (None, None)
    net.append(BatchNorm(5, affine=affine, activation=kind, slope=slope, minFactor=0.3))
    net.append(Linear(5, 3, initscheme="gaussian"))
    for _ in range(4):
        net(gpuarray.to_gpu(np.random.normal(2.0, 3.0, (16, 6)).astype(np.float32)))
        net.backward(gpuarray.to_gpu(np.random.randn(16, 3).astype(np.float32)))
        net.updateParams(0.1)
    return net


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "not_affine"])
@pytest.mark.parametrize("activation", [None, ("relu", None), ("elu", 0.5)], ids=["plain", "relu", "elu"])
def test_fold_equals_unfolded_eval(affine, activation):
    net = trainedNet(affine, activation)
    fc, bn, head = net[0], net[1], net[2]
    before = {key: var.data.get() for key, var in net.namedVars().items()}
    mean, var = bn.mean.get().ravel().astype(np.float64), bn.var.get().ravel().astype(np.float64)

    folded = foldBatchNorm(net)
    kinds = [type(module).__name__ for module in folded]
    assert kinds == (["Linear", "Linear"] if activation is None else ["Linear", "Activation", "Linear"])
    assert not folded.train and all(not module.train for module in folded)
    assert folded[0].name is None and folded[0].useBias

    # NOTE: the original is untouched: still training, same parameters and statistics
    assert net.train and len(net) == 3 and bn.numOfProps == 4
    for key, value in net.namedVars().items():
        assert np.array_equal(value.data.get(), before[key]), key

    x = np.random.normal(2.0, 3.0, (9, 6)).astype(np.float32)
    scale, bias = hostParams(bn)
    if not affine:
        assert np.array_equal(scale, np.ones(5)) and np.array_equal(bias, np.zeros(5))
    kind, slope = activation if activation is not None else (None, None)
    h = x.astype(np.float64) @ fc.W.get() + fc.b.get()
    z = Reference.batchNormEval(h, scale, bias, mean, var, EPS, axes=(0,))
    ref = act(z, kind, slope) @ head.W.get() + head.b.get()

    out = folded(gpuarray.to_gpu(x)).get()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)
    net.evalMode()
    np.testing.assert_allclose(out, net(gpuarray.to_gpu(x)).get(), rtol=1e-5, atol=1e-4)
    if activation is not None:
        assert folded[1].inplace and folded[1].slope == activation[1]

    # NOTE: the folded network is the same function: its input gradient is the unfolded one's in evaluation
    g = np.random.randn(9, 3).astype(np.float32)
    np.testing.assert_allclose(
        folded.backward(gpuarray.to_gpu(g)).get(), net.backward(gpuarray.to_gpu(g)).get(), rtol=1e-4, atol=1e-5
    )

    # NOTE: the folded weights themselves, against the documented formulas
    gain = scale / np.sqrt(var + EPS)
    np.testing.assert_allclose(folded[0].W.get(), fc.W.get() * gain, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(folded[0].b.get(), (fc.b.get() - mean) * gain + bias, rtol=1e-6, atol=1e-6)


def test_fold_linear_without_bias_gets_one():
    net = trainedNet(True, None, withBias=False)
    folded = foldBatchNorm(net)
    assert folded[0].useBias and "b" in folded[0].vars and not net[0].useBias
    x = np.random.normal(2.0, 3.0, (5, 6)).astype(np.float32)
    net.evalMode()
    np.testing.assert_allclose(folded(gpuarray.to_gpu(x)).get(), net(gpuarray.to_gpu(x)).get(), rtol=1e-5, atol=1e-4)


def test_fold_nested_blocks_and_kept_modules():
    """Blocks made by batchNorm fold inside their container; a BatchNorm after no Linear is kept, in evaluation."""
    net = Sequential(name="net")
    net.append(BatchNorm(6, name="inputNorm"))
    net.append(batchNorm(Linear(6, 5, initscheme="gaussian"), name="block0", activation="tanh"))
    net.append(batchNorm(chainOf(Linear(5, 4, initscheme="gaussian"), Activation("leakyRelu", slope=0.2))))
    net.append(Linear(4, 2, initscheme="gaussian", name="head"))
    for _ in range(3):
        net(gpuarray.to_gpu(np.random.normal(-1.0, 2.0, (20, 6)).astype(np.float32)))

    folded = foldBatchNorm(net)
    assert folded.names == ["inputNorm", "block0", "2", "head"]
    assert isinstance(folded["inputNorm"], BatchNorm) and not folded["inputNorm"].train
    assert folded["inputNorm"] is not net["inputNorm"]
    assert [type(module).__name__ for module in folded["block0"]] == ["Linear", "Activation"]
    assert folded[2][1].activation == "leakyRelu" and folded[2][1].slope == 0.2
    assert not any(isinstance(module, BatchNorm) for block in (folded[1], folded[2]) for module in block)

    x = np.random.normal(-1.0, 2.0, (8, 6)).astype(np.float32)
    out = folded(gpuarray.to_gpu(x)).get()
    net.evalMode()
    np.testing.assert_allclose(out, net(gpuarray.to_gpu(x)).get(), rtol=1e-5, atol=1e-5)


def test_fold_float64(backend):
    Backends.skipUnless(backend.name, np.float64, ElementWise.dataTypes(backend))
    net = trainedNet(False, ("leakyRelu", 0.1))
    net.calcMode(np.float64)
    folded = foldBatchNorm(net)
    assert folded[0].W.dtype == np.float64 and folded[1].calctype == np.float64
    x = np.random.normal(2.0, 3.0, (9, 6))
    net.evalMode()
    np.testing.assert_allclose(folded(gpuarray.to_gpu(x)).get(), net(gpuarray.to_gpu(x)).get(), rtol=1e-6, atol=1e-6)


def test_fold_synchronized_batch_norm():
    net = chainOf(Linear(4, 3, initscheme="gaussian"), SyncBatchNorm(3, comm=MPI.COMM_SELF))
    net(gpuarray.to_gpu(np.random.normal(1.0, 2.0, (8, 4)).astype(np.float32)))
    folded = foldBatchNorm(net)
    assert [type(module).__name__ for module in folded] == ["Linear"]
    x = np.random.randn(5, 4).astype(np.float32)
    net.evalMode()
    np.testing.assert_allclose(folded(gpuarray.to_gpu(x)).get(), net(gpuarray.to_gpu(x)).get(), rtol=1e-5, atol=1e-5)


def test_fold_rejects_bad_networks():
    with pytest.raises(ModuleError, match="foldBatchNorm expects a Module \\(a Sequential\\); got list"):
        foldBatchNorm([Linear(3, 3)])
    with pytest.raises(ModuleError, match="BatchNorm normalizes 4 features but Linear before it gives 3"):
        foldBatchNorm(chainOf(Linear(2, 3), BatchNorm(4)))
    with pytest.raises(ModuleError, match="BatchNorm 'bn' is empty"):
        foldBatchNorm(chainOf(Linear(2, 3), BatchNorm(3, name="bn", empty=True)))


def test_fold_lone_module_is_an_eval_copy():
    bn = BatchNorm2D(3)
    bn(gpuarray.to_gpu(np.random.randn(4, 3, 2, 2).astype(np.float32)))
    folded = foldBatchNorm(bn)
    assert isinstance(folded, BatchNorm2D) and not folded.train and bn.train and folded is not bn
    assert np.array_equal(folded.var.get(), bn.var.get())


# --- copies of modules


def test_deepcopy_of_trained_batch_norm_is_independent():
    bn = BatchNorm2D(3, renorm=True)
    x = np.random.normal(1.0, 2.0, (4, 3, 5, 5)).astype(np.float32)
    bn(gpuarray.to_gpu(x))
    bn.backward(gpuarray.to_gpu(np.random.randn(4, 3, 5, 5).astype(np.float32)))

    clone = copy.deepcopy(bn)
    assert clone.numOfProps == 1 and clone.renorm and clone.train
    for name in ("scale", "bias", "mean", "var", "renormMean", "renormStd"):
        original, copied = getattr(bn, name), getattr(clone, name)
        assert copied.ptr != original.ptr and np.array_equal(copied.get(), original.get()), name
    assert clone.scale is clone.vars["scale"].data
    assert np.array_equal(clone.vars["scale"].grad.get(), bn.vars["scale"].grad.get())
    assert clone.inData is None and clone.data is None and clone.grad is None and clone.savemean is None
    with pytest.raises(ModuleError, match="backward called before forward"):
        clone.backward(gpuarray.to_gpu(np.zeros((4, 3, 5, 5), np.float32)))

    # NOTE: the copy trains on its own: the original's statistics do not move
    mean = bn.mean.get()
    clone(gpuarray.to_gpu(x + 5))
    assert clone.numOfProps == 2 and bn.numOfProps == 1 and np.array_equal(bn.mean.get(), mean)
    assert clone.skipCounts.ptr != bn.skipCounts.ptr

    # NOTE: the copy's guard watches its own counts: a non-finite batch is counted and warned of there alone
    x[0, 1] = np.nan
    with pytest.warns(RuntimeWarning, match="non-finite mean or variance in 1 of 3 maps"):
        for _ in range(3):
            clone(gpuarray.to_gpu(x))
    assert clone.skippedUpdates == 3 and bn.skippedUpdates == 0


def test_deepcopy_of_sequential_and_synchronized_module():
    net = chainOf(Linear(3, 2), SyncBatchNorm(2, comm=MPI.COMM_SELF))
    clone = copy.deepcopy(net)
    assert clone[1].comm is net[1].comm and clone[1].exchange is net[1].exchange
    assert clone[0].W.ptr != net[0].W.ptr and clone.names == net.names
    x = np.random.randn(4, 3).astype(np.float32)
    np.testing.assert_allclose(clone(gpuarray.to_gpu(x)).get(), net(gpuarray.to_gpu(x)).get(), atol=1e-6)
