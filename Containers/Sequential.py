"""Sequential: a chain of modules, each fed the previous one's output."""

import numpy as np

from PuzzleLib.Backend import gpuarray
from PuzzleLib.Modules.Module import Module, ModuleError
from PuzzleLib.Modules.Transaction import CombinedSnapshot, Snapshot


def holds(container, module):
    """True when `module` is a child of `container`, or of a container inside it (by identity)."""
    for child in getattr(container, "modules", ()):
        if child is module or holds(child, module):
            return True
    return False


class Sequential(Module):
    """A chain of modules: ``forward`` runs them in order, ``backward`` in reverse, as PuzzleLib's Sequential.

    Every child has a unique name inside the container: its own `name`, or its position (``"0"``, ``"1"``...) when it
    has none. Saved entries are ``"<container name>.<child name>.<param>"`` (nested containers nest the prefix), so a
    whole network saves to one HDF5 file and loads back; a load reads and checks every child's entries before it
    applies any, so a failed load changes nothing. `trainMode`, `evalMode`, `calcMode`, `reset`, `zeroGradParams` and
    `updateParams` reach every child.

    Before a forward, the whole chain checks the data's shape and dtype and that every child can run (each child's
    `checkReady` and `checkDataShape`, shapes passed on with `dataShapeFrom`), so bad input or an empty child is
    rejected before any child runs or updates a statistic.

    Args:
        name (str or None): the container's name (prefix of saved entries; ``"Sequential"`` when None).

    Shape:
        data: what the first child takes; output: what the last child gives.

    Raises:
        ModuleError: `append` of a non-module or of a name already used; forward of an empty container or of data a
            child rejects (the message is the child's); `calcMode` to a type a child cannot compute in (no child is
            changed then).

    Example:
        >>> net = Sequential()
        >>> net.append(Linear(64, 100)); net.append(BatchNorm(100)); net.append(Activation(sigmoid))
        >>> net.append(Linear(100, 10))
        >>> scores = net(gpuarray.to_gpu(np.random.randn(60, 64).astype(np.float32)))
    """

    def __init__(self, name=None):
        super().__init__(name)
        self.modules, self.names = [], []

    # --- building

    def append(self, module):
        """Adds `module` at the end of the chain; returns it.

        Raises:
            ModuleError: for an object that is not a Module, a name another child already has, a module already in the
                chain (at any depth: its gradients would be overwritten by its second use), the container itself, a
                container that holds this one (a cycle), or an in-place module (one that writes its output over its
                input, such as InPlace-ABN) after a module whose backward reads that memory (its output, or its
                input when it is in place too), as PuzzleLib's containers check ``gradUsesOutData``.
        """
        if not isinstance(module, Module):
            raise ModuleError("%s.append expects a Module; got %s" % (self.describe(), type(module).__name__))
        if module is self or holds(module, self):
            raise ModuleError("%s.append: a container cannot hold itself" % self.describe())
        if holds(self, module):
            raise ModuleError(
                "%s already holds %s; a module runs once per chain (create another for a second use)"
                % (self.describe(), module.describe())
            )
        if module.overwritesInput:
            reader = self.outputReader()
            if reader is not None:
                raise ModuleError(
                    "%s.append: %s writes its output over its input, which %s reads in its backward; make one of them "
                    "not in place (inplace=False)" % (self.describe(), module.describe(), reader.describe())
                )
        name = module.name if module.name is not None else str(len(self.modules))
        if name in self.names:
            raise ModuleError(
                "%s already has a module named %r; give modules unique names (children: %s)"
                % (self.describe(), name, ", ".join(self.names))
            )
        self.modules.append(module)
        self.names.append(name)
        return module

    def outputReader(self):
        """The child whose backward reads the chain's output memory (None when none does): the last child when it
        reads its output, or, through children that write over their input, one that reads the memory they share."""
        for module in reversed(self.modules):
            if module.gradUsesOutData:
                return module
            if not module.overwritesInput:
                return None
            if module.gradUsesInData:
                return module
        return None

    @property
    def gradUsesOutData(self):
        return self.outputReader() is not None

    @property
    def overwritesInput(self):
        """True when every child writes over its input (the chain's output is then its input's memory)."""
        return bool(self.modules) and all(module.overwritesInput for module in self.modules)

    def __len__(self):
        return len(self.modules)

    def __iter__(self):
        return iter(self.modules)

    def __getitem__(self, key):
        """A child by position (int) or by its name in the container (str)."""
        if isinstance(key, str):
            if key not in self.names:
                raise KeyError(
                    "%s has no module named %r (children: %s)" % (self.describe(), key, ", ".join(self.names))
                )
            return self.modules[self.names.index(key)]
        return self.modules[key]

    def namedVars(self, prefix=None):
        """Every trainable parameter of the chain: {"<prefix>.<child name>.<param>": Variable}, in chain order."""
        prefix = self.saveName(prefix)
        result = {}
        for name, module in zip(self.names, self.modules, strict=True):
            childPrefix = "%s.%s" % (prefix, name)
            if isinstance(module, Sequential):
                result.update(module.namedVars(childPrefix))
            else:
                result.update({"%s.%s" % (childPrefix, entry): var for entry, var in module.vars.items()})
        return result

    @property
    def backend(self):
        """The backend of the first child that has arrays (None when none has)."""
        for module in self.modules:
            if module.backend is not None:
                return module.backend
        return None

    # --- state and modes

    # NOTE: each child decides for itself
    hasParamGrads = True

    def zeroGradParams(self):
        for module in self.modules:
            module.zeroGradParams()

    def addGradients(self, learnRate):
        for module in self.modules:
            module.updateParams(learnRate)

    def reset(self):
        super().reset()
        for module in self.modules:
            module.reset()

    def trainMode(self):
        super().trainMode()
        for module in self.modules:
            module.trainMode()

    def evalMode(self):
        super().evalMode()
        for module in self.modules:
            module.evalMode()

    def calcMode(self, T):
        """Sets the calc type of every child; if one refuses, the children already changed are changed back.

        Raises:
            ModuleError: the refusing child's message.
        """
        try:
            dtype = None if T is None else np.dtype(T)
        except TypeError:
            dtype = None
        if dtype is None:
            raise ModuleError("%s: calcMode expects a data type (float32, float16...); got %r" % (self.describe(), T))
        changed = []
        try:
            for module in self.modules:
                previous = module.calctype
                module.calcMode(dtype)
                changed.append((module, previous))
        except ModuleError:
            for module, previous in reversed(changed):
                module.calcMode(previous)
            raise
        self.calctype = dtype
        self.reset()

    def snapshot(self, call, updParamGrads=True):
        """The container's fields and every child's state for `call`: a chain that raises part-way puts back the
        children that already ran (all-or-nothing)."""
        own = Snapshot(self, [], containers=call == "load")
        return CombinedSnapshot(self, [own] + [module.snapshot(call, updParamGrads) for module in self.modules])

    # --- checks

    def dataShapeFrom(self, shape):
        """The chain's output shape for data of `shape`, checked by every child in turn."""
        if not self.modules:
            raise ModuleError("%s is empty: append modules before calling it" % self.describe())
        for module in self.modules:
            module.checkReady()
            shape = tuple(module.dataShapeFrom(shape))
        return shape

    def checkDataShape(self, shape):
        self.dataShapeFrom(shape)

    def checkDataType(self, dtype):
        for module in self.modules:
            module.checkDataType(dtype)

    # --- forward and backward

    def updateData(self, data):
        for module in self.modules:
            data = module(data)
        return data

    def backwardStep(self, grad, updGrad, updParamGrads, scale, momentum):
        """Backpropagates through the children in reverse; each accumulates its own parameter gradients. Every child's
        `checkBackward` has run first (`checkBackward`), and a child that raises part-way puts back the gradients of
        the children that already ran (the container's transaction holds theirs), so a call that raises changes
        nothing."""
        for i in reversed(range(len(self.modules))):
            grad = self.modules[i].backward(
                grad, updParamGrads=updParamGrads, updGrad=updGrad or i > 0, scale=scale, momentum=momentum
            )
        return grad

    def checkBackward(self, updParamGrads):
        for module in self.modules:
            module.checkBackward(updParamGrads)

    # --- persistence

    def paramSpecs(self):
        specs = {}
        for name, module in zip(self.names, self.modules, strict=True):
            specs.update({"%s.%s" % (name, entry): spec for entry, spec in module.paramSpecs().items()})
        return specs

    def saveEntries(self, name):
        for childName, module in zip(self.names, self.modules, strict=True):
            yield from module.saveEntries("%s.%s" % (name, childName))

    def loadPlan(self, hdf, name):
        # NOTE: every child reads and checks its entries before any is applied, so a failed load changes nothing
        plan = []
        for childName, module in zip(self.names, self.modules, strict=True):
            plan.extend(module.loadPlan(hdf, "%s.%s" % (name, childName)))
        return plan


def unittest():
    import io

    import h5py

    from PuzzleLib.Modules.Activation import Activation, sigmoid
    from PuzzleLib.Modules.BatchNorm import BatchNorm
    from PuzzleLib.Modules.Linear import Linear

    def build():
        net = Sequential(name="net")
        net.append(Linear(6, 5, name="fc0"))
        net.append(BatchNorm(5, name="bn0"))
        net.append(Activation(sigmoid))
        net.append(Linear(5, 2, name="fc1"))
        return net

    np.random.seed(0)
    net = build()
    hostData = np.random.randn(8, 6).astype(np.float32)

    x = hostData.astype(np.float64)
    h = x @ net["fc0"].W.get() + net["fc0"].b.get()
    bn = net["bn0"]
    h = (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + bn.epsilon) * bn.scale.get().ravel() + bn.bias.get().ravel()
    ref = (1.0 / (1.0 + np.exp(-h))) @ net["fc1"].W.get() + net["fc1"].b.get()
    assert np.allclose(net(gpuarray.to_gpu(hostData)).get(), ref, atol=1e-5)

    try:
        net(gpuarray.to_gpu(np.zeros((8, 7), dtype=np.float32)))
    except ModuleError:
        assert bn.numOfProps == 1
    else:
        raise AssertionError("Sequential accepted data of 7 features")

    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        net.save(f)
    np.random.seed(1)
    other = build()
    with h5py.File(buffer, "r") as f:
        other.load(f, name="net")
    for key, var in net.namedVars().items():
        assert np.array_equal(other.namedVars()[key].data.get(), var.data.get()), key
    assert np.array_equal(other["bn0"].mean.get(), bn.mean.get())


if __name__ == "__main__":
    unittest()
