"""What a module call costs before its kernel runs: the Python frames from ``bn(x)`` to the kernel call, and the
Python time of a call on the CUDA backend's host path, measured without a GPU.

- Frames (the CPU backend's C kernels, `TestLib.CallPath`): the chain of frames above the first kernel call of a
  default training forward, an evaluation forward, a backward and the deepest feature combination (Batch
  Renormalization in ghost batches), each printed with its depth.
- CUDA host path: ``BatchNorm(64)`` on (16, 64), ``BatchNorm2D(16)`` on (8, 16, 14, 14) and ``BatchNorm2D(256)`` on
  (8, 256, 14, 14) (a resident pass's shape: one launch per training task) float32, on the stand-in driver of
  `TestLib.StandInCuda` (a process of its own; device memory is host memory, a launch only records its arguments):
  the median microseconds of a training forward, a backward and an evaluation forward. This is the Python
  between a module call and its launches, pycuda's own cost left out (the stand-in does next to nothing).

    python -m PuzzleLib.Benchmarks.CallPathBenchmark [--calls N] [--json FILE]
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HOST_PATH = r"""
import json, sys, time
from PuzzleLib.TestLib import StandInCuda
StandInCuda.install()
import numpy as np
from PuzzleLib.Backend import gpuarray
from PuzzleLib.Modules import BatchNorm, BatchNorm2D

calls = int(sys.argv[1])

def median(func):
    for _ in range(calls // 10 + 1):
        func()
        del StandInCuda.launches[:]
    seconds = []
    for _ in range(calls):
        began = time.perf_counter()
        func()
        seconds.append(time.perf_counter() - began)
        del StandInCuda.launches[:]
    return float(np.median(seconds)) * 1e6

result = {}
for label, make, shape in (("BatchNorm(64) on (16, 64)", lambda: BatchNorm(64), (16, 64)),
                           ("BatchNorm2D(16) on (8, 16, 14, 14)", lambda: BatchNorm2D(16), (8, 16, 14, 14)),
                           ("BatchNorm2D(256) on (8, 256, 14, 14)", lambda: BatchNorm2D(256), (8, 256, 14, 14))):
    x = gpuarray.to_gpu(np.random.default_rng(0).normal(size=shape).astype(np.float32))
    bn, bnEval = make(), make()
    bnEval.evalMode()
    bn(x)
    result[label] = {"train": median(lambda: bn(x)), "backward": median(lambda: bn.backward(x)),
                     "eval": median(lambda: bnEval(x))}
print(json.dumps(result))
"""


def frameChains():
    """{call: [frame names]} of the CPU backend's C kernels (None where they cannot be built)."""
    from PuzzleLib import Config
    from PuzzleLib.Backend.Cpu import BatchNormKernels, GPUArray
    from PuzzleLib.Modules import BatchNorm, BatchNorm2D
    from PuzzleLib.TestLib.CallPath import chainOf, recordedKernels

    if BatchNormKernels.cProblem() is not None:
        return None
    rng = np.random.default_rng(0)
    x, dy = (GPUArray.to_gpu(rng.normal(size=(16, 64)).astype(np.float32)) for _ in range(2))
    x4, dy4 = (GPUArray.to_gpu(rng.normal(size=(8, 4, 3, 3)).astype(np.float32)) for _ in range(2))
    with Config.useBackend("cpu"), Config.useCpuKernels("c"), recordedKernels() as chains:
        bn, bnEval, ghosts = BatchNorm(64), BatchNorm(64), BatchNorm2D(4, renorm=True, virtualBatch=4)
        bnEval.evalMode()
        bn(x)
        return {
            "training forward": chainOf(lambda: bn(x), chains),
            "backward": chainOf(lambda: bn.backward(dy), chains),
            "evaluation forward": chainOf(lambda: bnEval(x), chains),
            "renorm + ghost batches, forward": chainOf(lambda: ghosts(x4), chains),
            "renorm + ghost batches, backward": chainOf(lambda: ghosts.backward(dy4), chains),
        }


def hostPath(calls):
    """The CUDA host path's median microseconds per call (`HOST_PATH`, in a process of its own)."""
    env = dict(os.environ, PUZZLELIB_BACKEND="cuda")
    result = subprocess.run([sys.executable, "-c", HOST_PATH, str(calls)], capture_output=True, text=True, env=env,
                            check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000, help="calls per figure of the host path (median)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    os.environ.setdefault("PUZZLELIB_BACKEND", "cpu")
    print("%s; Python %s" % (time.strftime("%Y-%m-%d %H:%M"), sys.version.split()[0]))
    chains = frameChains()
    if chains is None:
        print("frames: the C kernels cannot be built here")
    else:
        print("Python frames from the module call to the C kernel call (CPU backend):")
        for call, chain in chains.items():
            print("  %-34s %d  %s" % (call, len(chain), " -> ".join(chain)))
    host = hostPath(args.calls)
    print("\nCUDA host path on the stand-in driver (no GPU), median of %d calls, µs:" % args.calls)
    print("  %-36s %9s %9s %9s" % ("", "train", "backward", "eval"))
    for label, times in host.items():
        print("  %-36s %9.1f %9.1f %9.1f" % (label, times["train"], times["backward"], times["eval"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"frames": chains, "cudaHostPathMicroseconds": host, "calls": args.calls}, f, indent=1)


if __name__ == "__main__":
    main()
