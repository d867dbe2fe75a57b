"""BatchNorm1D: batch normalization of 1D maps, (batch, maps, length)."""

from PuzzleLib.Modules.BatchNormND import BatchNormND


class BatchNorm1D(BatchNormND):
    """`BatchNormND` with nd = 1: each map is normalized over the batch and its 1 spatial axes.

    Args:
        maps (int): number of maps.
        axis (int): the maps' axis: 1 (default, channels first) or -1 (channels last, e.g. sequence data
            (batch, time, features) normalized over batch and time, Theano's axes (0, 1));
            the other arguments as in `BatchNormND`, its keyword-only options (skipNonFinite, renorm, renormClipping,
            renormMomentum, virtualBatch) included; an unknown keyword is a TypeError.

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
        **options,
    ):
        # NOTE: the keyword-only options (skipNonFinite, renorm, virtualBatch, ...) are BatchNormND's, checked there
        super().__init__(1, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace, axis, **options)


def unittest():
    from PuzzleLib.TestLib.Reference import checkModule

    checkModule(BatchNorm1D(4), (3, 4, 6), seed=1)


if __name__ == "__main__":
    unittest()
