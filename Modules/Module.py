"""Module: the base of every layer, and its template: the checks, the transaction and the calls to what a subclass
fills in (``updateData``, ``updateGrad``, ``accGradParams``), as PuzzleLib's Module."""

import copy

import numpy as np

from PuzzleLib.Backend import Blas, gpuarray
from PuzzleLib.Modules.Arguments import checkName
from PuzzleLib.Modules.ModuleError import ModuleError
from PuzzleLib.Modules.Persistence import Persistent
from PuzzleLib.Modules.Transaction import Snapshot

__all__ = ["Module", "ModuleError", "Snapshot"]


class Module(Persistent):
    """Base class of layers, in PuzzleLib's style.

    A module is called on a GPUArray (``y = module(x)``), keeps ``inData``, ``data`` (its output) and, after
    ``backward(grad)``, ``grad`` (the gradient of its input). Trainable parameters are `Variable` objects in
    ``vars``; other state (running statistics) are GPUArrays in ``attrs``; both are also plain attributes
    (``module.scale`` is the parameter's GPUArray). Persistence (``save``, ``load``) is `Modules.Persistence`'s.

    The template, which a subclass fills and does not override:

    - ``module(data, **extra)`` (also ``forward``): `checkData` (the data's type, backend, shape, dtype, the
      module's readiness, and the call's `extra` arguments, such as a batch norm's residual), then, as one transaction
      (`Modules.Transaction`: all or nothing, Ctrl-C included), ``updateData(data, **extra)``, which returns the
      output, kept as ``data``.
    - ``backward(grad, updParamGrads, updGrad, scale, momentum)``: `checkGrad`, `checkBackward`, then, as one
      transaction, ``backwardStep``: ``updateGrad(grad)`` returns the input gradient, kept as ``grad``;
      ``accGradParams(grad, scale, momentum)`` accumulates ``var.grad = scale * d + momentum * var.grad``. A module
      whose two gradients come from one computation (batch norm, containers) fills ``backwardStep`` instead.
    - The shape rules: ``checkDataShape(shape)`` refuses what the module cannot take, ``dataShapeFrom(shape)`` gives
      the output shape (the input's by default), which containers use to check a whole network before it runs.

    PuzzleLib's sign convention: a cost hands back the negative gradient of the loss, so
    ``updateParams(learnRate)`` with a positive rate adds ``learnRate * grad`` and descends.

    Args:
        name (str or None): the module's name, used for the entries of saved files (``"<name>.<param>"``); it may not
            contain "/" (HDF5 would nest it into groups).

    Raises:
        ValueError: for a name that is not a str or None, or that contains "/".
    """

    def __init__(self, name=None):
        self.name = checkName(type(self).__name__, name)
        self.vars, self.attrs = {}, {}
        self.train = True
        self.calctype = np.dtype(np.float32)
        self.inData, self.data, self.grad = None, None, None

    def __init_subclass__(cls, **kwargs):
        # NOTE: ``module(x)`` and ``module.forward(x)`` are one method; a subclass that defines one of them defines both
        super().__init_subclass__(**kwargs)
        if "forward" in cls.__dict__ and "__call__" not in cls.__dict__:
            cls.__call__ = cls.forward
        elif "__call__" in cls.__dict__ and "forward" not in cls.__dict__:
            cls.forward = cls.__call__

    # NOTE: what `copy.deepcopy` leaves at None (the last calls' results, and helpers bound to them) and what it shares
    # with the original instead of copying (a communicator); subclasses extend both
    transientFields = ("inData", "data", "grad")
    sharedFields = ()
    # NOTE: callables run with (module, data) once a forward's checks have passed and before it changes anything, as
    # PyTorch's forward pre-hooks (`PopulationStatistics.recomputeStatistics` sets one); none by default
    forwardHooks = ()

    def __deepcopy__(self, memo):
        """``copy.deepcopy(module)``: a module of its own, in the same mode and calc type, with copies of its
        parameters, their gradients, its statistics and its settings (containers copy their children). The results of
        the last calls (`transientFields`: ``inData``, ``data``, ``grad``, saved batch statistics) are not copied: they
        are None, as after `reset`, so a copy needs a forward before its backward."""
        clone = object.__new__(type(self))
        memo[id(self)] = clone
        transient, shared = set(self.transientFields), set(self.sharedFields)
        for key, value in self.__dict__.items():
            if key in transient:
                value = None
            elif key not in shared:
                value = copy.deepcopy(value, memo)
            clone.__dict__[key] = value
        return clone

    # --- parameters and state

    def setVar(self, name, var):
        """Registers a `Variable` as trainable parameter `name` (``self.<name>`` becomes its data)."""
        self.vars[name] = var
        setattr(self, name, var.data)

    def getVar(self, name):
        return self.vars[name]

    def setAttr(self, name, attr):
        """Registers a GPUArray as non-trainable state `name` (``self.<name>``), saved with the module."""
        self.attrs[name] = attr
        setattr(self, name, attr)

    def getAttr(self, name):
        return self.attrs[name]

    @property
    def backend(self):
        """The backend (`PuzzleLib.Backend.Contract.Backend`) holding the module's parameters and attributes, or None
        for a module that has none (yet); data must live there too."""
        for var in self.vars.values():
            return var.data.backend
        for attr in self.attrs.values():
            return attr.backend
        return None

    @property
    def hasParamGrads(self):
        """Whether a backward has parameter gradients to accumulate here: the module has trainable parameters
        (containers: their children decide)."""
        return bool(self.vars)

    def zeroGradParams(self):
        """Sets the gradient of every parameter to zero."""
        for var in self.vars.values():
            var.grad.fill(0)

    def updateParams(self, learnRate):
        """param += learnRate * grad, for every parameter (PuzzleLib's sign convention: grads are negated); all or
        nothing, as `Optimizer.update`."""
        self.snapshot("update").run(self.addGradients, learnRate)

    def addGradients(self, learnRate):
        for var in self.vars.values():
            Blas.toVectorAddVector(var.data, var.grad, alpha=learnRate)

    # --- modes

    def reset(self):
        """Drops cached forward and backward results (`releaseResults` and ``grad``)."""
        self.releaseResults()
        self.grad = None

    def trainMode(self):
        self.train = True
        self.reset()

    def evalMode(self):
        self.train = False
        self.reset()

    def calcMode(self, T):
        """Sets the data type of data and gradients; parameters and statistics stay float32.

        Raises:
            ModuleError: when the backend in use cannot compute in `T` (float32 and float16 everywhere; float64 on the
                CPU backend).
        """
        self.calctype = self.checkCalcType(T)
        self.reset()

    def calcTypes(self):
        """Data types the module computes in on its backend: float32 unless a subclass says more."""
        return (np.dtype(np.float32),)

    def checkCalcType(self, T):
        """Returns ``np.dtype(T)``; raises `ModuleError` when it is not one of `calcTypes()`, or not a data type at all
        (None included: numpy would read it as float64)."""
        supported = self.calcTypes()
        try:
            dtype = None if T is None else np.dtype(T)
        except TypeError:
            dtype = None
        if dtype is None:
            raise ModuleError(
                "%s: calcMode expects a data type (one of %s on this backend); got %r"
                % (self.describe(), ", ".join(str(t) for t in supported), T)
            )
        if dtype not in supported:
            raise ModuleError(
                "%s supports calc types %s on this backend; got %s"
                % (self.describe(), ", ".join(str(t) for t in supported), dtype)
            )
        return dtype

    # --- the template: forward and backward

    def __call__(self, data, **extra):
        """Checks `data` (and the call's `extra` arguments), computes the output, and keeps both; returns the output
        (``self.data``).

        The previous call's results are dropped once the checks pass and before the new output is allocated, so the
        pool hands their blocks back to this call wherever nothing else holds them (an evaluation loop reuses one
        output block). An error past the checks (the device out of memory, an interrupt) leaves parameters,
        statistics and counters as they were, without the previous results: the arrays a call changes in place are
        copied first (`stateArrays`), or saved by the kernel that changes them (`forwardTransaction`), and put back if
        it raises.

        Raises:
            ModuleError: when `data` is not a GPUArray of the module's backend, its shape or dtype does not fit the
                module, or the module cannot run (`checkReady`); the module is left as it was.
        """
        self.checkData(data, **extra)
        for hook in self.forwardHooks:
            hook(self, data)
        self.releaseResults()
        transaction = self.forwardTransaction()
        self.inData = data
        return transaction.run(self.updateData, data, keep="data", **extra)

    forward = __call__

    def forwardTransaction(self):
        """The transaction of the module's own forward, taken after the checks: `snapshot` of ``"forward"`` here; a
        module whose kernels save what they change themselves gives a cheaper one (`Transaction.KernelBackup`).
        Containers take their children's `snapshot` instead, before any child runs."""
        return self.snapshot("forward")

    def snapshot(self, call, updParamGrads=True):
        """The state `call` (``"forward"``, ``"backward"``, ``"update"`` or ``"load"``) may change, to put back if it
        raises: a `Snapshot` of `stateArrays` (containers combine their children's)."""
        return Snapshot(self, self.stateArrays(call, updParamGrads), containers=call == "load")

    def stateArrays(self, call, updParamGrads=True):
        """The arrays `call` changes in place: the parameter gradients in ``"backward"`` (when `updParamGrads`), the
        parameters in ``"update"``, parameters and attributes in ``"load"``; a subclass adds its own (running statistics
        in a training ``"forward"``)."""
        if call == "backward" and updParamGrads:
            return [var.grad for var in self.vars.values()]
        if call == "update":
            return [var.data for var in self.vars.values()]
        if call == "load":
            return [var.data for var in self.vars.values()] + list(self.attrs.values())
        return []

    def releaseResults(self):
        """Drops the references to the previous forward's results (``inData``, ``data``)."""
        self.inData, self.data = None, None

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        """Backpropagates `grad` (the gradient of the output; shape and dtype of ``self.data``).

        ``self.grad`` receives the gradient of the input (when `updGrad`); each parameter gradient accumulates as
        ``var.grad = scale * d + momentum * var.grad`` (when `updParamGrads`).

        A call that raises (an interrupt included) leaves the gradients as they were.

        Raises:
            ModuleError: before any forward, or when `grad` does not match the output in shape or dtype, or the module
                cannot backpropagate in its state (`checkBackward`).
        """
        self.checkGrad(grad)
        updParamGrads = updParamGrads and self.hasParamGrads
        self.checkBackward(updParamGrads)
        return self.snapshot("backward", updParamGrads).run(
            self.backwardStep, grad, updGrad, updParamGrads, scale, momentum, keep="grad" if updGrad else None
        )

    def backwardStep(self, grad, updGrad, updParamGrads, scale, momentum):
        """The gradients of a backward whose checks have passed: the input gradient (returned, None unless `updGrad`)
        from `updateGrad`, then the parameter gradients (when `updParamGrads`) from `accGradParams`, as PuzzleLib's
        template calls them."""
        ingrad = self.updateGrad(grad) if updGrad else None
        if updParamGrads:
            self.accGradParams(grad, scale=scale, momentum=momentum)
        return ingrad

    def updateData(self, data):
        """The output of `data` (checked), a new GPUArray; a subclass fills it."""
        raise NotImplementedError()

    def updateGrad(self, grad):
        """The gradient of the input from the output's `grad` (checked); a subclass fills it."""
        raise NotImplementedError()

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        """``var.grad = scale * d + momentum * var.grad`` for each parameter, d its gradient from `grad`; a subclass
        with parameters fills it (`accumulate` does the rule)."""
        raise NotImplementedError()

    @staticmethod
    def accumulate(var, d, scale, momentum):
        """var.grad = scale * d + momentum * var.grad; with momentum 0 the old gradient is not read (an inf or NaN
        there is gone, not 0 * inf)."""
        d = d if d.shape == var.grad.shape else d.reshape(var.grad.shape)
        Blas.addVectorToVector(d, var.grad, out=var.grad, alpha=scale, beta=momentum)

    # --- checks

    def checkData(self, data):
        """The checks of a forward, before anything changes (`ModuleError`): `data` a GPUArray of the module's
        backend (`checkArray`), the module ready (`checkReady`), the shape and dtype the module takes
        (`checkDataShape`, `checkDataType`). A module whose call takes more than the data checks that here too."""
        self.checkArray(data, "data")
        self.checkReady()
        self.checkDataShape(data.shape)
        self.checkDataType(data.dtype)

    def checkGrad(self, grad):
        """Raises `ModuleError` before any forward, or when `grad` differs from the output in shape or dtype."""
        if self.data is None:
            raise ModuleError("%s: backward called before forward (or after a mode change)" % self.describe())

        self.checkArray(grad, "grad")
        if grad.shape != self.data.shape or grad.dtype != self.data.dtype:
            raise ModuleError(
                "%s expects grad of shape %s and dtype %s (its output's); got shape %s and dtype %s"
                % (self.describe(), self.data.shape, self.data.dtype, grad.shape, grad.dtype)
            )

    def describe(self):
        return type(self).__name__ if self.name is None else "%s %r" % (type(self).__name__, self.name)

    def checkArray(self, ary, what):
        """Raises `ModuleError` unless `ary` is a GPUArray on the module's backend (any backend, for a module without
        arrays)."""
        if not isinstance(ary, gpuarray.GPUArray):
            raise ModuleError("%s expects %s as a GPUArray; got %s" % (self.describe(), what, type(ary).__name__))
        backend = self.backend
        if backend is not None and ary.backend is not backend:
            raise ModuleError(
                "%s has its parameters on the %s backend; got %s as a %s array"
                % (self.describe(), backend.name, what, ary.backend.name)
            )

    # NOTE: what backward reads of the forward's arrays, and whether the forward writes over its input; a container
    # refuses an in-place module after one whose backward reads the memory it would overwrite (`Sequential.append`)
    gradUsesOutData = False
    gradUsesInData = True
    overwritesInput = False

    def checkReady(self):
        """Raises `ModuleError` when the module cannot run in its present state (e.g. created empty); no-op here."""

    def checkBackward(self, updParamGrads):
        """Raises `ModuleError` when the module cannot backpropagate what is asked after its last forward (no-op
        here)."""

    def checkDataShape(self, shape):
        """Raises `ModuleError` for data of a shape the module cannot take; every shape by default."""

    def dataShapeFrom(self, shape):
        """The output shape for data of `shape`, after `checkDataShape`: the same shape by default (a module whose
        output has another shape says so here, so that containers can check a whole network before it runs)."""
        self.checkDataShape(shape)
        return tuple(shape)

    def checkDataType(self, dtype):
        if dtype != self.calctype:
            raise ModuleError(
                "%s expects data of dtype %s (its calctype); got %s" % (self.describe(), self.calctype, dtype)
            )
