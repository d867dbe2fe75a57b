"""`Backend.Blas` on every backend against float64 numpy: gemm in every transposition, the vector operations and the
matrix sums, with their argument checks."""

import numpy as np
import pytest

from PuzzleLib.Backend import Blas, gpuarray


@pytest.mark.parametrize("transpA", [False, True])
@pytest.mark.parametrize("transpB", [False, True])
def test_gemm(transpA, transpB):
    rng = np.random.default_rng(7)
    M, K, N = 37, 19, 23
    A = rng.normal(size=(K, M) if transpA else (M, K)).astype(np.float32)
    B = rng.normal(size=(N, K) if transpB else (K, N)).astype(np.float32)
    C = rng.normal(size=(M, N)).astype(np.float32)
    product = (A.T if transpA else A).astype(np.float64) @ (B.T if transpB else B)

    out = gpuarray.to_gpu(C)
    assert Blas.gemm(gpuarray.to_gpu(A), gpuarray.to_gpu(B), out, transpA, transpB, alpha=0.5, beta=2.0) is out
    np.testing.assert_allclose(out.get(), 0.5 * product + 2.0 * C, rtol=1e-4, atol=1e-4)

    fresh = Blas.gemm(gpuarray.to_gpu(A), gpuarray.to_gpu(B), transpA=transpA, transpB=transpB, beta=5.0)
    np.testing.assert_allclose(fresh.get(), product, rtol=1e-4, atol=1e-4)


def test_gemm_of_empty_inner_dimension_keeps_only_the_beta_term():
    C = np.arange(6, dtype=np.float32).reshape(2, 3)
    out = gpuarray.to_gpu(C)
    Blas.gemm(gpuarray.empty((2, 0)), gpuarray.empty((0, 3)), out, beta=0.5)
    np.testing.assert_array_equal(out.get(), 0.5 * C)
    Blas.gemm(gpuarray.empty((2, 0)), gpuarray.empty((0, 3)), out)
    np.testing.assert_array_equal(out.get(), np.zeros((2, 3), np.float32))


def test_vector_operations_and_sums():
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=1000).astype(np.float32), rng.normal(size=1000).astype(np.float32)
    out = Blas.addVectorToVector(gpuarray.to_gpu(x), gpuarray.to_gpu(y), alpha=2.0, beta=-1.0)
    np.testing.assert_allclose(out.get(), 2.0 * x.astype(np.float64) - y, rtol=1e-6, atol=1e-6)

    dy = gpuarray.to_gpu(y)
    assert Blas.addVectorToVector(gpuarray.to_gpu(x), dy, out=dy, alpha=1.0, beta=3.0) is dy
    np.testing.assert_allclose(dy.get(), x.astype(np.float64) + 3.0 * y, rtol=1e-5, atol=1e-5)

    dy = gpuarray.to_gpu(y)
    assert Blas.toVectorAddVector(dy, gpuarray.to_gpu(x), alpha=0.5) is dy
    np.testing.assert_allclose(dy.get(), y + 0.5 * x.astype(np.float64), rtol=1e-6, atol=1e-6)

    A = rng.normal(size=(300, 7)).astype(np.float32)
    np.testing.assert_allclose(Blas.sumOnMatrix(gpuarray.to_gpu(A)).get(), A.sum(axis=0), rtol=1e-5, atol=1e-4)
    rows = gpuarray.to_gpu(np.ones(300, np.float32))
    Blas.sumOnMatrix(gpuarray.to_gpu(A), out=rows, cols=False, alpha=2.0, beta=-1.0)
    np.testing.assert_allclose(rows.get(), 2.0 * A.astype(np.float64).sum(axis=1) - 1.0, rtol=1e-5, atol=1e-4)


def test_bad_operands_name_what_was_expected():
    x = gpuarray.to_gpu(np.ones((2, 3), np.float32))
    with pytest.raises(TypeError, match="y must be a GPUArray; got ndarray"):
        Blas.addVectorToVector(x, np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match=r"y must have shape \(2, 3\); got \(3, 2\)"):
        Blas.addVectorToVector(x, gpuarray.to_gpu(np.ones((3, 2), np.float32)))
    with pytest.raises(ValueError, match="x must have dtype"):
        Blas.toVectorAddVector(gpuarray.zeros(3, np.int32), gpuarray.zeros(3, np.int32))
    with pytest.raises(ValueError, match="inner dimensions differ"):
        Blas.gemm(x, x)
    with pytest.raises(ValueError, match=r"out must have shape \(2, 2\)"):
        Blas.gemm(x, x, out=gpuarray.empty((3, 3)), transpB=True)
    with pytest.raises(ValueError, match="2D array"):
        Blas.sumOnMatrix(x.ravel())


def test_beta_zero_never_reads_y():
    x = np.random.randn(5).astype(np.float32)
    for poison in (np.inf, np.nan):
        y = gpuarray.to_gpu(np.full(5, poison, np.float32))
        Blas.addVectorToVector(gpuarray.to_gpu(x), y, out=y, alpha=2.0, beta=0.0)
        np.testing.assert_array_equal(y.get(), 2.0 * x)
        out = Blas.addVectorToVector(gpuarray.to_gpu(x), gpuarray.to_gpu(np.full(5, poison, np.float32)), beta=0.0)
        np.testing.assert_array_equal(out.get(), x)
