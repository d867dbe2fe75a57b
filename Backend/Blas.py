"""Vector and matrix operations for modules and optimizers, from the backend in use.

- ``addVectorToVector(x, y, out=None, alpha=1.0, beta=1.0)``: ``out = alpha * x + beta * y``; returns ``out``.
- ``toVectorAddVector(y, x, alpha=1.0)``: ``y += alpha * x``; returns ``y``.
- ``gemm(A, B, out=None, transpA=False, transpB=False, alpha=1.0, beta=0.0)``:
  ``out = alpha * op(A) @ op(B) + beta * out`` on 2D row-major float32 arrays; returns ``out``.
- ``sumOnMatrix(A, out=None, cols=True, alpha=1.0, beta=0.0)``: ``out = alpha * A.sum(axis=0 if cols else 1) +
  beta * out``; returns ``out``.

On CUDA these go through cuBLAS (scikit-cuda) where it loads, else through the project's kernels; on the CPU through
numpy. Shapes and dtypes must agree exactly, else `ValueError` naming both.
"""

from PuzzleLib.Backend.Loader import backendModule

_backend = backendModule("Blas")

addVectorToVector = _backend.addVectorToVector
toVectorAddVector = _backend.toVectorAddVector
gemm = _backend.gemm
sumOnMatrix = _backend.sumOnMatrix

__all__ = ["addVectorToVector", "toVectorAddVector", "gemm", "sumOnMatrix"]
