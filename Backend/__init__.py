"""Backend: arrays (`gpuarray`) and the operations modules need (`Dnn`, `Blas`, `ElementWise`, `Permute`), over
CUDA (`Backend.Cuda`: pycuda, hand-written kernels, cuBLAS) or the CPU (`Backend.Cpu`: numpy).

Every array carries its backend, and these front modules run an operation on the backend of the arrays they are given
(`Dispatch`); the contract both backends follow is `Contract`. Importing any of them touches no device.
"""
