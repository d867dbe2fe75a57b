"""The main job: ``python -m PuzzleLib [--epochs N] [--seed S] [--plot FILE] [--json FILE] [--skip-demo]
[--backend auto|cuda|cpu]``.

Prints the backend in use; first the seed example and the running-statistics demonstration on the handwritten digits
(`PuzzleLib.TestLib.RunningStatistics`; ``--skip-demo`` leaves them out), then the experiment of Ioffe & Szegedy 2015,
Figure 1: two identical sigmoid networks, one with BatchNorm, trained side by side on the digits
(`PuzzleLib.TestLib.DigitsExperiment`), with a table of test accuracy per epoch and the final BatchNorm attributes.
"""

import argparse
import json
import sys
import time


def positiveInt(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer; got %s" % text)
    return value


def parseArgs(argv=None):
    parser = argparse.ArgumentParser(prog="python -m PuzzleLib", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=("auto", "cuda", "cpu"),
        default=None,
        help="backend to use (default: PUZZLELIB_BACKEND, else auto)",
    )
    parser.add_argument("--epochs", type=positiveInt, default=15, help="training epochs (default: 15)")
    parser.add_argument("--seed", type=int, default=0, help="seed of weights, split and shuffles (default: 0)")
    parser.add_argument("--plot", metavar="FILE", help="save both test-accuracy curves as a PNG (needs matplotlib)")
    parser.add_argument("--json", metavar="FILE", help="save every number of the experiment as JSON")
    parser.add_argument(
        "--skip-demo", action="store_true", help="leave out the seed example and the running-statistics demonstration"
    )
    return parser.parse_args(argv)


def main(argv=None):
    args = parseArgs(argv)
    if args.plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.exit('--plot needs matplotlib, which is not installed: pip install "PuzzleLib[plot]"')

    from PuzzleLib import Config
    from PuzzleLib.TestLib import DigitsExperiment, RunningStatistics

    if args.backend is not None:
        Config.useBackend(args.backend)
    print("PuzzleLib backend in use: %s\n" % Config.currentBackend())

    if not args.skip_demo:
        print("== The seed example: BatchNorm(6) on arange(18) as (3, 6) ==")
        RunningStatistics.seedExample()

        print("\n== Running statistics on real data: handwritten digits (scikit-learn) ==")
        RunningStatistics.runningStatistics()
        print()

    config = dict(DigitsExperiment.defaults, epochs=args.epochs, seed=args.seed)
    print("== Ioffe & Szegedy 2015, Figure 1: a 64-100-100-100-10 sigmoid MLP with and without BatchNorm ==")
    print(
        "1500 training / 297 test digits, pixels scaled to [0, 1]; Gaussian initial weights (std %(wscale)g); "
        "MomentumSGD (learnRate %(learnRate)g, momRate %(momRate)g), batch %(batchsize)d, %(epochs)d epochs, "
        "seed %(seed)d" % config
    )
    start = time.perf_counter()
    result = DigitsExperiment.runExperiment(progress=True, **config)
    result["config"]["backend"] = str(Config.backend)
    result["config"]["seconds"] = time.perf_counter() - start

    print("\n" + DigitsExperiment.formatTable(result))
    print("\nFinal BatchNorm attributes of the BN network (mean [min, max] over the 100 features):")
    print(DigitsExperiment.formatBatchNorm(result))
    print("\ntrained both networks in %.1f s" % result["config"]["seconds"])

    if args.json is not None:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print("numbers saved to %s" % args.json)
    if args.plot is not None:
        DigitsExperiment.plotCurves(result, args.plot)
        print("accuracy curves saved to %s" % args.plot)


if __name__ == "__main__":
    main()
