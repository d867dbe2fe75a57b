"""BatchNorm: per-activation batch normalization of (batch, features) data, e.g. after a fully connected layer."""

import numpy as np

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Modules.BatchNormND import BatchNormND
from PuzzleLib.Modules.Module import ModuleError


class BatchNorm(BatchNormND):
    """Batch normalization of each feature over the batch (per-activation; Ioffe & Szegedy 2015, arXiv 1502.03167).

    Every rule of `BatchNormND` holds (factor schedule, unbiased running variance, evaluation and in-place
    evaluation, backward in both modes, persistence), with m = batch elements per feature. As in PuzzleLib, the
    parameters and statistics have shape (1, size, 1, 1).

    Args:
        size (int): number of features.
        axis (int): the features' axis, 1 or -1 (the same axis of 2D data; -1 is accepted for code written for
            TensorFlow/Keras, whose default it is). Stored as 1.
        epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace: as in `BatchNormND`.
        **options: `BatchNormND`'s keyword-only options (skipNonFinite, renorm, renormClipping, renormMomentum,
            virtualBatch); an unknown one is a TypeError.

    Shape:
        data and output: (batch, size); scale, bias, mean, var: (1, size, 1, 1), float32.

    Example:
        >>> data = gpuarray.to_gpu(np.arange(18).reshape(3, 6).astype(np.float32))
        >>> bn = BatchNorm(6)
        >>> bn(data)                  # bn.mean: 6 ... 11, bn.var: 36 (the unbiased variance of each column)
    """

    mapsArgument = "size"

    def __init__(
        self,
        size,
        epsilon=1e-5,
        initFactor=1.0,
        minFactor=0.1,
        sscale=0.01,
        affine=True,
        name=None,
        empty=False,
        inplace=False,
        axis=1,
        **options,
    ):
        if isinstance(axis, (bool, np.bool_)) or axis not in (1, -1):
            raise ValueError(
                "%s: axis must be 1 or -1 (the features of (batch, size) data); got %r" % (type(self).__name__, axis)
            )
        # NOTE: the keyword-only options (skipNonFinite, renorm, virtualBatch, ...) are BatchNormND's, checked there
        super().__init__(2, size, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace, **options)
        self.size = self.maps
        # NOTE: (batch, size) data, normalized over the batch; the parameters keep PuzzleLib's (1, size, 1, 1) shape
        self.normalizedAxes = (0,)

    def checkDataShape(self, shape):
        if len(shape) != 2:
            raise ModuleError("%s expects 2D data (batch, size); got shape %s" % (self.describe(), shape))
        if shape[1] != self.size:
            raise ModuleError("%s: data has %d features (expected: %d)" % (self.describe(), shape[1], self.size))
        if self.train:
            self.training.checkBatch(self, shape)

def unittest(make=BatchNorm):
    """The seed example's data through ``make(6)`` (BatchNorm, or a module that must compute the same), against the
    float64 reference."""
    from PuzzleLib.TestLib import Reference

    hostData = np.arange(18).reshape(3, 6).astype(np.float32)
    bn = make(6)
    out = bn(gpuarray.to_gpu(hostData)).get()
    assert bn.mean.shape == (1, 6, 1, 1)
    assert np.allclose(bn.mean.get().ravel(), hostData.astype(np.float64).mean(axis=0))
    assert np.allclose(bn.var.get().ravel(), hostData.astype(np.float64).var(axis=0, ddof=1))

    ref = Reference.batchNormTrain(
        hostData, bn.scale.get().reshape(1, 6), bn.bias.get().reshape(1, 6), (0,), bn.epsilon
    )
    assert np.allclose(out, ref.out, atol=1e-5)

    np.random.seed(1)
    hostGrad = np.random.randn(3, 6).astype(np.float32)
    bn.backward(gpuarray.to_gpu(hostGrad))
    dx, dscale, dbias = Reference.batchNormBackward(hostData, hostGrad, bn.scale.get().reshape(1, 6), (0,), bn.epsilon)
    assert np.allclose(bn.grad.get(), dx, atol=1e-5)
    assert np.allclose(bn.vars["scale"].grad.get().ravel(), dscale.ravel(), atol=1e-5)
    assert np.allclose(bn.vars["bias"].grad.get().ravel(), dbias.ravel(), atol=1e-5)


if __name__ == "__main__":
    unittest()
