"""SGD: plain stochastic gradient descent."""

import numpy as np

from PuzzleLib.Backend import Blas
from PuzzleLib.Optimizers.Optimizer import Optimizer


class SGD(Optimizer):
    """Stochastic gradient descent: ``param += learnRate * grad`` (Robbins & Monro 1951).

    `grad` is the negated gradient of the loss (PuzzleLib's sign convention), so the step descends.

    Args:
        learnRate (float): >= 0, the step size. Default 1e-3.

    Raises:
        ValueError, ModuleError: as `Optimizer`.

    Example:
        >>> optimizer = SGD(learnRate=0.1)
        >>> optimizer.setupOn(net)
        >>> net.backward(grad); optimizer.update()
    """

    def __init__(self, learnRate=1e-3):
        super().__init__(learnRate)

    def updateVar(self, var, state):
        Blas.toVectorAddVector(var.data, var.grad, alpha=self.learnRate)


def unittest():
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Modules.Linear import Linear

    np.random.seed(0)
    fc = Linear(3, 2)
    W = fc.W.get().astype(np.float64)
    fc.vars["W"].grad.set(np.ones((3, 2), dtype=np.float32))

    optimizer = SGD(0.5)
    optimizer.setupOn(fc)
    optimizer.update()
    assert np.allclose(fc.W.get(), W + 0.5, atol=1e-6)
    assert np.allclose(fc.b.get(), 0.0)
    assert isinstance(fc.W, gpuarray.GPUArray)


if __name__ == "__main__":
    unittest()
