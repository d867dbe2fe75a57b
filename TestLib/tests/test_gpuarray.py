"""The GPUArray interface of SPEC section 2, on the backend in use, checked against numpy."""

import numpy as np
import pytest

from PuzzleLib.Backend import gpuarray


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int32])
def test_roundtrip_and_attributes(dtype):
    host = (np.arange(24).reshape(2, 3, 4) * 3 - 7).astype(dtype)
    ary = gpuarray.to_gpu(host)
    assert isinstance(ary, gpuarray.GPUArray)
    assert ary.shape == host.shape and ary.dtype == host.dtype and ary.size == host.size
    assert ary.nbytes == host.nbytes and ary.ndim == 3 and ary.strides == host.strides
    assert isinstance(ary.ptr, int) and ary.ptr == ary.ptr
    assert np.array_equal(ary.get(), host)


def test_get_returns_an_independent_copy():
    ary = gpuarray.to_gpu(np.zeros(5, dtype=np.float32))
    host = ary.get()
    host[:] = 7
    assert np.array_equal(ary.get(), np.zeros(5, dtype=np.float32))


def test_to_gpu_makes_a_contiguous_copy_of_any_layout():
    host = np.arange(12, dtype=np.float32).reshape(3, 4).T
    ary = gpuarray.to_gpu(host)
    assert ary.strides == (12, 4)
    assert np.array_equal(ary.get(), host)


def test_set_copies_and_checks_shape_and_dtype():
    ary = gpuarray.zeros((2, 3), np.float32)
    ary.set(np.full((2, 3), 2.5, dtype=np.float32))
    assert np.array_equal(ary.get(), np.full((2, 3), 2.5, dtype=np.float32))

    with pytest.raises(ValueError, match=r"shape \(2, 3\).*got shape \(3, 2\)"):
        ary.set(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="dtype float32.*dtype float64"):
        ary.set(np.ones((2, 3), dtype=np.float64))
    assert np.array_equal(ary.get(), np.full((2, 3), 2.5, dtype=np.float32))


def test_set_from_a_gpuarray_copies_on_the_device_and_checks_shape_and_dtype():
    host = np.arange(6, dtype=np.float32).reshape(2, 3)
    source, ary = gpuarray.to_gpu(host), gpuarray.zeros((2, 3), np.float32)
    assert ary.set(source) is ary and np.array_equal(ary.get(), host)
    source.fill(7.0)
    assert np.array_equal(ary.get(), host), "set kept a view of its source instead of copying"

    with pytest.raises(ValueError, match=r"shape \(2, 3\).*got shape \(3, 2\)"):
        ary.set(gpuarray.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="dtype float32.*dtype float16"):
        ary.set(gpuarray.zeros((2, 3), np.float16))
    assert np.array_equal(ary.get(), host)


def test_fill_zeros_and_empty():
    assert np.array_equal(gpuarray.zeros((4, 2), np.float16).get(), np.zeros((4, 2), np.float16))
    ary = gpuarray.empty((3,), np.float32).fill(1.5)
    assert np.array_equal(ary.get(), np.full(3, 1.5, np.float32))
    assert gpuarray.empty(7).dtype == np.float32


def test_copy_is_new_memory():
    ary = gpuarray.to_gpu(np.arange(6, dtype=np.float32))
    dup = ary.copy()
    assert dup.ptr != ary.ptr
    dup.fill(0)
    assert np.array_equal(ary.get(), np.arange(6, dtype=np.float32))


def test_reshape_and_ravel_are_views():
    ary = gpuarray.to_gpu(np.arange(24, dtype=np.float32))
    view = ary.reshape(2, 3, 4)
    assert view.ptr == ary.ptr and view.shape == (2, 3, 4)
    assert ary.reshape((4, -1)).shape == (4, 6)
    assert view.ravel().ptr == ary.ptr and view.ravel().shape == (24,)

    view.fill(3)
    assert np.array_equal(ary.get(), np.full(24, 3, np.float32))
    with pytest.raises(ValueError, match=r"\(24,\).*\(5, 5\)"):
        ary.reshape(5, 5)


def test_first_axis_slices_are_views():
    host = np.arange(20, dtype=np.float32).reshape(5, 4)
    ary = gpuarray.to_gpu(host)
    part = ary[1:3]
    assert part.shape == (2, 4) and part.ptr == ary.ptr + 1 * host.strides[0]
    assert np.array_equal(part.get(), host[1:3])
    assert np.array_equal(ary[-1].get(), host[-1]) and ary[4].ptr == ary.ptr + 4 * host.strides[0]

    part.fill(-1)
    expected = host.copy()
    expected[1:3] = -1
    assert np.array_equal(ary.get(), expected)

    with pytest.raises(IndexError):
        ary[::2]
    with pytest.raises(IndexError):
        ary[5]


def test_printing_is_numpy_like():
    host = np.arange(6, dtype=np.float32).reshape(1, 6, 1, 1)
    ary = gpuarray.to_gpu(host)
    assert str(ary) == str(host)
    assert repr(ary).startswith("GPUArray(") and "float32" in repr(ary)


def test_every_array_carries_the_backend_it_was_created_on(backend):
    arrays = [gpuarray.empty(3), gpuarray.zeros((2, 2)), gpuarray.to_gpu(np.ones(4))]
    arrays += [arrays[1].reshape(4), arrays[1][1], arrays[2].copy()]
    assert all(ary.backend is backend for ary in arrays)
    assert gpuarray.memoryPool.stats() == backend.gpuarray.memoryPool.stats()


def test_zero_dimensional_arrays_and_views_of_one_element():
    scalar = gpuarray.to_gpu(np.float32(2.5))
    assert scalar.shape == () and scalar.get() == np.float32(2.5)
    with pytest.raises(TypeError, match="0-dimensional"):
        len(scalar)
    with pytest.raises(IndexError, match="0-dimensional"):
        scalar[0]

    vector = gpuarray.to_gpu(np.arange(4, dtype=np.float32))
    assert vector[2].shape == () and vector[2].get() == 2.0 and vector[2].ptr == vector.ptr + 8
    assert vector.reshape(-1, 2).shape == (2, 2) and len(vector) == 4
    with pytest.raises(ValueError, match="one unknown dimension"):
        vector.reshape(-1, -1)
    with pytest.raises(TypeError, match="item assignment"):
        vector[0] = 1.0


# --- errors name what was expected and what came


@pytest.mark.parametrize(
    "shape, fragment",
    [((2.5, 3), "not ints: 2.5"), ((True, 3), "not ints: True"), ([2, np.float64(3.0)], "3.0"), (True, "got True")],
    ids=["float_dimension", "bool_dimension", "numpy_float_dimension", "bare_bool"],
)
def test_empty_and_reshape_refuse_dimensions_that_are_not_ints(shape, fragment):
    with pytest.raises(TypeError, match="must be .*ints") as info:
        gpuarray.empty(shape)
    assert fragment in str(info.value)

    ary = gpuarray.zeros((2, 3), np.float32)
    with pytest.raises(TypeError, match=r"dimensions must be ints .*not ints: 2\.0"):
        ary.reshape(3, 2.0)
    assert gpuarray.empty((np.int64(2), 3)).shape == (2, 3) and ary.reshape([np.int32(3), -1]).shape == (3, 2)


def test_allocation_checks_answer_the_same_from_their_cache():
    """`checkedAllocation` keeps the answers for tuples of ints with a dtype object: a refused shape or dtype is
    refused again, and dtypes that differ only in byte order get their own answers."""
    for _ in range(2):
        with pytest.raises(ValueError, match="non-negative"):
            gpuarray.empty((2, -1), np.float32)
        with pytest.raises(TypeError, match="numeric dtype"):
            gpuarray.empty((2, 3), np.dtype("U2"))
    little, big = np.dtype("<f4"), np.dtype(">f4")
    assert gpuarray.checkedAllocation((2, 3), little) == ((2, 3), little, 24)
    shape, dtype, nbytes = gpuarray.checkedAllocation((2, 3), big)
    assert dtype == big and dtype.byteorder == ">" and nbytes == 24
    assert gpuarray.checkedAllocation((4,), np.float64) == ((4,), np.dtype(np.float64), 32)


def test_empty_past_what_an_array_can_span_is_a_memory_error_naming_the_shape_and_the_bytes():
    allocations = gpuarray.memoryPool.stats()["allocations"]
    with pytest.raises(MemoryError) as info:
        gpuarray.empty((2**32, 2**32))
    message = str(info.value)
    assert "(4294967296, 4294967296)" in message and "float32" in message and "%d bytes" % (4 * 2**64) in message
    assert gpuarray.memoryPool.stats()["allocations"] == allocations


@pytest.mark.parametrize(
    "host, dtype",
    [(np.array([1, "a"], dtype=object), "object"), (["a", "bc"], "<U2"), (np.zeros(2, "datetime64[s]"), "datetime64")],
    ids=["object_array", "list_of_strings", "datetimes"],
)
def test_to_gpu_refuses_host_arrays_that_are_not_numeric(host, dtype):
    kinds = r"numeric dtype \(bool, int, unsigned int, float, complex\); got dtype "
    with pytest.raises(TypeError, match=kinds) as info:
        gpuarray.to_gpu(host)
    assert dtype in str(info.value)


def test_to_gpu_of_a_gpuarray_says_to_copy_it_or_get_it_first():
    ary = gpuarray.to_gpu(np.arange(3, dtype=np.float32))
    with pytest.raises(TypeError, match=r"expects a host array; got a GPUArray .*\.copy\(\).*\.get\(\)"):
        gpuarray.to_gpu(ary)


def test_to_gpu_takes_every_numeric_kind():
    hosts = [np.array([True, False]), np.arange(3, dtype=np.uint8), np.array([1 + 2j], np.complex64), [1.5, 2.0]]
    for host in hosts:
        ary = gpuarray.to_gpu(host)
        assert ary.dtype == np.asarray(host).dtype and np.array_equal(ary.get(), np.asarray(host))
