"""Memory and time of a deep stack trained three ways: batch norm and its activation as separate modules, fused into
one module, and InPlace-ABN (Rota Bulo et al. 2018, arXiv 1712.02616).

``python -m PuzzleLib.Benchmarks.InplaceBenchmark`` builds ``--layers`` blocks of Linear (a 1x1 convolution of
channels-last data: (batch * height * width, maps)) and batch normalization, on the rows of (32, 64, 56, 56) data by
default, and prints for each way the pool's peak of active bytes over one training step (forward + backward, the
parameters' and the input's bytes excluded) and the best time per step of ``--repeats``, run on the backend in use:

- ``separate``: Linear, BatchNorm, Activation("leakyRelu");
- ``fused``: Linear, BatchNorm(activation="leakyRelu"): one pass and one array less per block;
- ``inplace``: Linear, BatchNorm(activation="leakyRelu", inplace=True): the output overwrites the input and backward
  rebuilds it, so a block keeps one array.
"""

import argparse
import time

import numpy as np


def build(way, layers, maps):
    from PuzzleLib.Containers.Sequential import Sequential
    from PuzzleLib.Modules import BatchNorm
    from PuzzleLib.Modules.Activation import Activation
    from PuzzleLib.Modules.Linear import Linear

    np.random.seed(0)
    net = Sequential()
    for _ in range(layers):
        net.append(Linear(maps, maps, initscheme="he"))
        if way == "separate":
            net.append(BatchNorm(maps))
            net.append(Activation("leakyRelu"))
        else:
            net.append(BatchNorm(maps, activation="leakyRelu", inplace=way == "inplace"))
    return net


def measure(way, layers, rows, maps, repeats):
    """(peak bytes of one step above what was active before it, best seconds per step)."""
    from PuzzleLib.Backend import gpuarray

    net = build(way, layers, maps)
    host = np.random.randn(rows, maps).astype(np.float32)
    hostGrad = (np.random.randn(rows, maps) * 1e-3).astype(np.float32)
    data, grad = gpuarray.empty(host.shape, np.float32), gpuarray.empty(host.shape, np.float32)

    best = float("inf")
    for step in range(repeats + 1):
        data.set(host)
        grad.set(hostGrad)
        net.reset()
        if step == 1:
            gpuarray.memoryPool.resetStats()
            start = gpuarray.memoryPool.stats()["activeBytes"]
        began = time.perf_counter()
        net(data)
        net.backward(grad)
        net.grad.get()
        if step >= 1:
            best = min(best, time.perf_counter() - began)
        if step == 1:
            peak = gpuarray.memoryPool.stats()["peakActiveBytes"] - start
    net.reset()
    return peak, best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=4, default=(32, 64, 56, 56), metavar=("N", "C", "H", "W"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    from PuzzleLib.Backend import gpuarray

    n, maps, height, width = args.shape
    rows = n * height * width
    arrayMiB = rows * maps * 4 / 2**20
    backendName = gpuarray.zeros((1,), np.float32).backend.name
    print(
        "%d blocks of Linear + BatchNorm (+ activation) on (%d, %d) rows (%s as channels last; one array: %.1f MiB), "
        "%s backend" % (args.layers, rows, maps, tuple(args.shape), arrayMiB, backendName)
    )
    results = {}
    for way in ("separate", "fused", "inplace"):
        peak, seconds = measure(way, args.layers, rows, maps, args.repeats)
        results[way] = (peak, seconds)
        print(
            "%-9s peak %8.1f MiB (%5.1f arrays per block)  step %8.1f ms"
            % (way, peak / 2**20, peak / 2**20 / arrayMiB / args.layers, seconds * 1e3)
        )
    for way in ("fused", "inplace"):
        print(
            "%s against separate: memory %.2fx, time %.2fx"
            % (way, results[way][0] / results["separate"][0], results[way][1] / results["separate"][1])
        )


if __name__ == "__main__":
    main()
