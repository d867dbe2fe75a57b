"""Backend.ElementWise on CUDA (``Kernels/ElementWise.cu``) against float64 numpy. Runs only on the CUDA backend;
skips with the reason elsewhere."""

import numpy as np
import pytest

from PuzzleLib import Config

if Config.backend != Config.Backend.cuda:
    pytest.skip("the CUDA backend is not in use here (no GPU or pycuda)", allow_module_level=True)

from PuzzleLib.Backend import ElementWise, gpuarray  # noqa: E402


@pytest.mark.parametrize("act", ["sigmoid", "relu", "tanh"])
@pytest.mark.parametrize("inplace", [False, True])
def test_activations(act, inplace):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((300, 257)) * 5).astype(np.float32)
    g = rng.standard_normal(x.shape).astype(np.float32)
    xd, gd = x.astype(np.float64), g.astype(np.float64)
    y = {"sigmoid": 1 / (1 + np.exp(-xd)), "relu": np.maximum(xd, 0), "tanh": np.tanh(xd)}[act]
    dx = {"sigmoid": gd * y * (1 - y), "relu": gd * (xd > 0), "tanh": gd * (1 - y**2)}[act]

    data, grad = gpuarray.to_gpu(x), gpuarray.to_gpu(g)
    out = ElementWise.activation(data, act, out=data if inplace else None)
    assert np.allclose(out.get(), y, atol=1e-6, rtol=1e-5)
    ingrad = ElementWise.activationBackward(grad, out, act, out=grad if inplace else None)
    assert np.allclose(ingrad.get(), dx, atol=1e-5, rtol=1e-4)


def test_add_vector_to_rows():
    rng = np.random.default_rng(1)
    x, v = rng.standard_normal((129, 333)).astype(np.float32), rng.standard_normal(333).astype(np.float32)
    out = ElementWise.addVectorToRows(gpuarray.to_gpu(x), gpuarray.to_gpu(v))
    assert np.allclose(out.get(), x.astype(np.float64) + v, atol=1e-6)


@pytest.mark.parametrize("classes", [3, 10, 32, 1000])
def test_softmax_cross_entropy(classes):
    rng = np.random.default_rng(classes)
    s = (rng.standard_normal((77, classes)) * 20 + 500).astype(np.float32)
    labels = rng.integers(0, classes, size=77).astype(np.int32)
    grad, lossSum, correct = ElementWise.softmaxCrossEntropy(gpuarray.to_gpu(s), gpuarray.to_gpu(labels))

    sd = s.astype(np.float64)
    e = np.exp(sd - sd.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    assert abs(lossSum - np.sum(-np.log(p[np.arange(77), labels]))) < 1e-3 * max(1.0, lossSum)
    assert np.allclose(grad.get(), (np.eye(classes)[labels] - p) / 77, atol=1e-6)
    assert correct == int(np.sum(sd.argmax(axis=1) == labels))

    bad = labels.copy()
    bad[5] = classes
    with pytest.raises(ValueError, match="1 of 77"):
        ElementWise.softmaxCrossEntropy(gpuarray.to_gpu(s), gpuarray.to_gpu(bad))
