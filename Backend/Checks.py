"""Argument checks shared by the backend-independent facades (`Backend.Dnn`, `Backend.ElementWise`)."""

from PuzzleLib.Backend import gpuarray


def checkArray(name, ary, dtypes=None, shape=None):
    """Raises TypeError unless `ary` is a GPUArray of the backend in use, ValueError unless its dtype is one of
    `dtypes` and its shape is `shape` (each when given); the messages name what was expected and what came."""
    if not isinstance(ary, gpuarray.GPUArray):
        raise TypeError("%s must be a GPUArray of the backend in use; got %s" % (name, type(ary).__name__))
    if dtypes is not None and ary.dtype not in dtypes:
        raise ValueError("%s must have dtype %s; got %s" % (name, " or ".join(str(d) for d in dtypes), ary.dtype))
    if shape is not None and ary.shape != tuple(shape):
        raise ValueError("%s must have shape %s; got %s" % (name, tuple(shape), ary.shape))
