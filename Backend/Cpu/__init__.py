"""The CPU backend: arrays in numpy memory and the numpy twins of the CUDA primitives (`PuzzleLib.Backend.Contract`).

`backend` is what every CPU array's ``backend`` attribute returns.
"""

from PuzzleLib.Backend.Contract import Backend
from PuzzleLib.Backend.Cpu import BatchNormKernels, Blas, ElementWise, GPUArray, Permute

backend = Backend(
    name="cpu", gpuarray=GPUArray, batchNorm=BatchNormKernels, blas=Blas, elementWise=ElementWise, permute=Permute
)
GPUArray.GPUArray.backend = backend
