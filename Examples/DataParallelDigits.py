"""Data-parallel training with synchronized batch normalization: the main job's BatchNorm network on several processes.

The 64-100-100-100-10 sigmoid network of `DigitsExperiment` (same initial weights, batches and MomentumSGD) trains
over N MPI ranks, its ``BatchNorm`` layers replaced by ``SyncBatchNorm`` with the same scale, bias and statistics. Each
step takes the main job's global batch of 60 images and splits it unequally (`split`: 33 + 27 on 2 ranks, 26 + 20 + 14
on 3). Every rank then follows one rule, which makes the run equal to a single process on the whole batch:

1. the cost gradient of each rank, ``(onehot - p) / localBatch``, is scaled by ``localBatch / 60``: the gradient of the
   global mean loss restricted to the rank's rows;
2. backward: SyncBatchNorm exchanges its sums, so its scale and bias gradients are already those of the global batch,
   identical on every rank, and are left alone;
3. the gradients of the other parameters (the Linear layers) are summed over the ranks (one ``Allreduce``, SUM) before
   ``optimizer.update()``; every rank then holds the same weights.

Every epoch all ranks evaluate the test set (no communication in evaluation). At the end rank 0 runs the single-process
reference, ``DigitsExperiment.runExperiment(epochs, seed)``, and prints both test accuracies per epoch, the largest
difference between the final weights and running statistics of the two networks, and the time per step.

Run::

    python -m PuzzleLib.Examples.DataParallelDigits --ranks 2 [--epochs 15] [--seed 0] [--json FILE]

which starts itself on N processes through `MpiLauncher` (``mpiexec -n N python -m mpi4py -m ...``); a program already
started by mpiexec does the work itself. ``PUZZLELIB_BACKEND`` chooses the ranks' backend.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from PuzzleLib.Examples import DigitsExperiment

BATCH = DigitsExperiment.defaults["batchsize"]


def split(batch, ranks, skew=3):
    """Rows per rank of a global batch, unequal on purpose: ``batch // ranks + s * (ranks - 1 - 2r)`` for rank r, the
    remainder on rank 0, with s = `skew` or less so that every rank keeps at least one row (60 -> [33, 27],
    [26, 20, 14], [24, 18, 12, 6])."""
    if not 1 <= ranks <= batch:
        raise ValueError("cannot split a batch of %d over %d ranks" % (batch, ranks))
    share = batch // ranks
    s = min(skew, (share - 1) // (ranks - 1)) if ranks > 1 else 0
    sizes = [share + s * (ranks - 1 - 2 * r) for r in range(ranks)]
    sizes[0] += batch - sum(sizes)
    return sizes


class TimedComm:
    """Passes every call to an mpi4py communicator and adds the seconds spent in it to `seconds` (waiting for the
    other ranks included): given to SyncBatchNorm's exchanges, it measures them without touching the module's code."""

    def __init__(self, comm):
        self.comm, self.seconds = comm, 0.0

    def __getattr__(self, name):
        attr = getattr(self.comm, name)
        if not callable(attr):
            return attr

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return timed


def buildSyncNet(seed, comm):
    """The main job's BN network for `seed` (`DigitsExperiment.buildPair`), each BatchNorm swapped for a SyncBatchNorm
    on `comm` with the same name, scale, bias, mean and var."""
    from PuzzleLib.Containers import Sequential
    from PuzzleLib.Modules import BatchNorm, SyncBatchNorm

    _, bnNet = DigitsExperiment.buildPair(seed)
    net = Sequential(name=bnNet.name)
    for name, module in zip(bnNet.names, bnNet.modules, strict=True):
        if isinstance(module, BatchNorm):
            sync = SyncBatchNorm(module.size, name=name, comm=comm)
            for attr in ("scale", "bias", "mean", "var"):
                getattr(sync, attr).set(getattr(module, attr))
            module = sync
        net.append(module)
    return net


def state(net):
    """{name: float64 host array} of every parameter and running statistic of `net`."""
    from PuzzleLib.Modules import BatchNorm

    arrays = {name: var.data.get().astype(np.float64) for name, var in net.namedVars().items()}
    for name, module in zip(net.names, net.modules, strict=True):
        if isinstance(module, BatchNorm):
            for attr in ("mean", "var"):
                arrays["%s.%s.%s" % (net.name, name, attr)] = getattr(module, attr).get().astype(np.float64)
    return arrays


def sumGradients(comm, variables, flat):
    """Replaces the gradient of every Variable of `variables` by its sum over the ranks, in one Allreduce of the host
    buffer `flat` (float32, as long as all of them together); returns the seconds spent in the Allreduce."""
    from mpi4py import MPI

    offset = 0
    for var in variables:
        flat[offset : offset + var.grad.size] = var.grad.get().ravel()
        offset += var.grad.size
    start = time.perf_counter()
    comm.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
    seconds = time.perf_counter() - start
    offset = 0
    for var in variables:
        var.grad.set(flat[offset : offset + var.grad.size].reshape(var.grad.shape))
        offset += var.grad.size
    return seconds


def trainEpochs(comm, run, train, test, rows, epochs, seed):
    """Trains `run` (network, optimizer, cost, the parameters whose gradients the ranks sum) for `epochs` on this
    rank's `rows` of each global batch of the `train` images and labels (shuffled by `seed`, as the single-process
    run); returns (test accuracy per epoch on the `test` data and labels, seconds per step, seconds in the gradients'
    Allreduce)."""
    from PuzzleLib.Backend import Blas, gpuarray

    net, optimizer, cost, summed = run
    trainX, trainY = train
    flat = np.empty(sum(var.grad.size for var in summed), np.float32)
    rng = np.random.default_rng(seed)
    accuracy, stepSeconds, allreduceSeconds = [], [], 0.0
    for _ in range(epochs):
        order = rng.permutation(len(trainX))
        for start in range(0, len(trainX) - BATCH + 1, BATCH):
            index = order[start : start + BATCH][rows]
            data = gpuarray.to_gpu(trainX[index].astype(np.float32))
            labels = gpuarray.to_gpu(trainY[index].astype(np.int32))

            began = time.perf_counter()
            _, grad = cost(net(data), labels)
            # NOTE: (onehot - p) / localBatch becomes (onehot - p) / 60: this rank's rows of the global mean loss
            Blas.addVectorToVector(grad, grad, out=grad, alpha=len(index) / BATCH, beta=0.0)
            net.backward(grad)
            allreduceSeconds += sumGradients(comm, summed, flat)
            optimizer.update()
            stepSeconds.append(time.perf_counter() - began)
        accuracy.append(DigitsExperiment.evaluate(net, cost, *test)[1])
    return accuracy, stepSeconds, allreduceSeconds


def runDataParallel(comm, epochs=DigitsExperiment.defaults["epochs"], seed=DigitsExperiment.defaults["seed"]):
    """Trains the synchronized network on the ranks of `comm` (every rank calls it), then the reference on rank 0.

    Returns:
        on rank 0, a dict: ``ranks``, ``split``, ``epochs``, ``seed``, ``backend``, per-epoch ``singleProcess`` and
        ``dataParallel`` test accuracies, ``maxAbsDiff`` (largest absolute difference between the final parameters
        and running statistics of the two networks) and ``maxAbsDiffAt`` (where), ``arrays`` ({name: [that array's
        largest difference, its largest magnitude]}), ``ranksMaxAbsDiff`` (between the ranks' final arrays),
        ``msPerStep`` and ``medianMsPerStep`` (forward, backward, gradient sum and update, on rank 0),
        ``syncBatchNormMsPerStep`` and ``allreduceMsPerStep`` (time in the exchanges, waits for the other ranks
        included); None on the other ranks.
    """
    from PuzzleLib import Config
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Cost import CrossEntropy
    from PuzzleLib.Examples.RunningStatistics import loadDigits
    from PuzzleLib.Modules import SyncBatchNorm
    from PuzzleLib.Optimizers import MomentumSGD

    rank, sizes = comm.Get_rank(), split(BATCH, comm.Get_size())
    trainX, trainY, testX, testY = loadDigits(seed)
    trainX, testX = trainX / 16.0, testX / 16.0
    testData, testLabels = gpuarray.to_gpu(testX.astype(np.float32)), gpuarray.to_gpu(testY.astype(np.int32))

    net = buildSyncNet(seed, comm)
    exchanges = TimedComm(comm)
    for module in net.modules:
        if isinstance(module, SyncBatchNorm):
            module.exchange.comm = exchanges  # NOTE: measurement only; the calls are the module's own
    # NOTE: SyncBatchNorm's gradients are already the global batch's, the same on every rank: summing them would count
    # every row N times
    summed = [var for name, var in net.namedVars().items() if not isinstance(net[name.split(".")[1]], SyncBatchNorm)]
    optimizer = MomentumSGD(DigitsExperiment.defaults["learnRate"], DigitsExperiment.defaults["momRate"])
    optimizer.setupOn(net)
    run = (net, optimizer, CrossEntropy(name="dataParallel"), summed)

    rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    accuracy, stepSeconds, allreduceSeconds = trainEpochs(
        comm, run, (trainX, trainY), (testData, testLabels), rows, epochs, seed
    )

    mine = state(net)
    everyRank = comm.gather(mine, root=0)
    if rank != 0:
        return None

    reference = DigitsExperiment.runExperiment(epochs, seed, keepNets=True)
    theirs = state(reference["nets"]["batchnorm"])
    diffs = {name: float(np.abs(mine[name] - theirs[name]).max()) for name in theirs}
    worst = max(diffs, key=diffs.get)
    steps = len(stepSeconds)
    return {
        "ranks": comm.Get_size(),
        "split": sizes,
        "epochs": epochs,
        "seed": seed,
        "backend": Config.currentBackend(),
        "singleProcess": reference["networks"]["batchnorm"]["testAccuracy"],
        "dataParallel": accuracy,
        "maxAbsDiff": diffs[worst],
        "maxAbsDiffAt": worst,
        "arrays": {name: [diffs[name], float(np.abs(theirs[name]).max())] for name in theirs},
        "ranksMaxAbsDiff": max(float(np.abs(other[name] - mine[name]).max()) for other in everyRank for name in mine),
        "msPerStep": 1e3 * float(np.mean(stepSeconds)),
        "medianMsPerStep": 1e3 * float(np.median(stepSeconds)),
        "syncBatchNormMsPerStep": 1e3 * exchanges.seconds / steps,
        "allreduceMsPerStep": 1e3 * allreduceSeconds / steps,
        "steps": steps,
    }


def formatResult(result):
    """The report of rank 0: the run, the per-epoch table, the differences and the timings, as text."""
    parts = dict(result, batch=BATCH, sizes=" + ".join(map(str, result["split"])))
    lines = ["%(ranks)d ranks, global batch %(batch)d split %(sizes)s, backend %(backend)s, seed %(seed)d" % parts]
    lines.append("%5s  %22s  %22s" % ("epoch", "single-process test acc", "data-parallel test acc"))
    for epoch, (single, parallel) in enumerate(zip(result["singleProcess"], result["dataParallel"], strict=True)):
        lines.append("%5d  %21.2f%%  %21.2f%%" % (epoch + 1, 100 * single, 100 * parallel))
    lines.append(
        "final parameters and running statistics, data-parallel vs single-process: max |diff| %(maxAbsDiff).3g "
        "(%(maxAbsDiffAt)s); between the ranks: %(ranksMaxAbsDiff).3g" % parts
    )
    lines.append(
        "per synchronized step (mean of %(steps)d on rank 0): %(msPerStep).3f ms (median %(medianMsPerStep).3f), of "
        "which SyncBatchNorm exchanges %(syncBatchNormMsPerStep).3f ms and the Linear gradients' Allreduce "
        "%(allreduceMsPerStep).3f ms" % parts
    )
    return "\n".join(lines)


def positiveInt(text):
    if int(text) <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer; got %s" % text)
    return int(text)


def underMpiexec():
    """Whether this process was started by mpiexec (Open MPI, MPICH or another PMI/PMIx launcher)."""
    return any(key in os.environ for key in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"))


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m PuzzleLib.Examples.DataParallelDigits", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--epochs", type=positiveInt, default=DigitsExperiment.defaults["epochs"], help="default: 15")
    parser.add_argument("--seed", type=int, default=DigitsExperiment.defaults["seed"], help="as the main job's (0)")
    parser.add_argument("--ranks", type=positiveInt, default=2, help="processes to start (default: 2)")
    parser.add_argument("--json", metavar="FILE", help="save every number as JSON (rank 0)")
    parser.add_argument("--timeout", type=positiveInt, default=1800, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if not (args.worker or underMpiexec()):
        from PuzzleLib.TestLib import MpiLauncher

        try:
            split(BATCH, args.ranks)
        except ValueError as e:
            parser.error(str(e))
        options = ["--epochs", str(args.epochs), "--seed", str(args.seed), "--worker"]
        options += ["--json", os.path.abspath(args.json)] if args.json else []
        done = MpiLauncher.run(args.ranks, ["-m", "PuzzleLib.Examples.DataParallelDigits", *options], args.timeout)
        sys.stdout.write(done.stdout)
        sys.stderr.write(done.stderr)
        return done.returncode

    from mpi4py import MPI

    result = runDataParallel(MPI.COMM_WORLD, args.epochs, args.seed)
    if result is not None:
        print(formatResult(result))
        if args.json:
            from PuzzleLib.AtomicFile import writeAtomically

            def dump(path):
                with open(path, "w", encoding="utf-8") as file:
                    json.dump(result, file, indent=2)

            writeAtomically(args.json, dump)
    return 0


if __name__ == "__main__":
    sys.exit(main())
