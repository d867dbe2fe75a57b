"""Every batch-norm kernel family once on small, odd shapes: the workload ``compute-sanitizer`` checks in
``Benchmarks/runOnDevice.sh`` (memcheck: out-of-bounds and misaligned accesses; racecheck: shared-memory races).

Shapes are odd on purpose: lengths that are not multiples of the vector width or of the block, a map count that is
not a multiple of the rows kernels' 32 lanes, a single row, one element per map, 7x7 maps (16-byte vectors over
unaligned segments, with a thread and with a block per map), small maps (a thread per map), 3 maps (3 lanes across
maps), one map (one segment), more columns of blocks in a reduction than the kernels have counters (131075 maps in
rows of one element: 4097 columns of 32 lanes), more maps than an H100's or H200's 132 multiprocessors whose slices a
block holds (the resident passes: 7x7 maps over unaligned segments, 12x12 over aligned ones; blocks of 64 to 96
threads, the last warp partly idle), and fewer, each split over blocks that exchange their sums (3 maps of 7x7 over 5
blocks, 4 of 20x20 over 13, in float32), rows folded into rows of several (3 and 50 maps: a reduction's block merges
a channel's values; 70 maps in float32: rows wider than a block's lanes, in the elementwise passes), maps of 2 and 3
elements in 16-byte vectors (over unaligned segments; in float16's elementwise passes, vectors of several maps), and
the resident passes over rows (40 and 280 maps: a column's rows split over blocks whose last block is partly empty,
columns of partly idle lanes). Each case runs the training forward, the evaluation forward in place, the backward (and
the frozen one), with and without a fused activation and residual, in float32 and float16, and checks the training
output against a float64 reference, so that a kernel that reads the wrong memory fails here too. Exit status 1 on any
mismatch.

    PUZZLELIB_BACKEND=cuda compute-sanitizer --tool memcheck python3 Benchmarks/SanitizerCases.py
"""

import sys

import numpy as np

SHAPES = [(3, 5, 7, 9), (2, 37, 3, 3), (1, 3, 1, 5), (13, 45), (2, 70), (5, 1), (2, 8, 2, 2), (3, 33, 1),
          (4, 6, 7, 7), (40, 3, 7, 7), (2, 500, 2), (300, 3), (77, 1), (4, 131075), (24, 140, 7, 7), (8, 150, 12, 12),
          (16, 4, 20, 20), (8, 50), (6, 24, 3), (203, 40), (90, 280)]


def reference(x, epsilon=1e-5):
    axes = (0,) + tuple(range(2, x.ndim))
    x = x.astype(np.float64)
    mean, var = x.mean(axis=axes, keepdims=True), x.var(axis=axes, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon)


def runCase(shape, dtype, activation, residual):
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Modules.BatchNorm import BatchNorm
    from PuzzleLib.Modules.BatchNorm1D import BatchNorm1D
    from PuzzleLib.Modules.BatchNorm2D import BatchNorm2D

    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal(shape).astype(dtype) * 2 + 1
    kind = {2: BatchNorm, 3: BatchNorm1D, 4: BatchNorm2D}[len(shape)]
    bn = kind(shape[1], activation=activation, initFactor=1.0) if activation else kind(shape[1], initFactor=1.0)
    bn.scale.set(np.ones(bn.scale.shape, np.float32))
    bn.calcMode(dtype)
    z = gpuarray.to_gpu(rng.standard_normal(shape).astype(dtype)) if residual else None
    data = gpuarray.to_gpu(x)
    y = (bn(data, residual=z) if residual else bn(data)).get().astype(np.float64)
    expected = reference(x) + (z.get().astype(np.float64) if residual else 0.0)
    if activation == "relu":
        expected = np.maximum(expected, 0.0)
    tolerance = 2e-2 if dtype == np.float16 else 1e-4
    ok = np.allclose(y, expected, atol=tolerance, rtol=tolerance)
    bn.backward(gpuarray.to_gpu(rng.standard_normal(shape).astype(dtype)))
    bn.evalMode()
    bn(data)
    bn.backward(gpuarray.to_gpu(rng.standard_normal(shape).astype(dtype)))
    return ok


def main():
    failures = 0
    for dtype in (np.float32, np.float16):
        for shape in SHAPES:
            for activation, residual in ((None, False), ("relu", True)):
                if not runCase(shape, dtype, activation, residual):
                    failures += 1
                    print("mismatch: %s %s activation=%s residual=%s" % (shape, np.dtype(dtype).name, activation,
                                                                         residual))
    print("%d cases, %d mismatches" % (2 * 2 * len(SHAPES), failures))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
