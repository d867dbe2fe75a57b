#!/usr/bin/env bash
# Runs the test suite and the GPU benchmark on a CUDA machine, from the repository root:
#
#   Benchmarks/runOnDevice.sh            # results under $OUT, or ./out when OUT is unset
#
# The machine needs python3 with numpy, pytest and h5py (torch optional, for the cuDNN comparison) and the wheels
# built beforehand into .whl/ (pycuda for that Python and CUDA, pytools, platformdirs, mako, siphash24, scikit-cuda).
# Nothing is installed system-wide: wheels go to /tmp/site, the repository is made importable as PuzzleLib through a
# symlink in /tmp/pkgroot.
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
out=${OUT:-$root/out}
mkdir -p "$out"

site=/tmp/site pkgroot=/tmp/pkgroot
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
else
  echo "no wheels in .whl/: relying on the packages python3 already has"
fi
mkdir -p "$pkgroot" && ln -sfn "$root" "$pkgroot/PuzzleLib"
export PYTHONPATH="$pkgroot:$site${PYTHONPATH:+:$PYTHONPATH}" PUZZLELIB_BACKEND=cuda PYTHONUNBUFFERED=1

{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null; nvcc --version | tail -2; \
  python3 --version; git rev-parse HEAD 2>/dev/null; } | tee "$out/device.txt"

python3 -m pytest -q -p no:cacheprovider TestLib 2>&1 | tee "$out/tests.log"
status=${PIPESTATUS[0]}

python3 Benchmarks/GpuBenchmark.py --out "$out/benchmark.md" "$@" 2>&1 | tee "$out/benchmark.log"
bench=${PIPESTATUS[0]}

echo "tests exit status $status, benchmark exit status $bench" | tee -a "$out/device.txt"
exit $(( status != 0 || bench != 0 ))
