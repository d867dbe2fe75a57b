"""One rank of the synchronized batch-norm tests: ``mpiexec -n N python -m mpi4py -m
PuzzleLib.TestLib.SyncBatchNormRanks OUT SIZES...`` (SIZES: the batch of each rank, N of them; mpi4py's runner aborts
every rank when one raises).

Every rank trains the cases of `cases` for `STEPS` steps on its part of seeded global batches (`localBatches`), runs
backward each step and an evaluation forward at the end, then provokes the errors of `provokeErrors`; it writes
everything to ``OUT/rank<r>.npz`` and the error messages to ``OUT/rank<r>.json``. The checks are in
``TestLib/tests/test_sync_batchnorm.py``, which computes the float64 reference of the global batches itself.
"""

import json
import os
import sys

import numpy as np

STEPS = 3
EPSILON = 1e-5


def cases():
    """{case: (module class name, constructor args, per-sample shape, maps axis of the data, calc dtype)}."""
    return {
        "perActivation": ("SyncBatchNorm", (5,), (5,), 1, np.float32),
        "spatial": ("SyncBatchNorm2D", (3,), (3, 4, 5), 1, np.float32),
        "channelsLast": ("SyncBatchNorm1D", (4,), (6, 4), 2, np.float32),
        "spatial3D": ("SyncBatchNorm3D", (2,), (2, 3, 2, 3), 1, np.float32),
        "float16": ("SyncBatchNorm2D", (3,), (3, 4, 4), 1, np.float16),
        "float64": ("SyncBatchNormND", (1, 3), (3, 7), 1, np.float64),
    }


def localBatches(case, step, sizes):
    """(data, grad) of every rank for `step` of `case`: seeded float64 arrays, map 0 centred at 1e4 (1e2 for float16)
    with standard deviation 1 (the large-mean case), the other maps at moderate means and spreads."""
    _, _, sample, axis, _ = cases()[case]
    rng = np.random.default_rng([sum(map(ord, case)), step])
    total = sum(sizes)
    maps = sample[axis - 1]
    # NOTE: float16 cannot hold data at 1e4 to better than 8 (its ulp there); its large-mean map sits at 1e2
    large = 1e2 if np.dtype(cases()[case][4]) == np.float16 else 1e4
    centers = np.array([large] + [0.5 * k - 1.0 for k in range(1, maps)])
    spreads = np.array([1.0] + [1.0 + 0.5 * k for k in range(1, maps)])
    shape = [1] * (len(sample) + 1)
    shape[axis] = maps

    data = rng.normal(size=(total,) + sample) * spreads.reshape(shape) + centers.reshape(shape)
    grad = rng.normal(size=(total,) + sample)
    bounds = np.cumsum([0] + list(sizes))
    return [(data[a:b], grad[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def build(case, comm):
    from PuzzleLib import Modules

    name, args, _, axis, dtype = cases()[case]
    np.random.seed(7)  # the same initial scale on every rank
    kwargs = {"axis": -1} if axis == len(cases()[case][2]) else {}
    module = getattr(Modules, name)(*args, comm=comm, **kwargs)
    if np.dtype(dtype) != np.float32:
        module.calcMode(dtype)
    return module


def runCase(case, comm, sizes, results):
    from PuzzleLib.Backend import gpuarray

    dtype = cases()[case][4]
    bn = build(case, comm)
    rank = comm.Get_rank()
    results["%s.scale" % case] = bn.scale.get()
    for step in range(STEPS):
        data, grad = localBatches(case, step, sizes)[rank]
        out = bn(gpuarray.to_gpu(data.astype(dtype)))
        bn.backward(gpuarray.to_gpu(grad.astype(dtype)))
        for key, value in (
            ("out", out), ("dx", bn.grad), ("dscale", bn.vars["scale"].grad), ("dbias", bn.vars["bias"].grad),
            ("mean", bn.mean), ("var", bn.var),
        ):
            results["%s.%d.%s" % (case, step, key)] = value.get()
        results["%s.%d.numOfProps" % (case, step)] = np.array(bn.numOfProps)

    bn.evalMode()
    data, _ = localBatches(case, 0, sizes)[rank]
    results["%s.eval" % case] = bn(gpuarray.to_gpu(data.astype(dtype))).get()


def recomputeSet(sizes):
    """Every rank's rows of the seeded global set of `recomputeCase`, (sum(sizes), 5) float32, map 0 centred at 1e4."""
    rng = np.random.default_rng(11)
    data = rng.normal(size=(sum(sizes), 5)) * np.arange(1.0, 6.0) + np.array([1e4, -3.0, 0.0, 2.0, 5.0])
    bounds = np.cumsum([0] + list(sizes))
    return [data[a:b].astype(np.float32) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def recomputeCase(comm, sizes, results):
    """`recomputeStatistics` over a network of two synchronized modules, each rank feeding its rows of the set in
    batches of at most 2 (none on an empty rank); saves the parameters and the statistics it sets."""
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Containers import Sequential
    from PuzzleLib.Modules import Activation, Linear, SyncBatchNorm
    from PuzzleLib.Modules.Activation import sigmoid
    from PuzzleLib.Modules.PopulationStatistics import recomputeStatistics

    np.random.seed(7)  # the same weights on every rank
    net = Sequential()
    bn0 = net.append(SyncBatchNorm(5, comm=comm))
    net.append(Activation(sigmoid))
    fc = net.append(Linear(5, 3))
    bn1 = net.append(SyncBatchNorm(3, comm=comm))

    rows = recomputeSet(sizes)[comm.Get_rank()]
    recomputeStatistics(net, [gpuarray.to_gpu(rows[k : k + 2]) for k in range(0, len(rows), 2)])
    for key, ary in (("scale0", bn0.scale), ("bias0", bn0.bias), ("mean0", bn0.mean), ("var0", bn0.var),
                     ("W", fc.W), ("b", fc.b), ("mean1", bn1.mean), ("var1", bn1.var)):
        results["recompute.%s" % key] = ary.get()
    results["recompute.numOfProps"] = np.array(bn0.numOfProps + bn1.numOfProps)


def provokeErrors(comm, sizes):
    """{error case: message} of this rank; each case must raise on every rank and leave the module as it was."""
    from PuzzleLib.Backend import gpuarray
    from PuzzleLib.Modules import ModuleError, SyncBatchNorm

    rank, size = comm.Get_rank(), comm.Get_size()
    messages = {}

    def attempt(name, call, module=None):
        before = None if module is None else (module.numOfProps, module.mean.get(), module.var.get())
        try:
            call()
        except (ModuleError, ValueError) as e:
            messages[name] = "%s: %s" % (type(e).__name__, e)
        else:
            messages[name] = None
        if module is not None:
            unchanged = before[0] == module.numOfProps and np.array_equal(before[1], module.mean.get())
            messages[name + ".unchanged"] = bool(unchanged and np.array_equal(before[2], module.var.get()))

    host = np.random.default_rng(rank).normal(size=(4, 5)).astype(np.float32)
    rows = gpuarray.to_gpu(host)

    mixed = SyncBatchNorm(4 if rank == 0 else 5, comm=comm)
    attempt("mapCount", lambda: mixed(gpuarray.to_gpu(host[:, :4]) if rank == 0 else rows), mixed)

    bn = SyncBatchNorm(5, comm=comm)
    if rank == 0:
        bn.calcMode(np.float16)
    data = gpuarray.to_gpu(rows.get().astype(np.float16)) if rank == 0 else rows
    attempt("dataType", lambda: bn(data), bn)

    bn = SyncBatchNorm(5, comm=comm)
    bad = rows.reshape(4, 5, 1) if rank == size - 1 else rows
    attempt("localShape", lambda: bn(bad), bn)

    few = rows[:1] if rank == 0 else rows[:0]
    attempt("tooFewElements", lambda: bn(few), bn)

    # NOTE: one rank alone passes a residual (the synchronized modules take none): every rank must refuse alike
    attempt("residual", lambda: bn(rows, residual=rows) if rank == 0 else bn(rows), bn)

    attempt("communicator", lambda: SyncBatchNorm(5, comm="COMM_WORLD"))

    # NOTE: after every refusal the ranks are still in step: a good forward and backward go through
    bn(rows)
    before = bn.vars["scale"].grad.get()
    wrong = gpuarray.zeros((4, 6), np.float32) if rank == 0 else gpuarray.zeros((4, 5), np.float32)
    attempt("backwardGrad", lambda: bn.backward(wrong))
    messages["backwardGrad.unchanged"] = bool(np.array_equal(before, bn.vars["scale"].grad.get()))
    bn.backward(gpuarray.zeros((4, 5), np.float32))
    messages["inStepAfterErrors"] = bn.numOfProps == 1
    return messages


def main(out, sizes):
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if len(sizes) != comm.Get_size():
        raise SystemExit("give one batch size per rank: %d sizes for %d ranks" % (len(sizes), comm.Get_size()))

    from PuzzleLib.Backend import Dnn, gpuarray

    # NOTE: as in the test suite, every pool block is NaN-filled when served, so a read of unwritten memory shows
    gpuarray.memoryPool.poison = True
    results = {}
    for case in cases():
        if np.dtype(cases()[case][4]) in Dnn.dataTypes():
            runCase(case, comm, sizes, results)
    recomputeCase(comm, sizes, results)
    messages = provokeErrors(comm, sizes)

    rank = comm.Get_rank()
    np.savez(os.path.join(out, "rank%d.npz" % rank), **results)
    with open(os.path.join(out, "rank%d.json" % rank), "w", encoding="utf-8") as file:
        json.dump(messages, file)


if __name__ == "__main__":
    main(sys.argv[1], [int(size) for size in sys.argv[2:]])
