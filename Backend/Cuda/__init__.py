"""The CUDA backend: arrays in device memory (pycuda) and the primitives of `PuzzleLib.Backend.Contract` as kernels
(``Kernels/*.cu``), cuBLAS where it loads.

`backend` is what every CUDA array's ``backend`` attribute returns. Importing the package imports pycuda but touches no
device: the driver, the device and its primary context are taken at the first allocation (`Driver.context`), kernels
compile at their first launch and cuBLAS loads at the first Blas call.
"""

from PuzzleLib.Backend.Contract import Backend
from PuzzleLib.Backend.Cuda import BatchNormKernels, Blas, ElementWise, GPUArray, Permute

backend = Backend(
    name="cuda", gpuarray=GPUArray, batchNorm=BatchNormKernels, blas=Blas, elementWise=ElementWise, permute=Permute
)
GPUArray.GPUArray.backend = backend
