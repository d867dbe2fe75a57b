"""The main job: ``python -m PuzzleLib [--backend auto|cuda|cpu]``.

Prints the backend in use, runs the seed example, then streams the handwritten-digits set through BatchNorm(64) to
show how the running statistics approach the data's own (see `PuzzleLib.TestLib.RunningStatistics`).
"""

import argparse
import os


def parseArgs(argv=None):
    parser = argparse.ArgumentParser(prog="python -m PuzzleLib", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=("auto", "cuda", "cpu"),
        default=None,
        help="backend to use (default: PUZZLELIB_BACKEND, else auto)",
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parseArgs(argv)
    if args.backend is not None:
        os.environ["PUZZLELIB_BACKEND"] = args.backend

    from PuzzleLib import Config
    from PuzzleLib.TestLib import RunningStatistics

    print("PuzzleLib backend in use: %s\n" % Config.backend)

    print("== The seed example: BatchNorm(6) on arange(18) as (3, 6) ==")
    RunningStatistics.seedExample()

    print("\n== Running statistics on real data: handwritten digits (scikit-learn) ==")
    RunningStatistics.runningStatistics()


if __name__ == "__main__":
    main()
