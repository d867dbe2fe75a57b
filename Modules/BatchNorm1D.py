"""BatchNorm1D: batch normalization of 1D maps, (batch, maps, length)."""

import numpy as np

from PuzzleLib.Modules.BatchNormND import BatchNormND


class BatchNorm1D(BatchNormND):
    """`BatchNormND` with nd = 1: each map is normalized over the batch and its 1 spatial axes.

    Args:
        maps (int): number of maps.
        axis (int): the maps' axis: 1 (default, channels first) or -1 (channels last, e.g. sequence data
            (batch, time, features) normalized over batch and time, Theano's axes (0, 1));
            the other arguments as in `BatchNormND`.

    Shape:
        data and output: (batch, maps, length), or (batch, length, maps) with ``axis=-1``;
        scale, bias, mean, var: (1, maps, 1), or (1, 1, maps) with ``axis=-1``; float32.
    """

    spatialText = "length"

    def __init__(
        self,
        maps,
        epsilon=1e-5,
        initFactor=1.0,
        minFactor=0.1,
        sscale=0.01,
        affine=True,
        name=None,
        empty=False,
        inplace=False,
        axis=1,
    ):
        super().__init__(1, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace, axis)


def unittest():
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.TestLib import Reference

    np.random.seed(1)
    hostData = np.random.normal(-1.0, 2.0, size=(3, 4) + (6, 5, 2)[:1]).astype(np.float32)
    bn = BatchNorm1D(4)
    out = bn(gpuarray.to_gpu(hostData)).get()
    ref = Reference.batchNormTrain(hostData, bn.scale.get(), bn.bias.get(), Reference.spatialAxes(1 + 2), bn.epsilon)
    assert np.allclose(out, ref.out, atol=1e-5)
    assert np.allclose(bn.var.get(), ref.unbiasedVar, rtol=1e-5)


if __name__ == "__main__":
    unittest()
