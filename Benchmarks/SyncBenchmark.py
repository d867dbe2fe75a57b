"""Time per synchronized step: `SyncBatchNorm*` against the same module unsynchronized, on several MPI ranks.

``python -m PuzzleLib.Benchmarks.SyncBenchmark --ranks 2`` starts the ranks itself (`TestLib.MpiLauncher`); each rank
times a training forward + backward of its own batch through the synchronized module and through the plain one
(`BatchNorm`, `BatchNorm2D`: the batch statistics of the rank alone), best of `--repeats` rounds of `--steps` steps,
alternating. The difference is what synchronization costs: the three exchanges (a header and the moments forward,
the gradient sums backward) and the host-side merge. Rank 0 prints one line per shape.
"""

import argparse
import sys
import time

import numpy as np

SHAPES = {
    "BatchNorm": [(64, 100), (256, 4096)],
    "BatchNorm2D": [(8, 64, 28, 28), (16, 256, 14, 14)],
}


def timeSteps(module, data, grad, steps, comm):
    comm.Barrier()
    start = time.perf_counter()
    for _ in range(steps):
        module(data)
        module.backward(grad)
    comm.Barrier()
    return (time.perf_counter() - start) / steps


def runRank(steps, repeats):
    from mpi4py import MPI

    from PuzzleLib import Modules
    from PuzzleLib.Backend import gpuarray

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    lines = []
    for plainName, shapes in SHAPES.items():
        for shape in shapes:
            rng = np.random.default_rng(rank)
            data = gpuarray.to_gpu(rng.normal(size=shape).astype(np.float32))
            grad = gpuarray.to_gpu(rng.normal(size=shape).astype(np.float32))
            plain = getattr(Modules, plainName)(shape[1])
            synced = getattr(Modules, "Sync" + plainName)(shape[1], comm=comm)

            best = {"plain": np.inf, "sync": np.inf}
            for _ in range(repeats):
                best["plain"] = min(best["plain"], timeSteps(plain, data, grad, steps, comm))
                best["sync"] = min(best["sync"], timeSteps(synced, data, grad, steps, comm))
            lines.append(
                "%-12s %-18s %10.3f %10.3f %10.3f"
                % (plainName, shape, 1e3 * best["plain"], 1e3 * best["sync"], 1e3 * (best["sync"] - best["plain"]))
            )

    if rank == 0:
        print(
            "ranks: %d (%s); backend %s; best of %d rounds of %d steps (forward + backward per step)"
            % (comm.Get_size(), MPI.Get_library_version().split(",")[0], data.backend.name, repeats, steps)
        )
        print("%-12s %-18s %10s %10s %10s" % ("module", "local batch", "plain ms", "sync ms", "cost ms"))
        print("\n".join(lines))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        runRank(args.steps, args.repeats)
        return 0

    from PuzzleLib.TestLib import MpiLauncher

    done = MpiLauncher.run(
        args.ranks,
        ["-m", "PuzzleLib.Benchmarks.SyncBenchmark", "--worker", "--steps", str(args.steps), "--repeats",
         str(args.repeats)],
    )
    sys.stdout.write(done.stdout)
    sys.stderr.write(done.stderr)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
