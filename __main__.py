"""The main job: ``python -m PuzzleLib [--epochs N] [--seed S] [--plot FILE] [--json FILE] [--skip-demo]
[--backend auto|cuda|cpu]``.

Prints the backend in use; first the seed example and the running-statistics demonstration on the handwritten digits
(`PuzzleLib.Examples.RunningStatistics`; ``--skip-demo`` leaves them out), then the experiment of Ioffe & Szegedy 2015,
Figure 1: two identical sigmoid networks, one with BatchNorm, trained side by side on the digits
(`PuzzleLib.Examples.DigitsExperiment`), with a table of test accuracy per epoch and the final BatchNorm attributes.

Before any work it checks the options, the backend asked for (``--backend`` or ``PUZZLELIB_BACKEND``), the packages the
run needs (scikit-learn, tqdm; matplotlib for ``--plot``) and the folders of the output files; a problem is one line,
``python -m PuzzleLib: error: ...`` on stderr, and exit status 2. The JSON file is written atomically.
"""

import argparse
import json
import os
import time


def positiveInt(text):
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer; got %s" % text)
    return value


def seedInt(text):
    value = int(text)
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError("must be in [0, 2**32 - 1] (numpy's seed range); got %s" % text)
    return value


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose errors are one line, ``python -m PuzzleLib: error: ...`` on stderr, and exit status 2
    (no usage block, no traceback)."""

    def error(self, message):
        self.exit(2, "%s: error: %s\n" % (self.prog, message))


def buildParser():
    parser = ArgumentParser(prog="python -m PuzzleLib", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend",
        choices=("auto", "cuda", "cpu"),
        default=None,
        help="backend to use (default: PUZZLELIB_BACKEND, else auto)",
    )
    parser.add_argument("--epochs", type=positiveInt, default=15, help="training epochs (default: 15)")
    parser.add_argument("--seed", type=seedInt, default=0, help="seed of weights, split and shuffles (default: 0)")
    parser.add_argument("--plot", metavar="FILE", help="save both test-accuracy curves as a PNG (needs matplotlib)")
    parser.add_argument("--json", metavar="FILE", help="save every number of the experiment as JSON")
    parser.add_argument(
        "--skip-demo", action="store_true", help="leave out the seed example and the running-statistics demonstration"
    )
    return parser


def parseArgs(argv=None):
    return buildParser().parse_args(argv)


def checkOutput(parser, option, path):
    """Refuses `path` for `option` unless its folder exists and can be written and it is not itself a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        parser.error("%s %s: the folder %s does not exist" % (option, path, folder))
    if os.path.isdir(path):
        parser.error("%s %s: a folder, not a file" % (option, path))
    if not os.access(folder, os.W_OK):
        parser.error("%s %s: the folder %s is not writable" % (option, path, folder))


def checkPrerequisites(parser, args):
    """Everything the run needs, checked before any work: the backend, the output folders and the packages. A problem
    is a one-line error (`ArgumentParser.error`, exit status 2)."""
    try:
        from PuzzleLib import Config
    except RuntimeError as e:
        parser.error(str(e))

    asked, source = (args.backend, "--backend ") if args.backend is not None else (Config.backend, "PUZZLELIB_BACKEND=")
    if asked == "cuda":
        problem = Config.cudaProblem()
        if problem is not None:
            parser.error("%scuda: the CUDA backend cannot work here: %s" % (source, problem))

    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is not None:
            checkOutput(parser, option, path)

    needed = [("sklearn", "scikit-learn", "examples"), ("tqdm", "tqdm", "examples")]
    if args.plot is not None:
        needed.append(("matplotlib", "matplotlib", "plot"))
    for module, package, extra in needed:
        try:
            __import__(module)
        except ImportError as e:
            user = "--plot" if extra == "plot" else "the demonstration and the experiment"
            reason = " ".join(str(e).split())
            parser.error(
                '%s needs %s, which cannot be imported (%s): pip install "PuzzleLib[%s]"'
                % (user, package, reason, extra)
            )


def writeJson(result, path):
    """Writes `result` as JSON to `path` atomically (`PuzzleLib.AtomicFile.writeAtomically`): a failure leaves `path`
    as it was and no partial file."""
    from PuzzleLib.AtomicFile import writeAtomically

    def dump(temporary):
        with open(temporary, "w") as f:
            json.dump(result, f, indent=2)

    writeAtomically(path, dump)


def main(argv=None):
    parser = buildParser()
    args = parser.parse_args(argv)
    checkPrerequisites(parser, args)

    from PuzzleLib import Config
    from PuzzleLib.Examples import DigitsExperiment, RunningStatistics

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
    print("\n" + DigitsExperiment.formatExactStatistics(result))
    print("\ntrained both networks in %.1f s" % result["config"]["seconds"])

    if args.json is not None:
        writeJson(result, args.json)
        print("numbers saved to %s" % args.json)
    if args.plot is not None:
        DigitsExperiment.plotCurves(result, args.plot)
        print("accuracy curves saved to %s" % args.plot)


if __name__ == "__main__":
    main()
