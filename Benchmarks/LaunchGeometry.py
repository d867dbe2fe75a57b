"""The launches the CUDA plan makes on every shape of the GPU benchmark, worked out without a GPU: per case and pass,
each kernel's name (its vector width, segments and walk), grid, block, the bytes one access moves and, on the rows
kernels, the share of lanes across maps that have a map (of the elements of a row, where the rows kernels' rows hold
several of the layout's). It runs the host path on the stand-in driver
(`TestLib.StandInCuda`: no kernel runs, every kernel reports 32 registers, so the grids are those of that occupancy,
not of the compiled kernels'; `Benchmarks.KernelReport` gives those).

    python -m PuzzleLib.Benchmarks.LaunchGeometry [--out FILE]
"""

import argparse
import re
import sys


def launchesOf(plan, shape3, dtype):
    """{pass: [(kernel, grid, block, row width, columns)]} of a training forward, an evaluation forward and a backward
    of `plan` (the row width of the rows kernels: the elements their lanes run across; columns: the blocks across a
    row, `rowColumns`)."""
    from PuzzleLib.Backend.Contract import Backward, EvalForward, TrainForward
    from PuzzleLib.Backend.Cuda import GPUArray as gpu
    from PuzzleLib.Kernels import BatchNorm as declared
    from PuzzleLib.TestLib import StandInCuda

    maps = shape3[1]
    x, y, dx = (gpu.empty(shape3, dtype) for _ in range(3))
    scale, bias, mean, var, savemean, saveinvvar, scalegrad, biasgrad, skipped = (
        gpu.zeros((maps,)) for _ in range(9)
    )
    calls = {
        "train forward": lambda: plan.trainForward(TrainForward(
            x, y, scale, bias, mean, var, skipped, savemean, saveinvvar, 0.1)),
        "eval forward": lambda: plan.evalForward(EvalForward(x, y, scale, bias, mean, var)),
        "backward": lambda: plan.backward(Backward(x, y, dx, scale, savemean, saveinvvar, scalegrad, biasgrad)),
    }
    entries = declared.entries()
    result = {}
    for name, call in calls.items():
        del StandInCuda.launches[:]
        call()
        result[name] = [(f.name, tuple(grid), tuple(block), rowWidth(entries[f.name], args, maps),
                         rowColumns(entries[f.name], args, grid)) for f, grid, block, args in StandInCuda.launches]
    return result


def rowWidth(signature, args, maps):
    """The elements a rows kernel's lanes run across, from its launch's arguments: its `width` (the maps, or the
    elements of several of the layout's rows); the maps for the kernels that take none (not rows kernels)."""
    names = [field for field, _ in signature.fields()]
    return args[names.index("width")] if "width" in names else maps


def rowColumns(signature, args, grid):
    """The blocks across a row of a rows kernel: its grid's first dimension, of which a resident pass over rows has
    its columns of channels times the blocks each is split over (its `splits`)."""
    names = [field for field, _ in signature.fields()]
    return grid[0] // args[names.index("splits")] if "splits" in names else grid[0]


def describe(kernel, columns, block, width, itemsize):
    """(access bytes, share of lanes across a row with an element of it) of one launch ("-" where it does not
    apply)."""
    vector = re.search(r"_v(\d+)", kernel)
    if vector is None:
        return "-", "-"
    vec = int(vector.group(1))
    busy = "%.2f" % (width / (columns * block[0] * vec)) if "Rows" in kernel else "-"
    return str(vec * itemsize), busy


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this Markdown file")
    args = parser.parse_args()

    from PuzzleLib.TestLib import StandInCuda
    StandInCuda.install()

    import numpy as np

    from PuzzleLib.Backend.BatchNormLayout import layoutOf
    from PuzzleLib.Backend.Contract import PlanOptions
    from PuzzleLib.Backend.Cuda import BatchNormKernels, backend
    from PuzzleLib.Benchmarks.GpuBenchmark import cases, shape3Of

    lines = ["| shape | layout | dtype | pass | kernel | grid | block | bytes per access | lanes with a map |",
             "|---|---|---|---|---|---|---|---|---|"]
    for shape, layout, dtype in cases(huge=False):
        shape3 = shape3Of(shape, layout)
        plan = BatchNormKernels.plan(backend, layoutOf(shape3, (0, 2)), np.dtype(dtype), PlanOptions(1e-5))
        for name, launches in launchesOf(plan, shape3, dtype).items():
            for kernel, grid, block, width, columns in launches:
                access, busy = describe(kernel, columns, block, width, np.dtype(dtype).itemsize)
                lines.append("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
                    "x".join(map(str, shape)), layout, np.dtype(dtype).name, name, kernel, grid, block, access, busy
                ))
    text = "\n".join(lines) + "\n"
    sys.stdout.write(text)
    if args.out:
        with open(args.out, "w") as file:
            file.write(text)


if __name__ == "__main__":
    main()
