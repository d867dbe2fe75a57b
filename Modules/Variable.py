"""Variable: a trainable array and its gradient."""

import numpy as np

from PuzzleLib.Backend import gpuarray


class Variable:
    """A trainable parameter: `data` and its accumulated gradient `grad` (same shape, dtype and backend; zero at
    creation).

    Args:
        data (GPUArray): the parameter's values.
        name (str or None): for messages.
        withgrad (bool): allocate `grad`; False for constants.

    Raises:
        TypeError: when `data` is not a GPUArray.
    """

    def __init__(self, data, name=None, withgrad=True):
        if not isinstance(data, gpuarray.GPUArray):
            raise TypeError("Variable expects a GPUArray; got %s" % type(data).__name__)
        self.data, self.name = data, name
        self.grad = data.backend.gpuarray.zeros(data.shape, data.dtype) if withgrad else None

    @property
    def shape(self):
        return self.data.shape

    @property
    def dtype(self):
        return np.dtype(self.data.dtype)

    def __repr__(self):
        return "Variable(%s, shape=%s, dtype=%s)" % (self.name, self.shape, self.dtype)
