"""Two backends in one process: mixing their arrays in one call is a clear error, and, where both the CPU and the CUDA
backend run, both give the same numbers on the same data.

The mixing errors are checked everywhere against a stand-in second backend: the CPU modules under another name
(`foreign`), so the front modules see two distinct backends without a GPU.
"""

import numpy as np
import pytest

from PuzzleLib import Config
from PuzzleLib.Backend import Blas, Dnn, ElementWise, Permute, gpuarray
from PuzzleLib.Backend.Contract import Backend
from PuzzleLib.Backend.Cpu import GPUArray as CpuArrays
from PuzzleLib.Containers import Sequential
from PuzzleLib.Cost import CrossEntropy
from PuzzleLib.Modules import Activation, BatchNorm, BatchNorm2D, Linear, ModuleError
from PuzzleLib.TestLib import Backends

pytestmark = pytest.mark.backendIndependent


class ForeignArray(CpuArrays.GPUArray):
    """A CPU array that claims another backend, as an array of a second backend would."""

    backend = Backend(name="foreign", **{field: None for field in ("gpuarray", "batchNorm", "blas", "elementWise",
                                                                     "permute")})


def foreign(host):
    ary = CpuArrays.to_gpu(np.asarray(host))
    return ForeignArray(ary._ndarray, ary._block)


@pytest.fixture
def cpu():
    with Config.useBackend("cpu"):
        yield


def test_front_modules_refuse_arrays_of_two_backends(cpu):
    x = gpuarray.to_gpu(np.ones((4, 3), np.float32))
    params = [gpuarray.to_gpu(np.ones((1, 3, 1, 1), np.float32)) for _ in range(4)]
    other = foreign(np.ones((1, 3, 1, 1), np.float32))

    with pytest.raises(TypeError, match="data is a cpu array but bias is a foreign array"):
        Dnn.batchNormNd(x.reshape(4, 3, 1, 1), params[0], other, params[2], params[3], mode="perActivation")
    with pytest.raises(TypeError, match="x is a cpu array but y is a foreign array"):
        Blas.addVectorToVector(x, foreign(np.ones((4, 3), np.float32)))
    with pytest.raises(TypeError, match="A is a cpu array but B is a foreign array"):
        Blas.gemm(x, foreign(np.ones((3, 2), np.float32)))
    with pytest.raises(TypeError, match="grad is a cpu array but outdata is a foreign array"):
        ElementWise.activationBackward(x, foreign(np.ones((4, 3), np.float32)), "relu")
    with pytest.raises(TypeError, match="src is a cpu array but out is a foreign array"):
        Permute.permute(x, (1, 0), out=foreign(np.ones((3, 4), np.float32)))
    with pytest.raises(TypeError, match="inputs is a cpu array but gamma is a foreign array"):
        Dnn.batchNormTrain(x, foreign(np.ones(3, np.float32)), params[1].reshape(3))


def test_modules_refuse_data_of_another_backend_and_change_nothing(cpu):
    bn = BatchNorm(3)
    with pytest.raises(ModuleError, match="its parameters on the cpu backend; got data as a foreign array"):
        bn(foreign(np.ones((4, 3), np.float32)))
    assert bn.numOfProps == 0 and bn.data is None

    bn(gpuarray.to_gpu(np.random.randn(4, 3).astype(np.float32)))
    with pytest.raises(ModuleError, match="got grad as a foreign array"):
        bn.backward(foreign(np.ones((4, 3), np.float32)))

    net = Sequential()
    net.append(Linear(3, 2))
    with pytest.raises(ModuleError, match="foreign"):
        net(foreign(np.ones((4, 3), np.float32)))
    with pytest.raises(ModuleError, match="scores and labels on one backend"):
        CrossEntropy()(gpuarray.to_gpu(np.zeros((2, 3), np.float32)), foreign(np.zeros(2, np.int32)))


def test_a_module_without_arrays_takes_data_of_any_backend(cpu):
    act = Activation("relu")
    assert act.backend is None
    out = act(gpuarray.to_gpu(np.array([[-1.0, 2.0]], np.float32)))
    np.testing.assert_array_equal(out.get(), [[0.0, 2.0]])


# CPU against CUDA on the same data ------------------------------------------------------------------------------------

both = pytest.mark.skipif(
    not {"cpu", "cuda"} <= set(Backends.available()),
    reason="needs both backends here: %s" % (Backends.problem("cuda") or "cuda runs"),
)


def onBackend(name, run, *hostArrays):
    """Runs ``run(*arrays)`` on the host arrays copied to backend `name`; returns every GPUArray result on the host."""
    with Config.useBackend(name):
        results = run(*(gpuarray.to_gpu(host) for host in hostArrays))
        results = results if isinstance(results, tuple) else (results,)
        return [r.get() if isinstance(r, gpuarray.GPUArray) else r for r in results]


def moduleSteps(make):
    """Training forward, backward and evaluation forward of a fresh module (seeded), as host arrays."""

    def run(data, dy):
        np.random.seed(3)
        module = make()
        out = module(data).get()
        ingrad = module.backward(dy).get()
        scalegrad = module.vars["scale"].grad.get()
        module.evalMode()
        return out, ingrad, scalegrad, module.mean, module.var, module(data)

    return run


CROSS_CASES = {
    "per_activation": (lambda: BatchNorm(33), (256, 33)),
    "spatial": (lambda: BatchNorm2D(8), (16, 8, 12, 12)),
    "channels_last": (lambda: BatchNorm2D(5, axis=-1), (8, 6, 7, 5)),
}


@both
@pytest.mark.parametrize("name", sorted(CROSS_CASES))
def test_modules_agree_across_backends(name):
    make, shape = CROSS_CASES[name]
    rng = np.random.default_rng(21)
    x = rng.normal(2.0, 3.0, size=shape).astype(np.float32)
    grad = rng.normal(size=shape).astype(np.float32)

    cpu = onBackend("cpu", moduleSteps(make), x, grad)
    cuda = onBackend("cuda", moduleSteps(make), x, grad)
    for a, b in zip(cpu, cuda, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4, err_msg=name)


@both
def test_functional_api_and_operations_agree_across_backends():
    rng = np.random.default_rng(22)
    x = rng.normal(1.0, 2.0, size=(4, 3, 5, 6)).astype(np.float32)
    gamma, beta = rng.normal(1.0, 0.2, size=(3, 6)).astype(np.float32), np.zeros((3, 6), np.float32)
    A, B = rng.normal(size=(40, 30)).astype(np.float32), rng.normal(size=(30, 20)).astype(np.float32)
    labels = rng.integers(0, 20, size=40).astype(np.int32)

    cases = [
        (lambda x, g, b: Dnn.batchNormTrain(x, g, b, axes=(0, 2)), (x, gamma, beta)),
        (lambda A, B: Blas.gemm(A, B, transpB=False), (A, B)),
        (lambda s, lab: ElementWise.softmaxCrossEntropy(s, lab), (A @ B, labels)),
        (lambda x: Permute.permute(x, (3, 1, 0, 2)), (x,)),
    ]
    for run, hosts in cases:
        for a, b in zip(onBackend("cpu", run, *hosts), onBackend("cuda", run, *hosts), strict=True):
            np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
