"""CPU backend throughput of the batch-norm modules against PyTorch's CPU batch norm, in one process.

What is timed is what a user calls: ``BatchNorm(4096)`` on (256, 4096) data (per activation) and ``BatchNorm2D(maps)``
on three image batches, float32, in three tasks: ``train`` (a training forward ``bn(x)``), ``train+backward``
(``bn(x)``, then ``bn.backward(dy)``) and ``eval`` (``bn(x)`` after ``bn.evalMode()``). Each runs on the kernels in use
(`PuzzleLib.Config.cpuKernels`, normally the C ones), on the numpy kernels (``Config.useCpuKernels("numpy")``) and, when
PyTorch is installed (it is not a dependency), as ``torch.nn.functional.batch_norm`` on CPU tensors sharing the same
numpy data: training forward with autograd recording and running statistics (momentum 0.1), forward and
``y.backward(dy)``, evaluation under ``torch.no_grad()``. PyTorch gets `PuzzleLib.Config.cpuThreads` threads, as the
kernels do.

Timing is the best of N rounds in one process, the implementations alternating in blocks: in every round each runs a
block of B calls in a row (``time.perf_counter``), the first of them untimed, and the fastest timed call over all
rounds is reported. Blocks, not single calls, because two implementations called in turn slow each other down:
PyTorch's OpenMP runtime and the C kernels' (two runtimes in one process) keep their worker threads spinning for a
while after a call, and a call that starts while the other runtime's workers spin waits for a core; where this was
written, calls alternating one by one ran (256, 4096) 1.5 to 2 times slower for both libraries than calls in a row,
which is what a training loop makes (``--block 1`` times one call of each in turn, the old way). Throughput counts the
bytes that must move: read x and write y for a forward (2 x the data's bytes), and x, y, then x, dy and dx for
forward + backward (5 x). Every figure is also given as a percentage of this machine's copy bandwidth, measured in the
same run and the same way: copies of a 256 MB float32 buffer into another (``np.copyto`` on `cpuThreads` Python
threads, each on its slice, and torch's ``copy_`` when present: the faster), counted as read + write. Targets:
PuzzleLib / PyTorch >= 1.5 for training and training + backward on every shape, >= 1.0 for the geometric mean of
evaluation.

A second table gives the Python cost of one call on a tiny input, ``BatchNorm(64)`` on (16, 64): the median over many
calls, taken in alternating rounds of 100 calls of each, of the module, of `Backend.Dnn` with the module's arrays, of
the call's plan (`Backend.BatchNormPlan`: the primitive of the chosen kernels, given its record of preallocated
arrays), next to PyTorch's ``F.batch_norm`` (its backward alone through ``torch.autograd.grad``).

    python -m PuzzleLib.Benchmarks.CpuBenchmark [--repeats N] [--block B] [--calls N] [--json FILE]
"""

import argparse
import datetime
import json
import math
import os
import platform
import threading
import time

os.environ.setdefault("PUZZLELIB_BACKEND", "cpu")

import numpy as np  # noqa: E402

from PuzzleLib import Config  # noqa: E402
from PuzzleLib.Backend import Dnn, gpuarray  # noqa: E402
from PuzzleLib.Backend.Contract import Backward, EvalForward, PlanOptions, TrainForward  # noqa: E402
from PuzzleLib.Backend.Cpu import BatchNormKernels, SourceLibrary  # noqa: E402
from PuzzleLib.Modules.BatchNorm import BatchNorm  # noqa: E402
from PuzzleLib.Modules.BatchNorm2D import BatchNorm2D  # noqa: E402

SHAPES = [(256, 4096), (32, 256, 28, 28), (64, 64, 56, 56), (16, 32, 64, 64)]
TASKS = ("train", "train+backward", "eval")
MOVES = {"train": 2, "train+backward": 5, "eval": 2}
TARGETS = {"train": 1.5, "train+backward": 1.5, "eval": 1.0}
NAMES = ("PuzzleLib", "numpy", "PyTorch")
EPS, MOMENTUM = 1e-5, 0.1
COPY_BYTES = 256 * 2**20
TINY = (16, 64)


def processorName():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernelsInUse():
    """The batch-norm kernels float32 data runs on ("c" or "numpy", building the C ones now) and whether the C
    library has OpenMP (None when it is not in use)."""
    name = BatchNormKernels.implementation(np.dtype(np.float32), PlanOptions(EPS)).name
    return name, bool(SourceLibrary.libraries["BatchNorm.c"].bnHasOpenMP()) if name == "c" else None


def timed(func):
    start = time.perf_counter()
    func()
    return time.perf_counter() - start


def bestInBlocks(funcs, repeats, block):
    """``{name: best seconds}`` of `funcs` (``{name: callable}``) over `repeats` rounds; in each round every function
    runs `block` calls in a row, the first untimed when `block` > 1 (one warm-up call each comes first when it is 1)."""
    if block == 1:
        for func in funcs.values():
            func()
    best = dict.fromkeys(funcs, math.inf)
    for _ in range(repeats):
        for name, func in funcs.items():
            if block > 1:
                func()
            for _ in range(max(block - 1, 1)):
                best[name] = min(best[name], timed(func))
    return best


def copyBandwidth(torch, threads, repeats, block):
    """GB/s of the faster of a threaded ``np.copyto`` and torch's ``copy_`` of `COPY_BYTES`, counted as read +
    write."""
    src = np.ones(COPY_BYTES // 4, np.float32)
    dst = np.zeros_like(src)
    bounds = np.linspace(0, src.size, threads + 1).astype(int)
    slices = [slice(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]

    def threadedCopy():
        # NOTE: np.copyto releases the GIL, so the slices are copied in parallel
        workers = [threading.Thread(target=np.copyto, args=(dst[part], src[part])) for part in slices]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    funcs = {"numpy": threadedCopy}
    if torch is not None:
        tsrc, tdst = torch.from_numpy(src), torch.from_numpy(dst)
        funcs["torch"] = lambda: tdst.copy_(tsrc)
    return 2 * src.nbytes / min(bestInBlocks(funcs, repeats, block).values()) / 1e9


def makeModule(maps, ndim):
    return BatchNorm(maps) if ndim == 2 else BatchNorm2D(maps)


def withKernels(name, func):
    def call():
        with Config.useCpuKernels(name):
            return func()

    return call


def moduleCases(host, grad):
    """The module's three tasks; the evaluation on an instance of its own in evaluation mode."""
    x, dy = gpuarray.to_gpu(host), gpuarray.to_gpu(grad)
    bn, bnEval = makeModule(host.shape[1], host.ndim), makeModule(host.shape[1], host.ndim)
    bnEval.evalMode()

    def trainBackward():
        bn(x)
        bn.backward(dy)

    return {"train": lambda: bn(x), "train+backward": trainBackward, "eval": lambda: bnEval(x)}


def torchCases(torch, host, grad):
    import torch.nn.functional as F

    maps = host.shape[1]
    x, dy = torch.from_numpy(host), torch.from_numpy(grad)
    xg = x.clone().requires_grad_(True)
    weight, bias = torch.ones(maps, requires_grad=True), torch.zeros(maps, requires_grad=True)
    runMean, runVar = torch.zeros(maps), torch.ones(maps)

    def train():
        return F.batch_norm(xg, runMean, runVar, weight, bias, training=True, momentum=MOMENTUM, eps=EPS)

    def trainBackward():
        train().backward(dy)
        xg.grad, weight.grad, bias.grad = None, None, None

    def evaluate():
        with torch.no_grad():
            return F.batch_norm(x, runMean, runVar, weight, bias, training=False, eps=EPS)

    return {"train": train, "train+backward": trainBackward, "eval": evaluate}


def throughputRows(torch, copyRate, repeats, block):
    """One row per shape and task: GB/s of each implementation, its % of `copyRate`, the ratio to PyTorch."""
    rng = np.random.default_rng(0)
    rows = []
    for shape in SHAPES:
        host = rng.normal(0.5, 2.0, size=shape).astype(np.float32)
        grad = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
        suites = {"PuzzleLib": moduleCases(host, grad)}
        suites["numpy"] = {task: withKernels("numpy", func) for task, func in moduleCases(host, grad).items()}
        if torch is not None:
            suites["PyTorch"] = torchCases(torch, host, grad)

        for task in TASKS:
            best = bestInBlocks({name: cases[task] for name, cases in suites.items()}, repeats, block)
            rates = {name: MOVES[task] * host.nbytes / seconds / 1e9 for name, seconds in best.items()}
            row = {"shape": list(shape), "task": task, "seconds": best, "GBps": rates,
                   "percentOfCopy": {name: 100 * rate / copyRate for name, rate in rates.items()}}
            mark = ""
            if torch is not None:
                row["ratio"] = rates["PuzzleLib"] / rates["PyTorch"]
                # NOTE: the evaluation target is on the geometric mean only
                mark = "" if task == "eval" else verdict(row["ratio"], TARGETS[task])
            rows.append(row)
            printRow(str(shape), task, row, mark)
    return rows


def cell(figures, name, form):
    return form % figures[name] if name in figures else "-"


def verdict(ratio, target):
    return "meets" if ratio >= target else "MISSES"


def printRow(label, task, row, mark=""):
    figures = "  ".join("%7s %4s" % (cell(row["GBps"], name, "%.2f"), cell(row["percentOfCopy"], name, "%.0f%%"))
                        for name in NAMES)
    ratio = "  %6.2fx  %s" % (row["ratio"], mark) if "ratio" in row else ""
    print(("%-18s %-15s %s%s" % (label, task, figures, ratio)).rstrip())


def geometricMeans(rows, copyRate):
    """Per task: the geometric means of each column and, with PyTorch, their ratio, the worst ratio and the verdict."""
    summary = {}
    for task in TASKS:
        taskRows = [row for row in rows if row["task"] == task]
        rates = {name: float(np.exp(np.mean([np.log(row["GBps"][name]) for row in taskRows])))
                 for name in taskRows[0]["GBps"]}
        entry = {"GBps": rates, "percentOfCopy": {name: 100 * rate / copyRate for name, rate in rates.items()}}
        if "PyTorch" in rates:
            entry["ratio"] = rates["PuzzleLib"] / rates["PyTorch"]
            entry["worstRatio"] = min(row["ratio"] for row in taskRows)
            # NOTE: training targets hold on every shape, the evaluation target on the geometric mean
            judged = entry["ratio"] if task == "eval" else entry["worstRatio"]
            entry["target"] = TARGETS[task]
            entry["verdict"] = verdict(judged, TARGETS[task])
        summary[task] = entry
    return summary


def printSummary(summary):
    print("geometric means:")
    for task, entry in summary.items():
        mark = ""
        if "ratio" in entry:
            judged = "the geometric mean" if task == "eval" else "every shape (worst %.2fx)" % entry["worstRatio"]
            mark = "target >= %.1fx on %s: %s" % (entry["target"], judged, entry["verdict"])
        printRow("", task, entry, mark)


def medianCalls(funcs, calls, block=100):
    """``{name: median microseconds of one call}`` of `funcs` (``{name: callable}``) over `calls` calls each, taken in
    rounds of `block` calls of every function in turn (after as many warm-up calls as a tenth), so that the machine's
    slow and fast phases weigh on every function alike."""
    times = {name: [] for name in funcs}
    for func in funcs.values():
        for _ in range(max(calls // 10, 1)):
            func()
    for _ in range(max(calls // block, 1)):
        for name, func in funcs.items():
            times[name].extend(timed(func) for _ in range(block))
    return {name: float(np.median(values)) * 1e6 for name, values in times.items()}


def overheadTable(torch, calls):
    """``{level: {task: µs}}`` on the tiny input: the module, `Dnn`, the call's plan, PyTorch."""
    rng = np.random.default_rng(1)
    host, grad = (rng.normal(size=TINY).astype(np.float32) for _ in range(2))
    maps = TINY[1]
    x, dy = gpuarray.to_gpu(host), gpuarray.to_gpu(grad)
    bn, bnEval = BatchNorm(maps), BatchNorm(maps)
    bnEval.evalMode()
    bn(x)

    # NOTE: Dnn takes per-map arrays of the data's rank: the module's (1, 64, 1, 1) ones fit a (16, 64, 1, 1) view
    xd, dyd, axes = x.reshape(TINY + (1, 1)), dy.reshape(TINY + (1, 1)), bn.normalizedAxes
    plan = bn.planOf(x)
    out, ingrad = gpuarray.empty(TINY, np.float32), gpuarray.empty(TINY, np.float32)
    perMap = [gpuarray.empty(bn.scale.shape, np.float32) for _ in range(4)]
    # NOTE: the module's default: the running update guarded against non-finite batch statistics
    skipped = gpuarray.zeros(bn.scale.shape, np.float32)
    train = TrainForward(x, out, bn.scale, bn.bias, bn.mean, bn.var, skipped, perMap[0], perMap[1], MOMENTUM)
    backward = Backward(x, dy, ingrad, bn.scale, bn.savemean, bn.saveinvvar, perMap[2], perMap[3])
    evaluate = EvalForward(x, out, bn.scale, bn.bias, bn.mean, bn.var)

    levels = {
        "module": {"train": lambda: bn(x), "backward": lambda: bn.backward(dy), "eval": lambda: bnEval(x)},
        "Dnn": {
            "train": lambda: Dnn.batchNormNd(xd, bn.scale, bn.bias, bn.mean, bn.var, EPS, MOMENTUM, mode=axes),
            "backward": lambda: Dnn.batchNormNdBackward(xd, dyd, bn.scale, bn.savemean, bn.saveinvvar, EPS, axes),
            "eval": lambda: Dnn.batchNormNd(xd, bn.scale, bn.bias, bn.mean, bn.var, EPS, test=True, mode=axes),
        },
        "%s plan" % plan.name: {
            "train": lambda: plan.trainForward(train), "backward": lambda: plan.backward(backward),
            "eval": lambda: plan.evalForward(evaluate),
        },
    }
    if torch is not None:
        levels["PyTorch"] = tinyTorch(torch, host, grad)
    tasks = {(level, task): func for level, funcs in levels.items() for task, func in funcs.items()}
    medians = medianCalls(tasks, calls)
    return {level: {task: medians[level, task] for task in funcs} for level, funcs in levels.items()}


def tinyTorch(torch, host, grad):
    import torch.nn.functional as F

    maps = host.shape[1]
    x, dy = torch.from_numpy(host).requires_grad_(True), torch.from_numpy(grad)
    weight, bias = torch.ones(maps, requires_grad=True), torch.zeros(maps, requires_grad=True)
    runMean, runVar = torch.zeros(maps), torch.ones(maps)

    def train():
        return F.batch_norm(x, runMean, runVar, weight, bias, training=True, momentum=MOMENTUM, eps=EPS)

    def evaluate():
        with torch.no_grad():
            return F.batch_norm(x, runMean, runVar, weight, bias, training=False, eps=EPS)

    y = train()
    # NOTE: the backward alone, on a kept graph: autograd.grad returns the gradients instead of accumulating them
    return {"train": train, "backward": lambda: torch.autograd.grad(y, (x, weight, bias), dy, retain_graph=True),
            "eval": evaluate}


def printOverhead(table, calls):
    print("\nper-call time on a tiny input, BatchNorm(64) on %s float32, median of %d calls, µs:" % (TINY, calls))
    print("%-14s %9s %9s %9s" % ("level", "train", "backward", "eval"))
    for level, times in table.items():
        print("%-14s %9.1f %9.1f %9.1f" % (level, times["train"], times["backward"], times["eval"]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="rounds per figure (the best call is reported)")
    parser.add_argument("--block", type=int, default=3,
                        help="calls in a row per implementation and round, the first untimed (1: one timed call each)")
    parser.add_argument("--calls", type=int, default=2000, help="calls per figure of the per-call table (median)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    try:
        import torch

        torch.set_num_threads(Config.cpuThreads)
        torchVersion = torch.__version__
    except ImportError:
        torch, torchVersion = None, None

    kernels, openMP = kernelsInUse()
    kernelsText = kernels if openMP is None else "%s (%s OpenMP)" % (kernels, "with" if openMP else "without")
    processor, date = processorName(), datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    torchText = "PyTorch %s" % torchVersion if torch else "PyTorch not installed: its column is -"
    print("%s; %s, %d cores; %d threads; kernels %s; numpy %s; %s"
          % (date, processor, os.cpu_count(), Config.cpuThreads, kernelsText, np.__version__, torchText))
    if args.repeats < 1 or args.block < 1:
        parser.error("--repeats and --block must be at least 1")
    copyRate = copyBandwidth(torch, Config.cpuThreads, args.repeats, args.block)
    print("copy bandwidth %.2f GB/s (read + write); throughput: GB/s and %% of it; the best of %d rounds of blocks of "
          "%d calls" % (copyRate, args.repeats, args.block))

    header = "%-18s %-15s %s  %7s" % ("shape", "task", "  ".join("%12s" % name for name in NAMES), "ratio")
    print(header + "\n" + "-" * len(header))
    rows = throughputRows(torch, copyRate, args.repeats, args.block)
    summary = geometricMeans(rows, copyRate)
    print("-" * len(header))
    printSummary(summary)
    overhead = overheadTable(torch, args.calls)
    printOverhead(overhead, args.calls)

    if args.json:
        with open(args.json, "w") as f:
            json.dump({
                "rows": rows, "geometricMeans": summary, "copyGBps": copyRate, "overheadMicroseconds": overhead,
                "threads": Config.cpuThreads, "kernels": kernels, "openMP": openMP, "torch": torchVersion,
                "numpy": np.__version__, "processor": processor, "date": date, "repeats": args.repeats,
                "block": args.block, "calls": args.calls,
            }, f, indent=1)


if __name__ == "__main__":
    main()
