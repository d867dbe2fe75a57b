"""MomentumSGD: stochastic gradient descent with momentum."""

import numpy as np

from PuzzleLib.Backend import Blas
from PuzzleLib.Optimizers.Optimizer import Optimizer


class MomentumSGD(Optimizer):
    """SGD with momentum (Polyak 1964; Sutskever et al. 2013), PuzzleLib's rule, per parameter with velocity v::

        v     = momRate * v + learnRate * grad
        param = param + v

    `grad` is the negated gradient of the loss (PuzzleLib's sign convention), so the step descends. Each velocity is
    a pool array of the parameter's shape, dtype and backend, zero at `setupOn`.

    Args:
        learnRate (float): >= 0, the step size. Default 1e-3.
        momRate (float): in [0, 1), the weight of the previous velocity. Default 0.9.

    Raises:
        ValueError: for a learning rate < 0 or a momentum outside [0, 1); ModuleError: as `Optimizer`.

    Example:
        >>> optimizer = MomentumSGD(learnRate=0.1, momRate=0.9)
        >>> optimizer.setupOn(net)
        >>> net.backward(grad); optimizer.update()
    """

    def __init__(self, learnRate=1e-3, momRate=0.9):
        super().__init__(learnRate)
        self.checkRate("momRate", momRate)
        if not momRate < 1:
            raise ValueError("MomentumSGD: momRate must be in [0, 1); got %r" % (momRate,))
        self.momRate = momRate

    def setupState(self, var):
        return var.data.backend.gpuarray.zeros(var.shape, var.dtype)

    def updateVar(self, var, state):
        Blas.addVectorToVector(var.grad, state, out=state, alpha=self.learnRate, beta=self.momRate)
        Blas.toVectorAddVector(var.data, state)


def unittest():
    from PuzzleLib.Modules.Linear import Linear

    np.random.seed(0)
    fc = Linear(3, 2)
    W = fc.W.get().astype(np.float64)
    grads = [np.random.randn(3, 2) for _ in range(3)]

    optimizer = MomentumSGD(0.1, 0.9)
    optimizer.setupOn(fc)
    v = np.zeros((3, 2))
    for g in grads:
        fc.vars["W"].grad.set(g.astype(np.float32))
        optimizer.update()
        v = 0.9 * v + 0.1 * g.astype(np.float32)
        W = W + v
    assert np.allclose(fc.W.get(), W, atol=1e-5)


if __name__ == "__main__":
    unittest()
