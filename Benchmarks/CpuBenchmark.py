"""CPU backend throughput: training forward, forward + backward and evaluation forward of batch normalization.

Prints GB/s (bytes that must move: read x and write y for a forward; for forward + backward also read x and dy and
write dx) for this library's CPU backend, a naive numpy version (``x.mean``, ``x.var``, arithmetic) and, when PyTorch
is installed (it is not a dependency), ``torch.nn.functional.batch_norm`` on the CPU with autograd. Every figure is the
median of several timed runs after a warm-up, each implementation timed in a phase of its own; the last lines give
the geometric means and the ratio to PyTorch.

    python -m PuzzleLib.Benchmarks.CpuBenchmark [--repeats N] [--json FILE]
"""

import argparse
import json
import os
import platform
import time

os.environ.setdefault("PUZZLELIB_BACKEND", "cpu")

import numpy as np  # noqa: E402

from PuzzleLib.Backend import Dnn, gpuarray  # noqa: E402

SHAPES = [(256, 4096), (32, 256, 28, 28), (64, 64, 56, 56), (16, 32, 64, 64)]
EPS = 1e-5
TASKS = ("train", "train+backward", "eval")


def movedBytes(task, nbytes):
    return {"train": 2, "train+backward": 5, "eval": 2}[task] * nbytes


def median(func, repeats):
    func()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def modeOf(shape):
    return "perActivation" if len(shape) == 2 else "spatial"


def libraryCases(host, grad):
    """PuzzleLib's Dnn on the CPU backend; 2D data is normalized per activation, the rest spatially."""
    shape, maps = host.shape, host.shape[1]
    paramShape = (1, maps) + (1,) * (len(shape) - 2)
    x, dy = gpuarray.to_gpu(host), gpuarray.to_gpu(grad)
    scale = gpuarray.to_gpu(np.ones(paramShape, np.float32))
    bias, mean = gpuarray.zeros(paramShape, np.float32), gpuarray.zeros(paramShape, np.float32)
    var = gpuarray.to_gpu(np.ones(paramShape, np.float32))
    out = gpuarray.empty(shape, np.float32)
    mode = modeOf(shape)

    def train():
        return Dnn.batchNormNd(x, scale, bias, mean, var, EPS, 0.1, test=False, mode=mode)

    def trainBackward():
        _, savemean, saveinvvar = train()
        return Dnn.batchNormNdBackward(x, dy, scale, savemean, saveinvvar, EPS, mode=mode)

    def evaluate():
        return Dnn.batchNormNd(x, scale, bias, mean, var, EPS, test=True, mode=mode, out=out)

    return {"train": train, "train+backward": trainBackward, "eval": evaluate}


def numpyCases(host, grad):
    """The naive numpy formulation: x.mean, x.var and broadcast arithmetic (float32)."""
    axes = (0,) if host.ndim == 2 else (0,) + tuple(range(2, host.ndim))
    keep = tuple(1 if axis in axes else dim for axis, dim in enumerate(host.shape))
    scale, bias = np.ones(keep, np.float32), np.zeros(keep, np.float32)
    runMean, runVar = np.zeros(keep, np.float32), np.ones(keep, np.float32)
    m = host.size // host.shape[1]

    def train():
        mu, sigma2 = host.mean(axis=axes, keepdims=True), host.var(axis=axes, keepdims=True)
        invstd = 1.0 / np.sqrt(sigma2 + EPS)
        runMean[...] = 0.9 * runMean + 0.1 * mu
        runVar[...] = 0.9 * runVar + 0.1 * sigma2 * m / (m - 1)
        return (host - mu) * invstd * scale + bias, mu, invstd

    def trainBackward():
        _, mu, invstd = train()
        xhat = (host - mu) * invstd
        dbias, dscale = grad.sum(axis=axes, keepdims=True), (grad * xhat).sum(axis=axes, keepdims=True)
        return scale * invstd / m * (m * grad - dbias - xhat * dscale)

    def evaluate():
        return (host - runMean) / np.sqrt(runVar + EPS) * scale + bias

    return {"train": train, "train+backward": trainBackward, "eval": evaluate}


def torchCases(host, grad):
    import torch
    import torch.nn.functional as F

    maps = host.shape[1]
    x, dy = torch.from_numpy(host), torch.from_numpy(grad)
    xg = x.clone().requires_grad_(True)
    weight = torch.ones(maps, requires_grad=True)
    bias = torch.zeros(maps, requires_grad=True)
    runMean, runVar = torch.zeros(maps), torch.ones(maps)

    def train():
        with torch.no_grad():
            return F.batch_norm(x, runMean, runVar, weight, bias, training=True, momentum=0.1, eps=EPS)

    def trainBackward():
        y = F.batch_norm(xg, runMean, runVar, weight, bias, training=True, momentum=0.1, eps=EPS)
        y.backward(dy)
        xg.grad, weight.grad, bias.grad = None, None, None

    def evaluate():
        with torch.no_grad():
            return F.batch_norm(x, runMean, runVar, weight, bias, training=False, eps=EPS)

    return {"train": train, "train+backward": trainBackward, "eval": evaluate}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per figure (median reported)")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    try:
        import torch

        torchInfo = "PyTorch %s, %d threads" % (torch.__version__, torch.get_num_threads())
    except ImportError:
        torch, torchInfo = None, "PyTorch not installed: its column is empty"

    print("CPU batch-norm throughput, GB/s (median of %d); %s; numpy %s; %s, %d cores"
          % (args.repeats, torchInfo, np.__version__, platform.processor() or platform.machine(), os.cpu_count()))
    header = "%-18s %-15s %10s %10s %10s %14s" % ("shape", "task", "PuzzleLib", "numpy", "PyTorch", "PuzzleLib/torch")
    print(header + "\n" + "-" * len(header))

    rng = np.random.default_rng(0)
    rows = []
    for shape in SHAPES:
        host = rng.normal(0.5, 2.0, size=shape).astype(np.float32)
        grad = rng.normal(0.0, 1.0, size=shape).astype(np.float32)
        suites = {"PuzzleLib": libraryCases(host, grad), "numpy": numpyCases(host, grad)}
        if torch is not None:
            suites["PyTorch"] = torchCases(host, grad)

        # NOTE: each implementation is timed in a phase of its own after a pause: PyTorch's OpenMP workers keep
        # spinning for a while after a call and would take the cores from whatever is timed right after them
        figures = {}
        for name, cases in suites.items():
            time.sleep(0.5)
            for task in TASKS:
                figures[name, task] = movedBytes(task, host.nbytes) / median(cases[task], args.repeats) / 1e9

        for task in TASKS:
            row = {"shape": list(shape), "task": task}
            row.update({name: figures[name, task] for name in suites})
            rows.append(row)
            ratio = row["PuzzleLib"] / row["PyTorch"] if "PyTorch" in row else float("nan")
            print("%-18s %-15s %10.2f %10.2f %10s %14.2f" % (str(shape), task, row["PuzzleLib"], row["numpy"],
                  "%.2f" % row["PyTorch"] if "PyTorch" in row else "-", ratio))

    print("\ngeometric means over the shapes, GB/s:")
    summary = {}
    for task in TASKS:
        taskRows = [row for row in rows if row["task"] == task]
        means = {name: float(np.exp(np.mean([np.log(row[name]) for row in taskRows])))
                 for name in ("PuzzleLib", "numpy", "PyTorch") if name in taskRows[0]}
        summary[task] = means
        ratio = means["PuzzleLib"] / means["PyTorch"] if "PyTorch" in means else float("nan")
        print("  %-15s PuzzleLib %.2f, numpy %.2f, PyTorch %s -> PuzzleLib / PyTorch = %.2f"
              % (task, means["PuzzleLib"], means["numpy"], "%.2f" % means["PyTorch"] if "PyTorch" in means else "-",
                 ratio))

    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "geometricMeans": summary, "pytorch": torchInfo}, f, indent=1)


if __name__ == "__main__":
    main()
