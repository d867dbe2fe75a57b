"""Backend: one interface (gpuarray, Dnn, Blas) over CUDA (pycuda) or the CPU (numpy).

Modules import only `PuzzleLib.Backend.*`; `Loader.backendModule` picks `Backend.Cuda.<name>` or `Backend.Cpu.<name>`
by `PuzzleLib.Config.backend`. Importing this package alone touches no device.
"""
