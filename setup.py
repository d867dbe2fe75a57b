"""Installs the repository root as the package `PuzzleLib`."""

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPy(build_py):
    """Leaves this script out of the installed package (the root directory is the package)."""

    def find_package_modules(self, package, package_dir):
        modules = super().find_package_modules(package, package_dir)
        return [module for module in modules if not (package == "PuzzleLib" and module[1] == "setup")]


mpi = ["mpi4py>=4.0", "openmpi>=5.0; platform_system != 'Windows'"]
subpackages = find_packages(".", exclude=["build", "build.*", "dist", "*.egg-info"])

setup(
    name="PuzzleLib",
    version="0.1.0",
    description="PuzzleLib-style batch normalization modules for the GPU (pycuda) with a numpy CPU backend",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    package_dir={"PuzzleLib": "."},
    packages=["PuzzleLib"] + ["PuzzleLib." + name for name in subpackages],
    package_data={"PuzzleLib.Kernels": ["*.cu", "*.c"]},
    cmdclass={"build_py": BuildPy},
    install_requires=["numpy>=1.24", "h5py>=3.8"],
    extras_require={
        "cuda": ["pycuda>=2024.1", "scikit-cuda>=0.5.3"],
        # NOTE: the Open MPI wheel brings the MPI library and mpiexec; mpi4py's wheel finds it (or the system's MPI)
        "mpi": mpi,
        "examples": ["scikit-learn>=1.3", "tqdm>=4.60"],
        "plot": ["matplotlib>=3.7"],
        # NOTE: CUDA 12's NVRTC and ptxas let the compile test target sm_70, which CUDA 13's nvcc dropped; CUDA 13's
        # cuobjdump (with the nvdisasm it runs) disassembles the kernels for the structural check
        # (Benchmarks/KernelReport.py)
        "test": ["pytest>=7.4", "scikit-learn>=1.3", "tqdm>=4.60", "ruff>=0.6"] + mpi + [
            "%s==12.9.*; platform_system == 'Linux' and platform_machine == 'x86_64'" % name
            for name in ("nvidia-cuda-nvrtc-cu12", "nvidia-cuda-nvcc-cu12", "nvidia-cuda-runtime-cu12")
        ] + [
            "%s>=13.0; platform_system == 'Linux' and platform_machine == 'x86_64'" % name
            for name in ("nvidia-cuda-cuobjdump", "nvidia-cuda-nvdisasm")
        ],
    },
)
