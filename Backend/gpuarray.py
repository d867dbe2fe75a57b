"""Arrays in device memory: `GPUArray`, `to_gpu`, `empty`, `zeros` and the `memoryPool` they all come from.

The names are filled from the backend in use (`PuzzleLib.Config.backend`): pycuda arrays on CUDA, numpy views on the
CPU, with one interface (SPEC section 2).
"""

from PuzzleLib.Backend.Loader import backendModule

_backend = backendModule("GPUArray")

GPUArray = _backend.GPUArray
to_gpu = _backend.to_gpu
empty = _backend.empty
zeros = _backend.zeros
memoryPool = _backend.memoryPool

__all__ = ["GPUArray", "to_gpu", "empty", "zeros", "memoryPool"]
