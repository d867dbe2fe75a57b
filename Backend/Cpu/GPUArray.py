"""GPUArray of the CPU backend: a numpy view onto a block of the memory pool.

It has exactly the interface of the CUDA backend's array (SPEC section 2), so module code runs unchanged on both.
"""

import numpy as np

from PuzzleLib.Backend.MemoryPool import MemoryPool, NumpyAllocator

memoryPool = MemoryPool(NumpyAllocator())


def normalizeShape(shape):
    """Accepts ``(2, 3)``, ``[2, 3]``, ``2`` or numpy ints and returns a tuple of Python ints."""
    if isinstance(shape, (int, np.integer)):
        shape = (shape,)
    return tuple(int(dim) for dim in shape)


class GPUArray:
    """C-contiguous array in pool memory.

    Attributes:
        shape (tuple of int), dtype (numpy.dtype), size (elements), nbytes (bytes), ndim, strides (bytes per step),
        ptr (int): address of the first element, stable for the array's life.

    Views (`reshape`, `ravel`, first-axis slices) share the memory and keep its block alive.
    """

    __array_priority__ = -1

    def __init__(self, ndarray, block):
        self._ndarray = ndarray
        self._block = block

    @property
    def shape(self):
        return self._ndarray.shape

    @property
    def dtype(self):
        return self._ndarray.dtype

    @property
    def size(self):
        return self._ndarray.size

    @property
    def nbytes(self):
        return self._ndarray.nbytes

    @property
    def ndim(self):
        return self._ndarray.ndim

    @property
    def strides(self):
        return self._ndarray.strides

    @property
    def ptr(self):
        return self._ndarray.ctypes.data

    def __len__(self):
        return self.shape[0]

    def get(self):
        """Returns a new host ndarray with the contents."""
        return self._ndarray.copy()

    def set(self, ary):
        """Copies a host ndarray of the same shape and dtype into this array.

        Raises:
            ValueError: on a shape or dtype mismatch (nothing is copied, nothing is cast).
        """
        ary = np.asarray(ary)
        if ary.shape != self.shape or ary.dtype != self.dtype:
            raise ValueError(
                "GPUArray.set expects an array of shape %s and dtype %s; got shape %s and dtype %s"
                % (self.shape, self.dtype, ary.shape, ary.dtype)
            )
        np.copyto(self._ndarray, ary)
        return self

    def fill(self, value):
        """Sets every element to `value`; returns self."""
        self._ndarray.fill(value)
        return self

    def copy(self):
        """Returns a new array (a new pool block) with the same contents."""
        out = empty(self.shape, self.dtype)
        np.copyto(out._ndarray, self._ndarray)
        return out

    def reshape(self, *shape):
        """Returns a view of another shape (one dimension may be -1).

        Raises:
            ValueError: when the sizes differ.
        """
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = normalizeShape(shape)
        try:
            view = self._ndarray.reshape(shape)
        except ValueError:
            raise ValueError(
                "cannot reshape GPUArray of shape %s (size %d) to %s" % (self.shape, self.size, shape)
            ) from None
        return GPUArray(view, self._block)

    def ravel(self):
        """Returns a one-dimensional view."""
        return GPUArray(self._ndarray.reshape(self.size), self._block)

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)) and self.ndim > 0:
            index = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= index < self.shape[0]:
                raise IndexError("index %d is out of range for axis 0 of size %d" % (key, self.shape[0]))
            return GPUArray(self._ndarray[index], self._block)

        if isinstance(key, slice) and key.step in (None, 1) and self.ndim > 0:
            return GPUArray(self._ndarray[key], self._block)

        raise IndexError(
            "GPUArray supports only contiguous slices of the first axis (a[i:j]) and a[i]; got %r" % (key,)
        )

    def __str__(self):
        return str(self._ndarray)

    def __repr__(self):
        return "GPUArray(%s, dtype=%s)" % (
            np.array2string(self._ndarray, separator=", ", prefix="GPUArray("),
            self.dtype,
        )


def hostView(ary):
    """Backend-internal: the numpy view of a CPU GPUArray, for the CPU kernels. Not part of the public interface."""
    if not isinstance(ary, GPUArray):
        raise TypeError("expected a PuzzleLib GPUArray; got %s" % type(ary).__name__)
    return ary._ndarray


def empty(shape, dtype=np.float32):
    """Returns an uninitialized array of `shape` and `dtype` from the memory pool."""
    shape, dtype = normalizeShape(shape), np.dtype(dtype)
    if any(dim < 0 for dim in shape):
        raise ValueError("GPUArray dimensions must be non-negative; got shape %s" % (shape,))

    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    block = memoryPool.allocate(nbytes)
    return GPUArray(block.raw[:nbytes].view(dtype).reshape(shape), block)


def zeros(shape, dtype=np.float32):
    """Returns an array of zeros of `shape` and `dtype` from the memory pool."""
    return empty(shape, dtype).fill(0)


def to_gpu(ary):
    """Copies a host array (any layout) into a new C-contiguous GPUArray of the same shape and dtype."""
    ary = np.asarray(ary)
    out = empty(ary.shape, ary.dtype)
    np.copyto(out._ndarray, ary)
    return out
