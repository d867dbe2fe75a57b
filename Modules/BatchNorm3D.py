"""BatchNorm3D: batch normalization of 3D maps, (batch, maps, depth, height, width)."""

from PuzzleLib.Modules.BatchNormND import BatchNormND


class BatchNorm3D(BatchNormND):
    """`BatchNormND` with nd = 3: each map is normalized over the batch and its 3 spatial axes.

    Args:
        maps (int): number of maps.
        axis (int): the maps' axis: 1 (default, channels first) or -1 (channels last, e.g. NDHWC volumes);
            the other arguments as in `BatchNormND`, its keyword-only options (skipNonFinite, renorm, renormClipping,
            renormMomentum, virtualBatch) included; an unknown keyword is a TypeError.

    Shape:
        data and output: (batch, maps, depth, height, width), or (batch, depth, height, width, maps) with ``axis=-1``;
        scale, bias, mean, var: (1, maps, 1, 1, 1), or (1, 1, 1, 1, maps) with ``axis=-1``; float32.
    """

    spatialText = "depth, height, width"

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
        super().__init__(3, maps, epsilon, initFactor, minFactor, sscale, affine, name, empty, inplace, axis, **options)


def unittest():
    from PuzzleLib.TestLib.Reference import checkModule

    checkModule(BatchNorm3D(4), (3, 4, 6, 5, 2), seed=3)


if __name__ == "__main__":
    unittest()
