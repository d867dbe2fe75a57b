"""The CUDA C++ sources of the CUDA backend (``*.cu``), each beside its Python declaration (``<Name>.py``: the build's
preprocessor constants and the parameters of every entry point, in `Signature` terms).

Each source is plain CUDA C++ that ``nvcc -c`` compiles as it stands (SPEC section 3). The CUDA backend compiles it at
run time with pycuda (`PuzzleLib.Backend.Cuda.SourceModule`), with `NVCC_OPTIONS` and the defines of its declaration;
the test suite compiles every source with nvcc for each target architecture and checks the declarations against the
compiled PTX, on machines without a GPU too. Nothing in this package imports pycuda.
"""

import os

KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))

# NOTE: -warn-spills makes a register spill a warning, which the compile test treats as a failure
NVCC_OPTIONS = ("-O3", "-Xptxas", "-warn-spills")


def sourcePath(fileName):
    """The path of the source ``fileName`` (e.g. ``"BatchNorm.cu"``)."""
    return os.path.join(KERNELS_DIR, fileName)
