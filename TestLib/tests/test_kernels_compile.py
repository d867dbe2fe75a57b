"""Every CUDA source under Kernels/ compiles with nvcc, as it stands, for the architectures the project targets.

Runs on every machine with nvcc, with or without a GPU (SPEC section 3). A warning fails the test too: nvcc's and
ptxas's (register spills included, via the runtime's ``-Xptxas -warn-spills``). sm_70 is skipped, with the reason,
when the installed nvcc no longer supports it (CUDA 13 dropped Volta); sm_75 is then the oldest target checked.
"""

import functools
import glob
import os
import shutil
import subprocess

import pytest

from PuzzleLib.Backend.Cuda.SourceModule import KERNELS_DIR, NVCC_OPTIONS

ARCHS = ("sm_70", "sm_75", "sm_80", "sm_90")
SOURCES = sorted(os.path.basename(path) for path in glob.glob(os.path.join(KERNELS_DIR, "*.cu")))

nvcc = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(nvcc is None, reason="nvcc is not installed on this machine")


@functools.lru_cache(maxsize=None)
def supportedArchs():
    result = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, check=False)
    return {line.strip().replace("compute_", "sm_") for line in result.stdout.split()}


def test_sources_exist():
    assert "BatchNorm.cu" in SOURCES and "Blas.cu" in SOURCES, SOURCES


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", SOURCES)
def test_compiles(source, arch, tmp_path):
    if arch not in supportedArchs():
        pytest.skip("this nvcc does not support %s (supported: %s)" % (arch, " ".join(sorted(supportedArchs()))))

    command = [nvcc, "-c", "-arch=%s" % arch, *NVCC_OPTIONS, "-I", KERNELS_DIR,
               "-o", str(tmp_path / (source + ".o")), os.path.join(KERNELS_DIR, source)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)

    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, "%s failed:\n%s" % (" ".join(command), output)
    assert "warning" not in output.lower(), "%s warned:\n%s" % (" ".join(command), output)
