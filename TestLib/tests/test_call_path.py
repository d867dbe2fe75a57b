"""A module call reaches its C kernel in a few frames (the CPU backend's C kernels): a default training forward in at
most 5, an evaluation forward in 4, a backward in 5, the deepest feature combination (Batch Renormalization in ghost
batches) in 7; the test fails when a chain grows past its bound."""

import numpy as np
import pytest

from PuzzleLib import Config
from PuzzleLib.Backend.Cpu import BatchNormKernels, GPUArray
from PuzzleLib.Modules import BatchNorm, BatchNorm2D
from PuzzleLib.TestLib.CallPath import chainOf, recordedKernels

pytestmark = pytest.mark.backendIndependent


@pytest.fixture
def chains():
    problem = BatchNormKernels.cProblem()
    if problem is not None:
        pytest.skip("the C kernels cannot be built here: %s" % problem)
    with Config.useBackend("cpu"), Config.useCpuKernels("c"), recordedKernels() as recorded:
        yield recorded


def arrays(*shape):
    rng = np.random.default_rng(0)
    return GPUArray.to_gpu(rng.normal(size=shape).astype(np.float32)), GPUArray.to_gpu(
        rng.normal(size=shape).astype(np.float32))


@pytest.mark.parametrize("make, shape", [(lambda: BatchNorm(64), (16, 64)), (lambda: BatchNorm2D(8), (4, 8, 5, 5))],
                         ids=["per_activation", "spatial"])
def test_default_calls_reach_the_kernel_in_few_frames(chains, make, shape):
    x, dy = arrays(*shape)
    bn = make()
    bn(x)
    train, backward = chainOf(lambda: bn(x), chains), chainOf(lambda: bn.backward(dy), chains)
    bn.evalMode()
    evaluation = chainOf(lambda: bn(x), chains)
    frozen = chainOf(lambda: bn.backward(dy, updParamGrads=False), chains)

    assert train[0] == "Module.py:Module.__call__" and train[-1] == "CBatchNorm.py:CPlan.trainForward", train
    assert len(train) <= 5, train
    assert len(evaluation) <= 4, evaluation
    assert len(backward) <= 5, backward
    assert len(frozen) <= 5, frozen


def test_the_deepest_feature_combination_reaches_the_kernel_in_seven_frames(chains):
    x, dy = arrays(8, 4, 3, 3)
    bn = BatchNorm2D(4, renorm=True, virtualBatch=4)
    forward = chainOf(lambda: bn(x), chains)
    backward = chainOf(lambda: bn.backward(dy), chains)
    assert "GhostBatches.py:GhostBatches.train" in forward and len(forward) <= 7, forward
    assert "RenormTraining.py:RenormTraining.backward" in backward and len(backward) <= 7, backward
