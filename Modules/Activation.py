"""Activation: elementwise nonlinearities (sigmoid, relu, tanh, leakyRelu, elu)."""

import numpy as np

from PuzzleLib.Backend import Checks, ElementWise, gpuarray
from PuzzleLib.Modules.Module import Module

sigmoid = "sigmoid"
relu = "relu"
tanh = "tanh"
leakyRelu = "leakyRelu"
elu = "elu"


class Activation(Module):
    """Elementwise nonlinearity, ``out = f(data)``, as PuzzleLib's Activation module.

    ``sigmoid``: f(x) = 1 / (1 + exp(-x)), f' = y * (1 - y); ``relu``: f(x) = max(x, 0), f' = (y > 0); ``tanh``:
    f' = 1 - y**2; ``leakyRelu``: f(x) = x, or slope * x below 0, f' = 1, or slope where y <= 0; ``elu`` (Clevert et al.
    2015, arXiv 1511.07289, slope is its alpha): f(x) = x, or slope * (exp(x) - 1) below 0, f' = 1, or y + slope where
    y <= 0. The derivative is taken from the output y, so an in-place forward loses nothing backward needs. The
    formulas are those of the batch norm's fused activations (``BatchNorm(..., activation=...)``).

    Args:
        activation (str): ``"sigmoid"``, ``"relu"``, ``"tanh"``, ``"leakyRelu"`` or ``"elu"`` (also the constants of
            this file: ``from PuzzleLib.Modules.Activation import sigmoid``).
        inplace (bool): write the output over the input and, in backward, the input's gradient over the output's
            (no new memory; the overwritten arrays belong to the neighbouring modules). Default False.
        name (str or None): the module's name.
        slope (float or None): keyword only: leakyRelu's negative slope (default 0.01) or elu's alpha (default 1.0),
            a finite number >= 0; the other kinds take none. Kept as ``slope`` (a float; None for those kinds).

    Shape:
        data and output: any shape, dtype = calctype (float32 by default).

    Raises:
        ValueError: at construction, for an unknown activation or a bad slope.
        ModuleError: on forward, for data of another dtype; on `calcMode`, for a dtype the backend cannot compute in.

    Example:
        >>> act = Activation(sigmoid)
        >>> y = act(gpuarray.to_gpu(np.random.randn(60, 100).astype(np.float32)))
    """

    def __init__(self, activation, inplace=False, name=None, *, slope=None):
        try:
            slope = ElementWise.checkActivation(activation, slope)
        except ValueError as e:
            raise ValueError("Activation: %s" % e) from None
        super().__init__(name)
        self.activation, self.inplace = activation, inplace
        self.slope = Checks.slopeArgument(activation, slope)

    # NOTE: the derivative is taken from the output; the input is not read again
    gradUsesOutData = True
    gradUsesInData = False

    @property
    def overwritesInput(self):
        return self.inplace

    def calcTypes(self):
        """float32 everywhere, float64 on the CPU backend (`Backend.ElementWise.dataTypes`)."""
        return ElementWise.dataTypes(self.backend)

    def dataShapeFrom(self, shape):
        return tuple(shape)

    def updateData(self, data):
        return ElementWise.activation(data, self.activation, out=data if self.inplace else None, slope=self.slope)

    def updateGrad(self, grad):
        return ElementWise.activationBackward(
            grad, self.data, self.activation, out=grad if self.inplace else None, slope=self.slope
        )

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        pass


def unittest():
    np.random.seed(0)
    hostData = np.random.randn(3, 7).astype(np.float32) * 4
    hostGrad = np.random.randn(3, 7).astype(np.float32)
    x, g = hostData.astype(np.float64), hostGrad.astype(np.float64)

    references = {
        sigmoid: (1.0 / (1.0 + np.exp(-x)), lambda y: g * y * (1 - y)),
        relu: (np.where(x > 0, x, 0.0), lambda y: g * (x > 0)),
        tanh: (np.tanh(x), lambda y: g * (1 - y**2)),
        leakyRelu: (np.where(x > 0, x, 0.01 * x), lambda y: g * np.where(x > 0, 1.0, 0.01)),
        elu: (np.where(x > 0, x, np.expm1(np.minimum(x, 0))), lambda y: g * np.where(x > 0, 1.0, np.exp(x))),
    }
    for name, (ref, refGrad) in references.items():
        for inplace in (False, True):
            act = Activation(name, inplace=inplace)
            data = gpuarray.to_gpu(hostData)
            out = act(data)
            assert np.allclose(out.get(), ref, atol=1e-6), name
            assert (out.ptr == data.ptr) == inplace

            grad = gpuarray.to_gpu(hostGrad)
            ingrad = act.backward(grad)
            assert np.allclose(ingrad.get(), refGrad(ref), atol=1e-6), name
            assert (ingrad.ptr == grad.ptr) == inplace


if __name__ == "__main__":
    unittest()
