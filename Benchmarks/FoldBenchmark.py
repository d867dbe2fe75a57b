"""Inference of a deep stack before and after `Passes.foldBatchNorm` folds each batch norm into the Linear before it.

``python -m PuzzleLib.Benchmarks.FoldBenchmark`` builds ``--layers`` blocks of Linear(maps, maps) and
BatchNorm(maps, activation="relu"), trains it for two steps (so that the running statistics are the data's), and
prints, on the backend in use, for the network in evaluation mode and for its folded copy (Linear then
Activation(relu) per block): the best time of one forward of ``--rows`` rows over ``--repeats``, the pool's peak of
active bytes over that forward (the input's and the parameters' bytes excluded), and the largest difference between
the two outputs.
"""

import argparse
import time

import numpy as np


def build(layers, maps):
    from PuzzleLib.Containers.Sequential import Sequential
    from PuzzleLib.Modules import BatchNorm
    from PuzzleLib.Modules.Linear import Linear

    np.random.seed(0)
    net = Sequential()
    for _ in range(layers):
        net.append(Linear(maps, maps, initscheme="he"))
        net.append(BatchNorm(maps, activation="relu"))
    return net


def measure(net, data, repeats):
    """(output as a host array, peak bytes of one forward above what was active before it, best seconds)."""
    from PuzzleLib.Backend import gpuarray

    best, peak = float("inf"), None
    for step in range(repeats + 1):
        net.reset()
        if step == 1:
            gpuarray.memoryPool.resetStats()
            start = gpuarray.memoryPool.stats()["activeBytes"]
        began = time.perf_counter()
        out = net(data).get()
        if step >= 1:
            best = min(best, time.perf_counter() - began)
        if step == 1:
            peak = gpuarray.memoryPool.stats()["peakActiveBytes"] - start
    net.reset()
    return out, peak, best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--maps", type=int, default=256)
    parser.add_argument("--rows", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Passes import foldBatchNorm

    net = build(args.layers, args.maps)
    host = np.random.normal(1.0, 2.0, (args.rows, args.maps)).astype(np.float32)
    data = gpuarray.to_gpu(host)
    grad = gpuarray.to_gpu((np.random.randn(args.rows, args.maps) * 1e-3).astype(np.float32))
    for _ in range(2):
        net(data)
        net.backward(grad)
        net.updateParams(1e-3)
    net.reset()

    began = time.perf_counter()
    folded = foldBatchNorm(net)
    foldSeconds = time.perf_counter() - began
    net.evalMode()

    arrayMiB = host.nbytes / 2**20
    print(
        "%d blocks of Linear(%d, %d) + BatchNorm(activation=relu), forward of (%d, %d) in evaluation (one array: "
        "%.1f MiB), %s backend; folding took %.1f ms"
        % (args.layers, args.maps, args.maps, args.rows, args.maps, arrayMiB, data.backend.name, foldSeconds * 1e3)
    )
    results = {}
    for way, network in (("unfolded", net), ("folded", folded)):
        out, peak, seconds = measure(network, data, args.repeats)
        results[way] = (out, peak, seconds)
        print("%-9s forward %8.1f ms  peak %8.1f MiB" % (way, seconds * 1e3, peak / 2**20))
    unfolded, folded = results["unfolded"], results["folded"]
    scale = max(1.0, float(np.abs(unfolded[0]).max()))
    print(
        "folded against unfolded: time %.2fx, memory %.2fx; largest output difference %.2e (relative to the largest "
        "output %.2e)"
        % (folded[2] / unfolded[2], folded[1] / unfolded[1], np.abs(folded[0] - unfolded[0]).max() / scale, scale)
    )


if __name__ == "__main__":
    main()
