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


# NOTE: the occupancy rules of sm_70 to sm_90 (NVIDIA's occupancy calculator): registers are given to each warp in
# units of 256, the driver keeps 1 KB of shared memory per block, and a multiprocessor holds at most 32 blocks
REGISTER_UNIT = 256
SHARED_RESERVED_PER_BLOCK = 1024
MAX_BLOCKS_PER_MULTIPROCESSOR = 32


def blocksPerMultiprocessor(registers, sharedBytes, blockSize, limits):
    """Blocks of `blockSize` threads that one multiprocessor runs at once, for a kernel of `registers` registers per
    thread and `sharedBytes` of static shared memory per block, on a multiprocessor of `limits` (threads, registers,
    bytes of shared memory; `Backend.Cuda.Driver.multiprocessorLimits`). At least 1: a kernel that launches at all
    runs one block."""
    threads, registerFile, sharedMemory = limits
    warps = -(-blockSize // 32)
    perWarp = -(-max(registers, 1) * 32 // REGISTER_UNIT) * REGISTER_UNIT
    byRegisters = (registerFile // perWarp) // warps
    byShared = sharedMemory // (sharedBytes + SHARED_RESERVED_PER_BLOCK)
    return max(1, min(threads // (warps * 32), byRegisters, byShared, MAX_BLOCKS_PER_MULTIPROCESSOR))
