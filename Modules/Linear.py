"""Linear: a fully connected layer, out = data @ W + b."""

import math

import numpy as np

from PuzzleLib.Backend import Blas, ElementWise, gpuarray
from PuzzleLib.Modules.Arguments import checkBool, checkNumber, checkPositiveInt
from PuzzleLib.Modules.Module import Module, ModuleError
from PuzzleLib.Modules.Variable import Variable

initSchemes = ("xavier", "he", "gaussian", "uniform")


class Linear(Module):
    """Fully connected layer: ``out = data @ W + b`` (PuzzleLib's layout: W is (insize, outsize)).

    Backward, with g the gradient of the output: ``grad = g @ W.T``, ``dW = data.T @ g``, ``db = sum of g's rows``,
    accumulated as ``var.grad = scale * d + momentum * var.grad``. All products go through `Backend.Blas.gemm`.

    Initialisation draws from numpy's global generator (``np.random.seed`` makes it repeatable); `wscale` multiplies:

    - ``"xavier"`` (default): uniform in +-sqrt(6 / (insize + outsize)) (Glorot & Bengio 2010);
    - ``"he"``: normal with std sqrt(2 / insize) (He et al. 2015, arXiv 1502.01852);
    - ``"gaussian"``: normal with std 1 (so `wscale` is the std);
    - ``"uniform"``: uniform in +-1 (so `wscale` is the bound).

    Args:
        insize (int): input features.
        outsize (int): output features.
        wscale (float): >= 0, multiplies the initial weights. Default 1.0.
        useBias (bool): add the trainable bias b (initially 0). Default True.
        initscheme (str or None): one of ``"xavier"``, ``"he"``, ``"gaussian"``, ``"uniform"``; None means xavier.
        name (str or None): the module's name (prefix of its saved entries).
        empty (bool): create no parameters (W and b are None) for a later `load`.

    Attributes:
        W (GPUArray): (insize, outsize) weights; b (GPUArray): (outsize,) bias, when `useBias`. Both in ``vars`` and of
        the calc type (float32 by default; `calcMode(np.float64)` on the CPU backend converts them, for gradient
        checks).

    Shape:
        data: (batch, insize); output: (batch, outsize).

    Raises:
        ValueError: at construction, for a bad size, wscale, initscheme or name.
        ModuleError: on forward, for data that is not 2D, has another feature count or dtype, or a module created
            empty; the module is left as it was.

    Example:
        >>> fc = Linear(64, 100, initscheme="gaussian", wscale=0.1)
        >>> out = fc(gpuarray.to_gpu(np.random.randn(60, 64).astype(np.float32)))     # (60, 100)
    """

    def __init__(self, insize, outsize, wscale=1.0, useBias=True, initscheme=None, name=None, empty=False):
        owner = type(self).__name__
        checkPositiveInt(owner, "insize", insize)
        checkPositiveInt(owner, "outsize", outsize)
        checkNumber(owner, "wscale", wscale, "a finite number >= 0", lambda v: math.isfinite(v) and v >= 0)
        checkBool(owner, "useBias", useBias)
        initscheme = "xavier" if initscheme is None else initscheme
        if initscheme not in initSchemes:
            raise ValueError("%s: initscheme must be one of %s; got %r" % (owner, ", ".join(initSchemes), initscheme))

        super().__init__(name)
        self.insize, self.outsize = int(insize), int(outsize)
        self.wscale, self.useBias, self.initscheme = wscale, useBias, initscheme

        self.W, self.b = None, None
        if not empty:
            self.initParams()

    def initParams(self):
        shape = (self.insize, self.outsize)
        if self.initscheme == "xavier":
            bound = np.sqrt(6.0 / (self.insize + self.outsize))
            W = np.random.uniform(-bound, bound, size=shape)
        elif self.initscheme == "he":
            W = np.random.normal(0.0, np.sqrt(2.0 / self.insize), size=shape)
        elif self.initscheme == "gaussian":
            W = np.random.normal(0.0, 1.0, size=shape)
        else:
            W = np.random.uniform(-1.0, 1.0, size=shape)

        self.setVar("W", Variable(gpuarray.to_gpu((W * self.wscale).astype(self.calctype)), name="W"))
        if self.useBias:
            self.setVar("b", Variable(gpuarray.zeros((self.outsize,), self.calctype), name="b"))

    def setUseBias(self, useBias):
        """Adds the bias b, zero (True), or removes it (False), in place; nothing changes when `useBias` is the present
        setting. A BatchNorm after the layer makes its bias redundant (`Passes.batchNorm` removes it) and a BatchNorm
        folded into the layer needs one (`Passes.foldBatchNorm` adds it). Optimizers set up before hold the old
        parameters: call their `setupOn` again.

        Raises:
            ValueError: for a `useBias` that is not a bool (nothing changes).
        """
        checkBool(type(self).__name__, "useBias", useBias)
        if bool(useBias) == self.useBias:
            return
        self.useBias = bool(useBias)
        if not self.useBias:
            self.vars.pop("b", None)
            self.b = None
        elif self.W is not None:
            self.setVar("b", Variable(self.W.backend.gpuarray.zeros((self.outsize,), self.calctype), name="b"))
        self.reset()

    def paramSpecs(self):
        specs = {"W": ("params", (self.insize, self.outsize))}
        if self.useBias:
            specs["b"] = ("params", (self.outsize,))
        return specs

    # --- calc type and persistence

    def calcTypes(self):
        """float32 everywhere, float64 on the CPU backend (`Backend.ElementWise.dataTypes`)."""
        return ElementWise.dataTypes(self.backend)

    def calcMode(self, T):
        """Sets the data type of data, gradients and of W and b (converted, values kept; gradients zeroed).

        Optimizers set up before hold the old arrays: call their `setupOn` again.

        Raises:
            ModuleError: when the backend cannot compute in `T` (float32 everywhere, float64 on the CPU backend).
        """
        dtype = self.checkCalcType(T)
        for name, var in list(self.vars.items()):
            if var.dtype != dtype:
                # NOTE: a rare, explicit conversion; going through the host keeps the backends free of cast kernels
                converted = var.data.backend.gpuarray.to_gpu(var.data.get().astype(dtype))
                self.setVar(name, Variable(converted, name=name))
        self.calctype = dtype
        self.reset()

    def saveEntries(self, name):
        # NOTE: files always hold float32 (PuzzleLib's layout), whatever the calc type
        for group, key, value in super().saveEntries(name):
            yield group, key, value.astype(np.float32)

    def makeSetter(self, group, entry, value):
        return super().makeSetter(group, entry, value.astype(self.calctype))

    # --- shapes

    def checkDataShape(self, shape):
        if len(shape) != 2:
            raise ModuleError("%s expects 2D data (batch, insize); got shape %s" % (self.describe(), shape))
        if shape[1] != self.insize:
            raise ModuleError("%s: data has %d features (expected: %d)" % (self.describe(), shape[1], self.insize))

    def dataShapeFrom(self, shape):
        """The output shape for data of `shape` (checked)."""
        self.checkDataShape(shape)
        return (shape[0], self.outsize)

    # --- forward and backward

    def checkReady(self):
        if self.W is None:
            raise ModuleError("%s is empty: set or load its parameters before calling it" % self.describe())

    def updateData(self, data):
        out = Blas.gemm(data, self.W)
        if self.useBias:
            ElementWise.addVectorToRows(out, self.b, out=out)
        return out

    def updateGrad(self, grad):
        return Blas.gemm(grad, self.W, transpB=True)

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        # NOTE: gemm's alpha and beta are exactly the accumulation rule, so no temporary is made
        W = self.vars["W"]
        Blas.gemm(self.inData, grad, out=W.grad, transpA=True, alpha=scale, beta=momentum)
        if self.useBias:
            b = self.vars["b"]
            Blas.sumOnMatrix(grad, out=b.grad, cols=True, alpha=scale, beta=momentum)


def unittest():
    np.random.seed(0)
    fc = Linear(5, 3, initscheme="gaussian", wscale=0.5)
    fc.vars["b"].data.set(np.random.randn(3).astype(np.float32))

    hostData = np.random.randn(4, 5).astype(np.float32)
    out = fc(gpuarray.to_gpu(hostData)).get()
    W, b = fc.W.get().astype(np.float64), fc.b.get().astype(np.float64)
    assert np.allclose(out, hostData.astype(np.float64) @ W + b, atol=1e-5)

    hostGrad = np.random.randn(4, 3).astype(np.float32)
    fc.backward(gpuarray.to_gpu(hostGrad), scale=2.0)
    assert np.allclose(fc.grad.get(), hostGrad.astype(np.float64) @ W.T, atol=1e-5)
    assert np.allclose(fc.vars["W"].grad.get(), 2.0 * hostData.T.astype(np.float64) @ hostGrad, atol=1e-5)
    assert np.allclose(fc.vars["b"].grad.get(), 2.0 * hostGrad.astype(np.float64).sum(axis=0), atol=1e-5)

    try:
        fc(gpuarray.to_gpu(np.zeros((4, 6), dtype=np.float32)))
    except ModuleError as e:
        assert "expected: 5" in str(e)
    else:
        raise AssertionError("Linear accepted data of 6 features")


if __name__ == "__main__":
    unittest()
