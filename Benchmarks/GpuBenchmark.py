"""Batch-normalization throughput on the GPU: the project's kernels against the copy bandwidth and against PyTorch.

For each case (shape, layout, dtype) it times the training forward, the evaluation forward and the backward (CUDA
events, median of `--repeats` runs). Every call of either library takes the next of a set of input and output buffers
that together hold at least `ROTATE_BYTES` (several times an H100's or H200's 50-60 MB L2; at most `MAX_BUFFERS`
buffers), so no call finds its data in L2; PyTorch's backward gets a fresh forward graph per buffer for the same
reason. It reports

- the effective bandwidth: bytes that must move (forward: read x, write y; backward: read x and dy, write dx) over
  the time, and that as a fraction of the device-to-device copy bandwidth measured in the same run;
- the time of ``torch.nn.functional.batch_norm`` (cuDNN where PyTorch uses it) on the same data in the same layout,
  when torch imports, as the ratio torch time / our time (above 1: ours is faster);
- geometric means over the ResNet-50 cases (fraction of copy bandwidth per pass) and of the ratio (all cases,
  per-activation cases), and the lowest ratio.

Layouts: ``nchw`` (channels first: the spatial kernels), ``nhwc`` (channels last: the rows kernels over
(N * H * W, C)), ``rows`` (per-activation (N, C) data) and ``spatial`` (channels first of any rank).

It prints a Markdown table and writes it, with the device name, date and git commit, to ``--out``.

    PUZZLELIB_BACKEND=cuda python3 Benchmarks/GpuBenchmark.py --out out/benchmark.md
"""

import argparse
import datetime
import math
import os
import statistics
import subprocess
import sys

import numpy as np

RESNET50 = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7)]
PER_ACTIVATION = [(256, 4096), (8192, 1024), (125000, 50)]
# NOTE: few channels, or few elements per channel: the shapes where lanes across channels sit idle
FEW_CHANNELS = [((10**8, 1), "rows"), ((10**6, 3), "rows"), ((4096, 8), "rows"), ((1, 10**5, 2), "spatial"),
                ((64, 4096, 3), "spatial")]
HUGE = (64, 256, 384, 384)  # 2.4e9 elements: 64-bit indexing, fp16 only (4.8 GB)
ROTATE_BYTES = 512 << 20
# NOTE: so a tensor under ROTATE_BYTES / MAX_BUFFERS (512 KB) may still meet its data in L2
MAX_BUFFERS = 1024


def cases(huge):
    """[(shape, layout, dtype)] of the run: ResNet-50's batch-norm inputs at batch 32 in both layouts, the
    per-activation and few-channel shapes, in float32 and float16; the huge tensor last when asked for."""
    result = []
    for dtype in (np.float32, np.float16):
        result += [(shape, layout, dtype) for layout in ("nchw", "nhwc") for shape in RESNET50]
        result += [(shape, "rows", dtype) for shape in PER_ACTIVATION]
        result += [(shape, layout, dtype) for shape, layout in FEW_CHANNELS]
    if huge:
        result.append((HUGE, "nchw", np.float16))
    return result


def buffersFor(nbytes):
    """How many buffers of `nbytes` a rotation needs to hold `ROTATE_BYTES` (at least 2)."""
    return max(2, min(MAX_BUFFERS, -(-ROTATE_BYTES // nbytes)))


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


def shape3Of(shape, layout):
    """The (outer, maps, inner) view the project's kernels see: channels last is (N * H * W, C, 1)."""
    if layout == "nhwc":
        return (int(np.prod(shape[:1] + shape[2:], dtype=np.int64)), shape[1], 1)
    return (shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1)


def benchmarkOurs(gpu, bn, timer, shape, layout, dtype, repeats):
    """The CUDA plan's primitives (`Backend.Cuda.BatchNormKernels.CudaPlan`) on the (outer, maps, inner) view of
    `shape`, with preallocated outputs."""
    from PuzzleLib.Backend.BatchNormLayout import layoutOf
    from PuzzleLib.Backend.Contract import Backward, EvalForward, PlanOptions, TrainForward
    from PuzzleLib.Backend.Cuda import backend

    shape3 = shape3Of(shape, layout)
    maps = shape3[1]
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    nbuf = buffersFor(nbytes)
    plan = bn.plan(backend, layoutOf(shape3, (0, 2)), np.dtype(dtype), PlanOptions(1e-5))

    def filled(i):
        return gpu.empty(shape3, dtype).fill(1.0 + 0.1 * (i % 7))

    xs = [filled(i) for i in range(nbuf)]
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

    # NOTE: the output buffers double as the incoming gradients; a third set holds dx (x of the next buffer is the
    # saved input, so that x, dy and dx are three different buffers of the rotation)
    results["backward"] = (timer.median(lambda i: plan.backward(Backward(
        xs[(i + 1) % nbuf], ys[i % nbuf], xs[i % nbuf], scale, savemean, saveinvvar, scalegrad, biasgrad)), repeats),
        3 * nbytes)
    return results


def benchmarkTorch(torch, timer, shape, layout, dtype, repeats):
    F = torch.nn.functional
    tdtype = torch.float16 if dtype == np.float16 else torch.float32
    memoryFormat = torch.channels_last if layout == "nhwc" else torch.contiguous_format
    maps = shape[1]
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    nbuf = buffersFor(nbytes)

    def tensor(value):
        return torch.full(shape, value, dtype=tdtype, device="cuda").contiguous(memory_format=memoryFormat)

    xs = [tensor(1.0 + 0.1 * (i % 7)) for i in range(nbuf)]
    weight, bias = torch.ones(maps, device="cuda"), torch.zeros(maps, device="cuda")
    mean, var = torch.zeros(maps, device="cuda"), torch.ones(maps, device="cuda")

    results = {}
    with torch.no_grad():
        results["train forward"] = timer.median(
            lambda i: F.batch_norm(xs[i % nbuf], mean, var, weight, bias, True, 0.1, 1e-5), repeats)
        results["eval forward"] = timer.median(
            lambda i: F.batch_norm(xs[i % nbuf], mean, var, weight, bias, False, 0.1, 1e-5), repeats)
    xs.clear()

    # NOTE: a forward graph per buffer, so that each backward reads an input and a gradient that are not in L2; the
    # graphs hold x and y, the gradients are the y of the next graph
    w, b = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    graphs = []
    for i in range(nbuf):
        x = tensor(1.0 + 0.1 * (i % 7)).requires_grad_(True)
        graphs.append((x, F.batch_norm(x, mean, var, w, b, True, 0.1, 1e-5)))
    results["backward"] = timer.median(lambda i: torch.autograd.grad(
        graphs[i % nbuf][1], (graphs[i % nbuf][0], w, b), graphs[(i + 1) % nbuf][1].detach(), retain_graph=True),
        repeats)
    return results


def geometricMean(values):
    values = [v for v in values if v is not None and v > 0]
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else None


def summary(rows):
    """Lines of the targets' geometric means from the rows (case, pass, fraction of copy bandwidth, ratio)."""
    lines = ["", "Summary (geometric means):", ""]
    for name in ("train forward", "eval forward", "backward"):
        fraction = geometricMean([r[2] for r in rows if r[0][0] in RESNET50 and r[1] == name])
        lines.append("- ResNet-50 shapes, both layouts, fp32 and fp16, %s: %s of copy bandwidth"
                     % (name, "n/a" if fraction is None else "%.2f" % fraction))
    ratios = [r[3] for r in rows if r[3] is not None]
    if ratios:
        lines.append("- torch / ours over all cases: %.2f (lowest %.2f)" % (geometricMean(ratios), min(ratios)))
        perActivation = geometricMean([r[3] for r in rows if r[0][0] in PER_ACTIVATION])
        if perActivation is not None:
            lines.append("- torch / ours over the per-activation cases: %.2f" % perActivation)
    return lines


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

    header = "| shape | layout | dtype | pass | ours (ms) | GB/s | of copy bw | torch (ms) | torch / ours |"
    lines, rows = [header, "|" + "---|" * 9], []
    print(header, flush=True)

    for shape, layout, dtype in cases(not args.no_huge):
        try:
            ours = benchmarkOurs(gpu, bn, timer, shape, layout, dtype, args.repeats)
        except (MemoryError, cuda.Error) as e:
            print("%s %s %s: skipped (%s)" % (shape, layout, np.dtype(dtype).name, e), file=sys.stderr)
            gpu.memoryPool.freeHeld()
            continue
        gpu.memoryPool.freeHeld()

        theirs = {}
        if torch is not None:
            try:
                theirs = benchmarkTorch(torch, torchTimer, shape, layout, dtype, args.repeats)
            except (RuntimeError, MemoryError) as e:
                print("torch %s %s %s: %s" % (shape, layout, np.dtype(dtype).name, e), file=sys.stderr)
            torch.cuda.empty_cache()

        for name, (ms, nbytes) in ours.items():
            bw = nbytes / (ms * 1e-3)
            tms = theirs.get(name)
            rows.append(((shape, layout, dtype), name, bw / copyBw, tms / ms if tms is not None else None))
            line = "| %s | %s | %s | %s | %.3f | %.0f | %.2f | %s | %s |" % (
                "x".join(map(str, shape)), layout, np.dtype(dtype).name, name, ms, bw / 1e9, bw / copyBw,
                "%.3f" % tms if tms is not None else "n/a", "%.2f" % (tms / ms) if tms is not None else "n/a")
            lines.append(line)
            print(line, flush=True)

    lines += summary(rows)
    print("\n".join(summary(rows)), flush=True)

    meta = [
        "# Batch normalization benchmark",
        "",
        "- device: %s (%d SMs), %s" % (Driver.deviceName(), Driver.multiprocessorCount(), Driver.arch()),
        "- date: %s, commit: %s" % (datetime.datetime.now().isoformat(timespec="seconds"), gitCommit()),
        "- device-to-device copy bandwidth (read + write): %.0f GB/s" % (copyBw / 1e9),
        "- torch: %s" % (("%s, cuDNN %s" % (torch.__version__, torch.backends.cudnn.version())) if torch else "absent"),
        "- median of %d runs per entry, each call on the next of buffers that hold at least %d MiB together"
        % (args.repeats, ROTATE_BYTES >> 20),
        "",
    ]
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        f.write("\n".join(meta + lines) + "\n")
    print("\n".join(meta))


if __name__ == "__main__":
    main()
