"""Batch-normalization throughput on the GPU: the project's kernels against the copy bandwidth and against PyTorch.

For each shape and dtype it times the training forward, the evaluation forward and the backward (CUDA events, median
of `--repeats` runs, rotating through enough buffers that they do not fit in L2), and reports

- the effective bandwidth: bytes that must move (forward: read x, write y; backward: read x and dy, write dx) over
  the time, and that as a fraction of the device-to-device copy bandwidth measured in the same run;
- the time of ``torch.nn.functional.batch_norm`` (cuDNN where it applies) on the same data, when torch imports,
  as the ratio torch time / our time (above 1: ours is faster).

It prints a Markdown table and writes it, with the device name, date and git commit, to ``--out``.

    PUZZLELIB_BACKEND=cuda python3 Benchmarks/GpuBenchmark.py --out out/benchmark.md
"""

import argparse
import datetime
import os
import statistics
import subprocess
import sys

import numpy as np

RESNET50 = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7)]
PER_ACTIVATION = [(256, 4096), (8192, 1024), (125000, 50)]
HUGE = (64, 256, 384, 384)  # 2.4e9 elements: 64-bit indexing, fp16 only (4.8 GB)
ROTATE_BYTES = 256 << 20


def parseArgs():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(os.environ.get("OUT", "out"), "benchmark.md"))
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--no-huge", action="store_true", help="skip the fp16 tensor of more than 2^31 elements")
    parser.add_argument("--no-torch", action="store_true")
    return parser.parse_args()


def gitCommit():
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        return subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Timer:
    """Median time in ms of fn(i) over repeats, with pycuda events (our kernels) or torch events."""

    def __init__(self, cuda, torch=None):
        self.cuda, self.torch = cuda, torch

    def median(self, fn, repeats, warmup=3):
        for i in range(warmup):
            fn(i)
        times = []
        for i in range(repeats):
            if self.torch is not None:
                start, end = self.torch.cuda.Event(enable_timing=True), self.torch.cuda.Event(enable_timing=True)
                start.record()
                fn(i)
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                start, end = self.cuda.Event(), self.cuda.Event()
                start.record()
                fn(i)
                end.record()
                end.synchronize()
                times.append(start.time_till(end))
        return statistics.median(times)


def shape3Of(shape):
    return (shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1)


def benchmarkOurs(gpu, bn, timer, shape, dtype, repeats):
    """The CUDA plan's primitives (`Backend.Cuda.BatchNormKernels.CudaPlan`) on the (outer, maps, inner) view of
    `shape`, with preallocated outputs."""
    from PuzzleLib.Backend.BatchNormLayout import layoutOf
    from PuzzleLib.Backend.Contract import Backward, EvalForward, PlanOptions, TrainForward
    from PuzzleLib.Backend.Cuda import backend

    shape3 = shape3Of(shape)
    maps = shape3[1]
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    nbuf = max(1, min(4, -(-ROTATE_BYTES // nbytes)))
    plan = bn.plan(backend, layoutOf(shape3, (0, 2)), np.dtype(dtype), PlanOptions(1e-5))

    def filled(value):
        return gpu.empty(shape3, dtype).fill(value)

    xs = [filled(1.0 + 0.1 * i) for i in range(nbuf)]
    ys = [gpu.empty(shape3, dtype) for _ in range(nbuf)]
    scale, bias = gpu.zeros((maps,)).fill(1.0), gpu.zeros((maps,))
    mean, var = gpu.zeros((maps,)), gpu.zeros((maps,)).fill(1.0)
    savemean, saveinvvar = gpu.empty((maps,)), gpu.empty((maps,))
    scalegrad, biasgrad = gpu.empty((maps,)), gpu.empty((maps,))
    # NOTE: the modules' default: the running update guarded against non-finite batch statistics
    skipped = gpu.zeros((maps,))

    results = {}
    results["train forward"] = (timer.median(lambda i: plan.trainForward(TrainForward(
        xs[i % nbuf], ys[i % nbuf], scale, bias, mean, var, skipped, savemean, saveinvvar, 0.1)), repeats), 2 * nbytes)
    results["eval forward"] = (timer.median(lambda i: plan.evalForward(EvalForward(
        xs[i % nbuf], ys[i % nbuf], scale, bias, mean, var)), repeats), 2 * nbytes)

    # NOTE: the output buffers double as the incoming gradients; a third set holds dx
    dxs = [gpu.empty(shape3, dtype) for _ in range(nbuf)]
    results["backward"] = (timer.median(lambda i: plan.backward(Backward(
        xs[i % nbuf], ys[i % nbuf], dxs[i % nbuf], scale, savemean, saveinvvar, scalegrad, biasgrad)), repeats),
        3 * nbytes)
    return results


def benchmarkTorch(torch, timer, shape, dtype, repeats):
    F = torch.nn.functional
    tdtype = torch.float16 if dtype == np.float16 else torch.float32
    maps = shape[1]
    nbytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    nbuf = max(1, min(4, -(-ROTATE_BYTES // nbytes)))

    xs = [torch.full(shape, 1.0 + 0.1 * i, dtype=tdtype, device="cuda") for i in range(nbuf)]
    gs = [torch.ones(shape, dtype=tdtype, device="cuda") for _ in range(nbuf)]
    weight, bias = torch.ones(maps, device="cuda"), torch.zeros(maps, device="cuda")
    mean, var = torch.zeros(maps, device="cuda"), torch.ones(maps, device="cuda")

    results = {}
    with torch.no_grad():
        results["train forward"] = timer.median(
            lambda i: F.batch_norm(xs[i % nbuf], mean, var, weight, bias, True, 0.1, 1e-5), repeats)
        results["eval forward"] = timer.median(
            lambda i: F.batch_norm(xs[i % nbuf], mean, var, weight, bias, False, 0.1, 1e-5), repeats)

    x = xs[0].clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    b = bias.clone().requires_grad_(True)
    y = F.batch_norm(x, mean, var, w, b, True, 0.1, 1e-5)
    results["backward"] = timer.median(
        lambda i: torch.autograd.grad(y, (x, w, b), gs[i % nbuf], retain_graph=True), repeats)
    return results


def copyBandwidth(cuda, gpu, timer):
    n = 1 << 30
    src, dst = gpu.empty((n,), np.uint8), gpu.empty((n,), np.uint8)
    ms = timer.median(lambda i: cuda.memcpy_dtod(dst.ptr, src.ptr, n), 20)
    return 2 * n / (ms * 1e-3)


def main():
    args = parseArgs()
    os.environ.setdefault("PUZZLELIB_BACKEND", "cuda")

    import pycuda.driver as cuda

    from PuzzleLib.Backend.Cuda import BatchNormKernels as bn
    from PuzzleLib.Backend.Cuda import Driver
    from PuzzleLib.Backend.Cuda import GPUArray as gpu

    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.backends.cudnn.enabled = True
        except ImportError:
            torch = None

    timer = Timer(cuda)
    copyBw = copyBandwidth(cuda, gpu, timer)
    torchTimer = Timer(cuda, torch) if torch is not None else None

    cases = [(shape, dtype) for dtype in (np.float32, np.float16) for shape in RESNET50 + PER_ACTIVATION]
    if not args.no_huge:
        cases.append((HUGE, np.float16))

    header = "| shape | dtype | pass | ours (ms) | GB/s | of copy bw | torch (ms) | torch / ours |"
    lines = [header, "|" + "---|" * 8]
    print(header, flush=True)

    for shape, dtype in cases:
        try:
            ours = benchmarkOurs(gpu, bn, timer, shape, dtype, args.repeats)
        except (MemoryError, cuda.Error) as e:
            print("%s %s: skipped (%s)" % (shape, np.dtype(dtype).name, e), file=sys.stderr)
            continue

        theirs = {}
        if torch is not None:
            try:
                theirs = benchmarkTorch(torch, torchTimer, shape, dtype, args.repeats)
            except (RuntimeError, MemoryError) as e:
                print("torch %s %s: %s" % (shape, np.dtype(dtype).name, e), file=sys.stderr)
            torch.cuda.empty_cache()

        for name, (ms, nbytes) in ours.items():
            bw = nbytes / (ms * 1e-3)
            tms = theirs.get(name)
            line = "| %s | %s | %s | %.3f | %.0f | %.2f | %s | %s |" % (
                "x".join(map(str, shape)), np.dtype(dtype).name, name, ms, bw / 1e9, bw / copyBw,
                "%.3f" % tms if tms is not None else "n/a", "%.2f" % (tms / ms) if tms is not None else "n/a")
            lines.append(line)
            print(line, flush=True)

        gpu.memoryPool.freeHeld()

    meta = [
        "# Batch normalization benchmark",
        "",
        "- device: %s (%d SMs), %s" % (Driver.deviceName(), Driver.multiprocessorCount(), Driver.arch()),
        "- date: %s, commit: %s" % (datetime.datetime.now().isoformat(timespec="seconds"), gitCommit()),
        "- device-to-device copy bandwidth (read + write): %.0f GB/s" % (copyBw / 1e9),
        "- torch: %s" % (("%s, cuDNN %s" % (torch.__version__, torch.backends.cudnn.version())) if torch else "absent"),
        "- median of %d runs per entry, buffers rotated over %d MiB" % (args.repeats, ROTATE_BYTES >> 20),
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(meta + lines) + "\n")
    print("\n".join(meta))


if __name__ == "__main__":
    main()
