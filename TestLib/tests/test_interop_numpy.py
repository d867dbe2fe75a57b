"""Zero-copy exchange with numpy, which every installation has (``test_interop.py`` does the same with PyTorch and CuPy
where they are installed): DLPack both ways on the CPU backend, memory shared, lifetimes, errors.

numpy holds host memory, so these tests run on the CPU backend only (`from_dlpack` of a numpy array gives a CPU array
whatever backend is in use).
"""

import ctypes
import gc
import sys

import numpy as np
import pytest

from PuzzleLib import Config
from PuzzleLib.Backend import gpuarray

pytestmark = pytest.mark.backendIndependent

capsuleName = ctypes.pythonapi.PyCapsule_GetName
capsuleName.restype, capsuleName.argtypes = ctypes.c_char_p, [ctypes.py_object]


@pytest.fixture(autouse=True)
def cpu():
    with Config.useBackend("cpu"):
        pool = gpuarray.memoryPool
        pool.poison = True
        yield pool


def test_numpy_reads_and_writes_a_gpuarray_in_place():
    ary = gpuarray.to_gpu(np.arange(12, dtype=np.float32).reshape(3, 4))
    view = np.from_dlpack(ary)
    assert view.ctypes.data == ary.ptr and view.shape == (3, 4) and view.dtype == np.float32
    view *= -2
    assert np.array_equal(ary.get(), -2 * np.arange(12, dtype=np.float32).reshape(3, 4))
    ary.fill(5)
    assert np.array_equal(view, np.full((3, 4), 5, np.float32))

    rows = np.from_dlpack(ary[1:3])
    assert rows.ctypes.data == ary.ptr + 16 and rows.shape == (2, 4)


@pytest.mark.parametrize("maxVersion, name", [(None, b"dltensor"), ((1, 0), b"dltensor_versioned")])
def test_capsules_of_both_versions(maxVersion, name):
    ary = gpuarray.to_gpu(np.arange(5, dtype=np.int16))
    assert capsuleName(ary.__dlpack__(max_version=maxVersion)) == name
    assert ary.__dlpack_device__() == (1, 0)


def test_an_exported_array_stays_in_use_while_numpy_holds_it(cpu):
    before = cpu.stats()["activeBytes"]
    ary = gpuarray.to_gpu(np.arange(1000, dtype=np.float64))
    view = np.from_dlpack(ary)
    del ary
    gc.collect()
    assert cpu.stats()["activeBytes"] > before
    # NOTE: a new array must not get the exported block while numpy still reads it
    other = gpuarray.to_gpu(np.zeros(1000))
    assert np.array_equal(view, np.arange(1000, dtype=np.float64)) and other.ptr != view.ctypes.data
    del view, other
    gc.collect()
    assert cpu.stats()["activeBytes"] == before


def test_a_numpy_array_comes_in_without_a_copy_and_stays_alive():
    host = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    base = sys.getrefcount(host)
    ary = gpuarray.from_dlpack(host)
    assert ary.ptr == host.ctypes.data and ary.shape == (2, 3, 4) and ary.backend.name == "cpu"
    assert sys.getrefcount(host) > base

    ary.fill(1)
    assert np.array_equal(host, np.ones((2, 3, 4), np.float32))
    view = ary.reshape(6, 4)[2:4]
    del ary
    gc.collect()
    assert sys.getrefcount(host) > base, "a view of the imported array must keep the producer alive"
    del view
    gc.collect()
    assert sys.getrefcount(host) == base


def test_import_refuses_what_a_gpuarray_cannot_be():
    with pytest.raises(ValueError, match="contiguous"):
        gpuarray.from_dlpack(np.zeros((4, 6), np.float32)[:, ::2])
    readOnly = np.zeros(3, np.float32)
    readOnly.flags.writeable = False
    with pytest.raises((ValueError, BufferError), match="read-only|writ"):
        gpuarray.from_dlpack(readOnly)
    with pytest.raises(TypeError, match="__dlpack__"):
        gpuarray.from_dlpack([1.0, 2.0])


def test_batchnorm_runs_on_an_imported_numpy_array():
    from PuzzleLib.Modules import BatchNorm
    from PuzzleLib.TestLib import Reference

    host = np.random.default_rng(3).normal(2.0, 3.0, (16, 5)).astype(np.float32)
    bn = BatchNorm(5)
    out = bn(gpuarray.from_dlpack(host)).get()
    ref = Reference.batchNormTrain(host, bn.scale.get().reshape(1, 5), np.zeros((1, 5)), (0,), bn.epsilon)
    np.testing.assert_allclose(out, ref.out, atol=1e-5)
    np.testing.assert_allclose(bn.var.get().ravel(), ref.unbiasedVar.ravel(), rtol=1e-5)
