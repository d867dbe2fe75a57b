#!/usr/bin/env bash
# The one prepared device check, from the repository root of a CUDA machine:
#
#   Benchmarks/runOnDevice.sh            # results under $OUT, or ./out when OUT is unset
#
# In order, each step bounded in time so that the whole fits in 8 minutes of an H100: the pytest suite on the CUDA
# backend, every module's self-test, compute-sanitizer memcheck and racecheck on small odd shapes
# (Benchmarks/SanitizerCases.py), the main job on CUDA (3 epochs), the GPU benchmark, and a results file
# gpu-<date>-<device>.md under $OUT (device, driver, CUDA, commit, each step's verdict, the benchmark's table) to
# commit under Benchmarks/results/. A step that fails or runs out of time is reported and the next one still runs.
#
# The machine needs python3 with numpy, pytest and h5py (torch optional, for the PyTorch comparison) and the wheels
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

device=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-' | tr -cd 'A-Za-z0-9-')
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null; nvcc --version | tail -2; \
  python3 --version; git rev-parse HEAD 2>/dev/null; } > "$out/device.txt"
cat "$out/device.txt"

verdicts=()
# step NAME SECONDS LOG COMMAND...: runs the command under a time limit, its output to $out/LOG, and records the verdict
step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$@" > "$out/$log" 2>&1
  local status=$?
  local verdict="exit status $status"
  [ $status -eq 0 ] && verdict="passed"
  [ $status -eq 124 ] && verdict="ran out of its ${limit} s"
  verdicts+=("- $name: $verdict in $((SECONDS - start)) s; last line: $(tail -1 "$out/$log")")
  echo "${verdicts[-1]}"
  return $status
}

step "test suite (CUDA backend)" 240 tests.log python3 -m pytest -q -p no:cacheprovider TestLib
tests=$?
step "module self-tests" 60 selftests.log python3 -m PuzzleLib.TestLib.RunUnittests
step "compute-sanitizer memcheck" 60 memcheck.log compute-sanitizer --tool memcheck --error-exitcode 3 \
  python3 Benchmarks/SanitizerCases.py
step "compute-sanitizer racecheck" 60 racecheck.log compute-sanitizer --tool racecheck --error-exitcode 3 \
  python3 Benchmarks/SanitizerCases.py
step "main job on CUDA, 3 epochs" 60 mainjob.log python3 -m PuzzleLib --epochs 3
step "GPU benchmark" 150 benchmark.log python3 Benchmarks/GpuBenchmark.py --out "$out/benchmark.md" "$@"
bench=$?

results="$out/gpu-$(date +%Y-%m-%d)-${device:-unknown}.md"
{
  echo "# GPU check: $(head -1 "$out/device.txt")"
  echo
  echo '```'
  cat "$out/device.txt"
  echo '```'
  echo
  printf '%s\n' "${verdicts[@]}"
  echo
  echo "Test suite summary: $(grep -E '[0-9]+ (passed|failed)' "$out/tests.log" | tail -1)"
  echo
  [ -f "$out/benchmark.md" ] && cat "$out/benchmark.md"
} > "$results"
echo "results: $results"
exit $(( tests != 0 || bench != 0 ))
