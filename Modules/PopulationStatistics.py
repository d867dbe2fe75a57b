"""recomputeStatistics: the exact population statistics of every batch-norm module of a network ("precise BN")."""

import numpy as np

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Backend.Collective import mergeMoments
from PuzzleLib.Backend.Contract import Moments
from PuzzleLib.Modules.BatchNormND import BatchNormND
from PuzzleLib.Modules.Module import ModuleError
from PuzzleLib.Modules.SyncBatchNormND import SyncStatistics
from PuzzleLib.Modules.Transaction import Snapshot


class StatisticsTaken(Exception):  # noqa: N818 (a signal, not an error)
    """Ends a forward once the module being measured has taken its batch's moments: the layers after it do not matter
    to its statistics. Raised and caught inside `recomputeStatistics` only."""


class MomentsAccumulator:
    """The per-map element count, mean and biased variance of every batch a module is given, merged exactly in float64
    with the pairwise formula of Chan, Golub & LeVeque (1979) (`Collective.mergeMoments`), so the result does not
    depend on how the set is cut into batches.

    Installed as the module's forward hook (`Module.forwardHooks`): the module calls it with its checked input before
    the forward changes anything; it adds the batch's moments, then raises `StatisticsTaken`.
    """

    def __init__(self, module):
        self.module = module
        self.count = 0
        self.mean = np.zeros(module.maps, np.float64)
        self.var = np.zeros(module.maps, np.float64)

    def __call__(self, module, data):
        n = module.elementsPerMap(data.shape)
        if n > 0:
            # NOTE: float64 moments where the backend has them (exact on the CPU); the CUDA kernels compute in float32
            record = data.backend.gpuarray.empty((2, module.maps), np.float64)
            module.planOf(data).batchStatistics(Moments(data, record[0], record[1]))
            mu, var = record.get()
            self.count, self.mean, self.var = mergeMoments(
                np.array([self.count, n]), np.stack([self.mean, mu]), np.stack([self.var, var])
            )
        raise StatisticsTaken()

    def merged(self):
        """``(count, mean, var)`` over the whole set, var biased; for a synchronized module, over the sets of every
        process (one exchange, merged in rank order, so every process computes the same bits)."""
        if not isinstance(self.module, SyncStatistics):
            return self.count, self.mean, self.var
        gathered = self.module.exchange.allgatherHost(np.concatenate(([self.count], self.mean, self.var)))
        maps = self.module.maps
        return mergeMoments(gathered[:, 0], gathered[:, 1 : 1 + maps], gathered[:, 1 + maps :])


def walk(module):
    """`module` and every module inside it, containers before their children, in the order they hold them."""
    yield module
    for child in getattr(module, "modules", ()):
        yield from walk(child)


def recomputeStatistics(net, batches, progress=False):
    """Sets the running statistics of every batch-norm module of `net` to the exact statistics of the activations it
    receives over a whole set of batches, with the modules before it normalizing with their own final statistics
    (what evaluation will feed it).

    The running averages a training run leaves behind follow the weights of the last few hundred steps; "precise BN"
    (Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm", arXiv 2105.07576) replaces them by population statistics
    after training. Here they are exact: each module's per-map (count, mean, M2) is merged across batches of any sizes
    with Chan's formula in float64, and ``var`` is the unbiased variance of the whole set (``M2 / (count - 1)``, what
    numpy's ``var(ddof=1)`` gives), not the mean of per-batch variances.

    The modules are taken in the order their containers hold them (the forward order of a `Sequential`), one pass over
    `batches` each, in evaluation mode: in module k's pass, modules 1 .. k - 1 already hold their new statistics and
    the forward stops right after module k has taken each batch's moments (so the passes cost about half the forwards
    of a full pass each, on average). Parameters, ``numOfProps`` and every other state stay as they were; each module
    returns to the mode it was in. A synchronized module (`SyncBatchNormND`) merges the sets of every process: every
    process must call this with the same network, each with its own batches (any number, none included).

    Args:
        net (Module): a module or a container of modules (`Sequential`, nested ones included).
        batches (iterable): the set, as GPUArrays on the network's backend (numpy arrays are copied there), each a
            valid input of `net` in evaluation mode (batches of one sample included). It is iterated once per
            batch-norm module, so with more than one module it must be re-iterable (a list, a tuple, or a loader
            whose ``__iter__`` starts over), not a generator.
        progress (bool): show a tqdm progress bar (on stderr; tqdm is in the ``examples`` extra).

    Returns:
        list of `BatchNormND`: the modules whose statistics were set, in the order they were computed.

    Raises:
        ValueError: `batches` is a one-shot iterator while the network has more than one batch-norm module.
        ModuleError: a batch a module rejects (the module's message); a module that the forward does not reach; a set
            with fewer than 2 elements per map for a module (no unbiased variance). Nothing is changed then: every
            statistic already set is put back and the modes are restored.
        ImportError: `progress` without tqdm installed.
    """
    modules = [module for module in walk(net) if isinstance(module, BatchNormND)]
    if len(modules) > 1 and iter(batches) is batches:
        raise ValueError(
            "recomputeStatistics: batches is a one-shot iterator (%s), but the network's %d batch-norm modules take "
            "one pass each; pass a list or a re-iterable loader" % (type(batches).__name__, len(modules))
        )
    bar = None
    if progress:
        from tqdm import tqdm

        size = len(batches) * len(modules) if hasattr(batches, "__len__") else None
        bar = tqdm(total=size, desc="recomputeStatistics", unit="batch")

    modes = [(module, module.train) for module in walk(net)]
    # NOTE: every statistic already set is put back if a later module fails (an interrupt included)
    snapshot = Snapshot(None, [ary for module in modules for ary in (module.mean, module.var) if ary is not None])
    try:
        net.evalMode()
        snapshot.run(setEach, net, modules, batches, bar)
    finally:
        for module in modules:
            module.__dict__.pop("forwardHooks", None)
        for module, train in modes:
            module.trainMode() if train else module.evalMode()
        if bar is not None:
            bar.close()
    return modules


def setEach(net, modules, batches, bar):
    """Each module's statistics in turn, the modules before it normalizing with their new ones."""
    for module in modules:
        setStatistics(module, takeStatistics(net, module, batches, bar))


def takeStatistics(net, module, batches, bar):
    """One pass over `batches` that merges the moments of the input `module` receives; returns `MomentsAccumulator`."""
    accumulator = MomentsAccumulator(module)
    module.forwardHooks = (accumulator,)
    for batch in batches:
        data = batch if isinstance(batch, gpuarray.GPUArray) else gpuarray.to_gpu(np.asarray(batch))
        try:
            net(data)
        except StatisticsTaken:
            pass
        else:
            raise ModuleError(
                "recomputeStatistics: %s is not reached by the network's forward, so its statistics cannot be taken"
                % module.describe()
            )
        if bar is not None:
            bar.update(1)
    del module.forwardHooks
    return accumulator


def setStatistics(module, accumulator):
    """Writes the merged mean and unbiased variance into `module` (float32, its statistics' shape)."""
    count, mean, var = accumulator.merged()
    if count < 2:
        raise ModuleError(
            "recomputeStatistics: %s received %d elements per map over the set; an unbiased variance needs at least 2"
            % (module.describe(), count)
        )
    unbiased = var * (count / (count - 1))
    module.mean.set(mean.astype(np.float32).reshape(module.mean.shape))
    module.var.set(unbiased.astype(np.float32).reshape(module.var.shape))


def unittest():
    """Linear -> BatchNorm -> sigmoid -> Linear -> BatchNorm over batches of unequal sizes: both modules' statistics
    against numpy's mean and var(ddof=1) of the whole set, the second module's input computed in float64 with the
    first module's final statistics."""
    from PuzzleLib.Containers import Sequential
    from PuzzleLib.Modules import Activation, BatchNorm, Linear
    from PuzzleLib.Modules.Activation import sigmoid

    np.random.seed(5)
    net = Sequential()
    fc0, bn0 = net.append(Linear(4, 3)), net.append(BatchNorm(3))
    net.append(Activation(sigmoid))
    fc1, bn1 = net.append(Linear(3, 2)), net.append(BatchNorm(2))

    host = [np.random.normal(3.0 * k, 1.0 + k, size=(size, 4)).astype(np.float32) for k, size in enumerate((5, 1, 9))]
    recomputeStatistics(net, [gpuarray.to_gpu(x) for x in host])
    assert net.train and bn0.numOfProps == 0

    x = np.concatenate(host).astype(np.float64)
    h = x @ fc0.W.get().astype(np.float64) + fc0.b.get().astype(np.float64)
    assert np.allclose(bn0.mean.get().ravel(), h.mean(axis=0), rtol=1e-5)
    assert np.allclose(bn0.var.get().ravel(), h.var(axis=0, ddof=1), rtol=1e-5)

    gain = bn0.scale.get().ravel() / np.sqrt(bn0.var.get().ravel().astype(np.float64) + bn0.epsilon)
    a = 1.0 / (1.0 + np.exp(-((h - bn0.mean.get().ravel()) * gain + bn0.bias.get().ravel())))
    z = a @ fc1.W.get().astype(np.float64) + fc1.b.get().astype(np.float64)
    assert np.allclose(bn1.mean.get().ravel(), z.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert np.allclose(bn1.var.get().ravel(), z.var(axis=0, ddof=1), rtol=1e-5)


if __name__ == "__main__":
    unittest()
