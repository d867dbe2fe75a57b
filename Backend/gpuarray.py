"""Arrays in device memory: `GPUArray`, the constructors `to_gpu`, `empty`, `zeros`, and `memoryPool` (SPEC section 2).

`GPUArray` is the class both backends' arrays derive from (``isinstance(x, gpuarray.GPUArray)`` holds for either);
it implements the half of the interface that needs no device (shape checks, views, printing) over two hooks each
backend provides. Every array carries its backend (``x.backend``). The constructors create arrays on the backend that
`PuzzleLib.Config` picks (`Config.useBackend`, ``PUZZLELIB_BACKEND``); the first of them resolves ``"auto"``.
"""

import functools
import math

import numpy as np

from PuzzleLib.Backend import DLPack
from PuzzleLib.Backend.Dispatch import currentBackend

__all__ = ["GPUArray", "to_gpu", "empty", "zeros", "memoryPool", "from_dlpack"]


def isDimension(dim):
    return isinstance(dim, (int, np.integer)) and not isinstance(dim, (bool, np.bool_))


def normalizeShape(shape):
    """Accepts ``(2, 3)``, ``[2, 3]``, ``2`` or numpy ints and returns a tuple of Python ints.

    Raises:
        TypeError: for a dimension that is not an int (a float such as 2.5, a bool, a string), naming the shape.
    """
    # NOTE: the common case, a tuple of Python ints, returns at once (every array and view passes here)
    if type(shape) is tuple:
        for dim in shape:
            if type(dim) is not int:
                break
        else:
            return shape
    if isDimension(shape):
        return (int(shape),)
    try:
        dims = tuple(shape)
    except TypeError:
        raise TypeError("a GPUArray shape must be an int or a sequence of ints; got %r" % (shape,)) from None
    if not all(isDimension(dim) for dim in dims):
        bad = ", ".join(repr(dim) for dim in dims if not isDimension(dim))
        raise TypeError(
            "GPUArray dimensions must be ints (bools are refused too); got shape %r (not ints: %s)" % (shape, bad)
        )
    return tuple(int(dim) for dim in dims)


# NOTE: numpy's limit (and the host's): an array spans at most the largest signed pointer-sized integer of bytes
maxBytes = int(np.iinfo(np.intp).max)
numericKinds = {"b": "bool", "i": "int", "u": "unsigned int", "f": "float", "c": "complex"}
numericText = "a numeric dtype (%s)" % ", ".join(numericKinds.values())


def checkedAllocation(shape, dtype):
    """``(shape, dtype, nbytes)`` for an array the backends' ``empty`` can create: `shape` as `normalizeShape` returns
    it, `dtype` a numpy dtype.

    Raises:
        TypeError: a dimension that is not an int, or a dtype that is not numeric (bool, int, unsigned int, float,
            complex).
        ValueError: a negative dimension.
        MemoryError: more bytes than an array can span (2**63 - 1 on 64-bit hosts), naming the shape and the bytes.
    """
    # NOTE: every new array passes here: a tuple of Python ints with a dtype object, the common case, is checked once
    # (the answers are cached; errors are not)
    if type(shape) is tuple and (isinstance(dtype, np.dtype) or type(dtype) is type):
        for dim in shape:
            if type(dim) is not int:
                break
        else:
            return cachedAllocation(shape, dtype)
    return uncachedAllocation(shape, dtype)


def uncachedAllocation(shape, dtype):
    """`checkedAllocation` without its cache (same answers, same errors); `cachedAllocation` is this one cached."""
    shape, dtype = normalizeShape(shape), np.dtype(dtype)
    if min(shape, default=0) < 0:
        raise ValueError("GPUArray dimensions must be non-negative; got shape %s" % (shape,))
    if dtype.kind not in numericKinds:
        raise TypeError("a GPUArray must have %s; got dtype %s" % (numericText, dtype))

    nbytes = elementCount(shape) * dtype.itemsize
    if nbytes > maxBytes:
        raise MemoryError(
            "a GPUArray of shape %s and dtype %s needs %d bytes, more than the %d bytes an array can span"
            % (shape, dtype, nbytes, maxBytes)
        )
    # NOTE: numpy also refuses a zero-size shape whose other dimensions multiply past that limit
    if nbytes == 0 and elementCount(max(dim, 1) for dim in shape) * dtype.itemsize > maxBytes:
        raise ValueError(
            "a GPUArray of shape %s and dtype %s has dimensions whose product (zeros left out) exceeds the %d bytes "
            "an array can span" % (shape, dtype, maxBytes)
        )
    return shape, dtype, nbytes


cachedAllocation = functools.lru_cache(maxsize=1024)(uncachedAllocation)


def hostArray(ary):
    """`ary` as a numeric host ndarray, for ``to_gpu``.

    Raises:
        TypeError: `ary` is a GPUArray (copy it with ``.copy()``, or bring it to the host with ``.get()`` first), or
            its numpy form is not numeric (an object array, strings), naming the dtype.
    """
    if isinstance(ary, GPUArray):
        raise TypeError(
            "to_gpu expects a host array; got a GPUArray of shape %s and dtype %s: use .copy() for a new array on its "
            "backend, or .get() first for a host copy" % (ary.shape, ary.dtype)
        )
    ary = np.asarray(ary)
    if ary.dtype.kind not in numericKinds:
        raise TypeError("to_gpu expects a host array of %s; got dtype %s" % (numericText, ary.dtype))
    return ary


def checkHostOut(ary, out):
    """Raises ValueError unless the host ndarray `out` can receive the contents of the GPUArray `ary`
    (``get(out=...)``): same shape and dtype, C-contiguous and writeable."""
    if not isinstance(out, np.ndarray) or out.shape != ary.shape or out.dtype != ary.dtype:
        got = "shape %s and dtype %s" % (out.shape, out.dtype) if isinstance(out, np.ndarray) else type(out).__name__
        raise ValueError(
            "GPUArray.get expects out to be a host ndarray of shape %s and dtype %s; got %s"
            % (ary.shape, ary.dtype, got)
        )
    if not (out.flags.c_contiguous and out.flags.writeable):
        raise ValueError("GPUArray.get expects out to be C-contiguous and writeable")


def elementCount(shape):
    """The number of elements of `shape` (exact: Python ints; faster than numpy on short shapes)."""
    return math.prod(shape)


class GPUArray:
    """C-contiguous array in the memory pool of its backend.

    Attributes (provided by each backend's subclass):
        shape (tuple of int), dtype (numpy.dtype), size (elements), nbytes (bytes), ndim, strides (bytes per step).
        ptr (int): address of the first element, stable for the array's life.
        backend (`PuzzleLib.Backend.Contract.Backend`): the backend whose memory holds the array.

    Views (`reshape`, `ravel`, ``a[i]`` and ``a[i:j]`` on the first axis) share the memory and keep it alive.
    A subclass implements ``get()``, ``fill(value)``, ``copy()`` and the three hooks ``_view(shape, offset)`` (a view of
    `shape` starting `offset` bytes into this array), ``_setFromHost(ary)`` (copy a host array of this shape and dtype
    in) and ``_copyFrom(other)`` (copy an array of this backend, shape and dtype in).
    """

    def __len__(self):
        if self.ndim == 0:
            raise TypeError("len() of a 0-dimensional GPUArray")
        return self.shape[0]

    def __deepcopy__(self, memo):
        """``copy.deepcopy``: `copy()`, a new pool block of the same backend with the same contents (a view's copy is an
        array of its own)."""
        return self.copy()

    def set(self, ary):
        """Copies a host ndarray, or a GPUArray of the same backend (a device-to-device copy), of the same shape and
        dtype into this array; returns self.

        Raises:
            ValueError: on a shape or dtype mismatch (nothing is copied, nothing is cast).
            TypeError: for a GPUArray of another backend.
        """
        if isinstance(ary, GPUArray):
            if ary.backend is not self.backend:
                raise TypeError(
                    "GPUArray.set expects a host array or a %s GPUArray; got a %s GPUArray"
                    % (self.backend.name, ary.backend.name)
                )
            copy = self._copyFrom
        else:
            ary, copy = np.asarray(ary), self._setFromHost

        if ary.shape != self.shape or ary.dtype != self.dtype:
            raise ValueError(
                "GPUArray.set expects an array of shape %s and dtype %s; got shape %s and dtype %s"
                % (self.shape, self.dtype, ary.shape, ary.dtype)
            )
        if self.size:
            copy(ary)
        return self

    def reshape(self, *shape):
        """Returns a view of another shape (one dimension may be -1).

        Raises:
            TypeError: a dimension that is not an int.
            ValueError: when the sizes differ, or more than one dimension is -1, or one is below -1.
        """
        if len(shape) == 1 and not isinstance(shape[0], (int, np.integer)):
            shape = shape[0]
        shape = normalizeShape(shape)
        if min(shape, default=0) >= 0 and elementCount(shape) == self.size:
            return self._view(shape, 0)

        shape = list(shape)
        if shape.count(-1) > 1 or any(dim < -1 for dim in shape):
            raise ValueError("can only specify one unknown dimension (-1), and no other negative one; got %s"
                             % (tuple(shape),))
        mismatch = "cannot reshape GPUArray of shape %s (size %d) to %s" % (self.shape, self.size, tuple(shape))
        if -1 in shape:
            known = elementCount([dim for dim in shape if dim != -1])
            if known == 0 or self.size % known != 0:
                raise ValueError(mismatch)
            shape[shape.index(-1)] = self.size // known

        if elementCount(shape) != self.size:
            raise ValueError(mismatch)
        return self._view(tuple(shape), 0)

    def ravel(self):
        """Returns a one-dimensional view."""
        return self._view((self.size,), 0)

    def __getitem__(self, key):
        """``a[i]`` (a view of one row) or ``a[i:j]`` (a view of rows i to j); nothing else.

        Raises:
            IndexError: for an index out of range, a step other than 1, another kind of key, or a 0-d array.
        """
        if self.ndim == 0:
            raise IndexError("a 0-dimensional GPUArray cannot be indexed")

        rowBytes = elementCount(self.shape[1:]) * self.dtype.itemsize
        if isinstance(key, (int, np.integer)):
            index = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= index < self.shape[0]:
                raise IndexError("index %d is out of range for axis 0 of size %d" % (key, self.shape[0]))
            return self._view(self.shape[1:], index * rowBytes)

        if isinstance(key, slice) and key.step in (None, 1):
            start, stop, _ = key.indices(self.shape[0])
            stop = max(start, stop)
            return self._view((stop - start,) + self.shape[1:], start * rowBytes)

        raise IndexError(
            "GPUArray supports only contiguous slices of the first axis (a[i:j]) and a[i]; got %r" % (key,)
        )

    def __setitem__(self, key, value):
        raise TypeError("GPUArray does not support item assignment; use a[i:j].set(ndarray) or .fill(value)")

    def __str__(self):
        return str(self.get())

    def __repr__(self):
        return "GPUArray(%s, dtype=%s)" % (np.array2string(self.get(), separator=", ", prefix="GPUArray("), self.dtype)


def empty(shape, dtype=np.float32):
    """Returns an uninitialized array of `shape` and `dtype` from the memory pool of the backend in use.

    Raises:
        TypeError: a dimension that is not an int (a float, a bool), or a dtype that is not numeric (bool, int,
            unsigned int, float, complex).
        ValueError: for a negative dimension.
        MemoryError: more bytes than an array can span (the message names the shape and the bytes), or more than the
            device has.
        PuzzleLib.Config.ConfigError: the CUDA backend was asked for and cannot work here.
    """
    return currentBackend().gpuarray.empty(shape, dtype)


def zeros(shape, dtype=np.float32):
    """Returns an array of zeros of `shape` and `dtype` from the memory pool of the backend in use."""
    return currentBackend().gpuarray.zeros(shape, dtype)


def to_gpu(ary):
    """Copies a host array (any layout) into a new C-contiguous GPUArray of the same shape and dtype, on the backend in
    use.

    Raises:
        TypeError: `ary` is a GPUArray (use its ``.copy()``, or ``.get()`` first), or not numeric (bool, int, unsigned
            int, float or complex; an object array or strings are refused), naming the dtype.
    """
    return currentBackend().gpuarray.to_gpu(ary)


def from_dlpack(obj):
    """A GPUArray sharing the memory of `obj` (no copy), on the backend whose memory holds it: the CPU backend for a
    tensor on the host (kDLCPU), the CUDA backend for one on the GPU (kDLCUDA).

    The protocol is the Python array API standard's (``__dlpack__`` / ``__dlpack_device__``, over DLPack's dlpack.h
    v1.0): `obj` is asked for ``obj.__dlpack__(max_version=(1, 0))``, with ``stream=1`` (the legacy default stream, the
    one our kernels use) for a CUDA tensor, and without `max_version` when the producer refuses that keyword with a
    TypeError. On the CUDA backend an object with only ``__cuda_array_interface__`` (version 3) is taken too. A GPUArray
    gives a view of itself.

    The array and every view of it keep the producer's memory alive; when the last of them dies the producer's deleter
    runs (so dropping the PyTorch tensor after the import is safe). Writes through either side are seen by the other.

    Args:
        obj: a PyTorch tensor, a CuPy or numpy array, a GPUArray, or any producer of the protocol; C-contiguous, any
            shape (0-d and empty too), dtype bool, int8..64, uint8..64, float16/32/64, complex64/128.

    Returns:
        GPUArray of the same shape and dtype, whose ``ptr`` is the producer's data pointer.

    Raises:
        TypeError: `obj` has no ``__dlpack__`` (a list, a host array of another kind: copy it with `to_gpu`), or a
            dtype a GPUArray cannot hold (bfloat16 says so; lanes > 1).
        ValueError: a tensor that is not C-contiguous (make it so with ``tensor.contiguous()`` or
            ``np.ascontiguousarray``), or read-only (the versioned capsule's READ_ONLY flag: GPUArrays are writable).
        BufferError: memory on a device no backend holds (neither the host nor the CUDA device), or another CUDA device
            than the backend's.
        PuzzleLib.Config.ConfigError: a CUDA tensor where the CUDA backend cannot work (pycuda missing, no device).
    """
    return DLPack.fromDLPack(obj)


class CurrentPool:
    """The memory pool of the backend in use (`PuzzleLib.Config.backend`), as `memoryPool`.

    Each backend has its own `PuzzleLib.Backend.MemoryPool.MemoryPool` (``array.backend.gpuarray.memoryPool``); this
    object forwards to the pool of the backend new arrays are created on, so ``gpuarray.memoryPool.stats()`` speaks of
    the arrays a program makes.
    """

    @staticmethod
    def pool():
        return currentBackend().gpuarray.memoryPool

    def allocate(self, nbytes):
        """A `Block` of at least `nbytes` bytes (see `MemoryPool.allocate`)."""
        return self.pool().allocate(nbytes)

    def stats(self):
        """``activeBytes``, ``heldBytes``, ``peakActiveBytes``, ``rawBytes``, ``allocations``, ``hits``, ``misses``."""
        return self.pool().stats()

    def resetStats(self):
        """Zeroes the counters and sets the peak to the bytes now active."""
        self.pool().resetStats()

    def freeHeld(self):
        """Gives every held block back to the device; returns the number of bytes freed."""
        return self.pool().freeHeld()

    @property
    def poison(self):
        """Whether every block served is first filled with 0xFF bytes (NaN in every float type)."""
        return self.pool().poison

    @poison.setter
    def poison(self, value):
        self.pool().poison = bool(value)

    def __repr__(self):
        return repr(self.pool())


memoryPool = CurrentPool()
