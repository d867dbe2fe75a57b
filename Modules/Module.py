"""Module: the base of every layer (forward, backward, modes, parameters, HDF5 persistence)."""

import collections
import contextlib
import copy
import math
import os
import signal
import threading

import h5py
import numpy as np

from PuzzleLib.AtomicFile import writeAtomically
from PuzzleLib.Backend import Blas, gpuarray
from PuzzleLib.Backend.Checks import isRealNumber
from PuzzleLib.Modules.Variable import Variable


class ModuleError(Exception):
    """Bad input to a module (shape, dtype, state or file); the module is left exactly as it was."""


@contextlib.contextmanager
def deferredInterrupts():
    """Holds back Ctrl-C (SIGINT) for the duration of the block: a KeyboardInterrupt that arrives meanwhile is raised
    when the block ends, so the block's state changes happen entirely or not at all. Only the main thread receives
    signals; elsewhere (and where signal handlers cannot be set) the block runs as it is."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received = []
    # NOTE: None is a handler set outside Python, which could not be put back
    if signal.getsignal(signal.SIGINT) is None:
        yield
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(frame))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            if callable(previous):
                previous(signal.SIGINT, received[0])
            elif previous == signal.SIG_DFL:
                raise KeyboardInterrupt


class Snapshot:
    """An object's state before a call that may raise: its attributes (dicts and lists among them copied one level
    deep) and copies of the arrays the call changes in place (`GPUArray._backup`: device arrays on CUDA, plain numpy
    arrays on the CPU backend). `restore` puts both back, with Ctrl-C held back so that the restore itself is not cut
    short.

    Args:
        owner: a module or an optimizer.
        arrays (list of GPUArray): the arrays the call may write.
    """

    containerTypes = frozenset((dict, list))

    def __init__(self, owner, arrays):
        self.owner = owner
        self.fields = fields = owner.__dict__.copy()
        containerTypes = self.containerTypes
        for key, value in fields.items():
            if type(value) in containerTypes:
                fields[key] = value.copy()
        self.arrays = [(ary, ary._backup()) for ary in arrays]

    def restore(self):
        with deferredInterrupts():
            for ary, saved in self.arrays:
                ary.set(saved)
            self.owner.__dict__.clear()
            self.owner.__dict__.update(self.fields)


def checkNumber(owner, name, value, expected, isValid):
    """Raises ValueError naming `owner` and argument `name` unless `value` is a real number (not a bool) for which
    ``isValid(value)`` holds; `expected` says what is accepted (``"a finite number > 0"``)."""
    if not isRealNumber(value) or not isValid(float(value)):
        raise ValueError("%s: %s must be %s; got %r" % (owner, name, expected, value))


def checkBool(owner, name, value):
    """Raises ValueError naming `owner` and argument `name` unless `value` is a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError("%s: %s must be True or False; got %r" % (owner, name, value))


def checkPositiveInt(owner, name, value):
    """Raises ValueError naming `owner` and `name` unless `value` is a positive int (bools are not ints here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError("%s: %s must be a positive int; got %r" % (owner, name, value))


def checkName(owner, name):
    """Returns `name`; raises ValueError naming `owner` unless it is None or a str without "/".

    HDF5 reads "/" as a path: the entries of "a/b" would land in a group "a", and "a/b" and "a//b" would collide.
    """
    if name is not None and not isinstance(name, str):
        raise ValueError("%s: name must be a str or None; got %.80r (%s)" % (owner, name, type(name).__name__))
    if name is not None and "/" in name:
        raise ValueError("%s: name must not contain '/' (HDF5 would nest it into groups); got %r" % (owner, name))
    return name


def checkHdf(owner, action, hdf):
    """True for a path (str or os.PathLike), False for an open h5py group; raises `ModuleError` for anything else."""
    if isinstance(hdf, (str, os.PathLike)):
        return True
    if isinstance(hdf, h5py.Group):
        return False
    raise ModuleError(
        "cannot %s %s: expected a path (str or os.PathLike) or an open h5py Group; got %.80r (%s)"
        % (action, owner, hdf, type(hdf).__name__)
    )


class Module:
    """Base class of layers, in PuzzleLib's style.

    A module is called on a GPUArray (``y = module(x)``), keeps ``inData``, ``data`` (its output) and, after
    ``backward(grad)``, ``grad`` (the gradient of its input). Trainable parameters are `Variable` objects in
    ``vars``; other state (running statistics) are GPUArrays in ``attrs``; both are also plain attributes
    (``module.scale`` is the parameter's GPUArray). Subclasses implement ``updateData``, ``updateGrad``,
    ``accGradParams`` and the shape checks.

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

    # NOTE: what `copy.deepcopy` leaves at None (the last calls' results, and helpers bound to them) and what it shares
    # with the original instead of copying (a communicator); subclasses extend both
    transientFields = ("inData", "data", "grad")
    sharedFields = ()

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

    def zeroGradParams(self):
        """Sets the gradient of every parameter to zero."""
        for var in self.vars.values():
            var.grad.fill(0)

    def updateParams(self, learnRate):
        """param += learnRate * grad, for every parameter (PuzzleLib's sign convention: grads are negated); all or
        nothing, as `Optimizer.update`."""
        snapshot = self.snapshot("update")
        try:
            for var in self.vars.values():
                Blas.toVectorAddVector(var.data, var.grad, alpha=learnRate)
        except BaseException:
            snapshot.restore()
            raise

    # --- modes

    def reset(self):
        """Drops cached forward and backward results."""
        self.inData, self.data, self.grad = None, None, None

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

    # --- forward and backward

    def __call__(self, data):
        return self.forward(data)

    def forward(self, data):
        """Checks `data`, computes the output, and keeps both; returns the output (``self.data``).

        The previous call's results are dropped once the checks pass and before the new output is allocated, so the
        pool hands their blocks back to this call wherever nothing else holds them (an evaluation loop reuses one
        output block). An error past the checks (the device out of memory, an interrupt) leaves parameters,
        statistics and counters as they were, without the previous results: the arrays a call changes in place are
        copied on the device first (`stateArrays`) and put back if it raises.

        Raises:
            ModuleError: when `data` is not a GPUArray of the module's backend, its shape or dtype does not fit the
                module, or the module cannot run (`checkReady`); the module is left as it was.
        """
        self.checkArray(data, "data")
        self.checkReady()
        self.checkDataShape(data.shape)
        self.checkDataType(data.dtype)

        self.releaseResults()
        snapshot = self.snapshot("forward")
        # NOTE: the return is inside the try, so no line runs between the last change and the caller
        try:
            out = self.updateData(data)
            self.inData, self.data = data, out
            return out
        except BaseException:
            snapshot.restore()
            raise

    def snapshot(self, call, updParamGrads=True):
        """The state `call` (``"forward"``, ``"backward"``, ``"update"`` or ``"load"``) may change, to put back if it
        raises: a `Snapshot` of `stateArrays` (containers combine their children's)."""
        return Snapshot(self, self.stateArrays(call, updParamGrads))

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
        self.checkBackward(updParamGrads)
        snapshot = self.snapshot("backward", updParamGrads)
        try:
            ingrad = self.updateGrad(grad) if updGrad else None
            if updParamGrads and self.vars:
                self.accGradParams(grad, scale=scale, momentum=momentum)
            if updGrad:
                self.grad = ingrad
            return ingrad
        except BaseException:
            snapshot.restore()
            raise

    def updateData(self, data):
        raise NotImplementedError()

    def updateGrad(self, grad):
        raise NotImplementedError()

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        raise NotImplementedError()

    @staticmethod
    def accumulate(var, d, scale, momentum):
        """var.grad = scale * d + momentum * var.grad; with momentum 0 the old gradient is not read (an inf or NaN
        there is gone, not 0 * inf)."""
        d = d if d.shape == var.grad.shape else d.reshape(var.grad.shape)
        Blas.addVectorToVector(d, var.grad, out=var.grad, alpha=scale, beta=momentum)

    # --- checks

    def checkGrad(self, grad):
        """Raises `ModuleError` before any forward, or when `grad` differs from the output in shape or dtype."""
        if self.inData is None:
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
        pass

    def checkDataType(self, dtype):
        if dtype != self.calctype:
            raise ModuleError(
                "%s expects data of dtype %s (its calctype); got %s" % (self.describe(), self.calctype, dtype)
            )

    # --- persistence

    def saveName(self, name=None):
        return name if name is not None else (self.name if self.name is not None else type(self).__name__)

    def paramSpecs(self):
        """Entries the module saves and loads: {entry: (group, shape)}, with group ``"params"`` for a trainable
        `Variable` (in ``vars``) and ``"attrs"`` for other state (in ``attrs``)."""
        specs = {name: ("params", var.shape) for name, var in self.vars.items()}
        specs.update({name: ("attrs", attr.shape) for name, attr in self.attrs.items()})
        return specs

    def savedAsParams(self):
        """Attributes (state, not trainable) that files keep among the parameters, in ``params`` and ``links``, as
        PuzzleLib keeps them; none here."""
        return ()

    def saveEntries(self, name):
        """Yields (group, "<name>.<entry>", ndarray) for every entry of `paramSpecs`, by the file group it goes to:
        the parameters and `savedAsParams` in ``params``, then the other attributes in ``attrs``.

        Raises:
            ModuleError: for a module without its arrays (created empty and never loaded).
        """
        missing = [entry for entry in self.paramSpecs() if entry not in self.vars and entry not in self.attrs]
        if missing:
            raise ModuleError(
                "cannot save %r: %s is empty (no %s); load or set its parameters first"
                % (name, self.describe(), ", ".join(missing))
            )
        asParams = self.savedAsParams()
        for entry, var in self.vars.items():
            yield "params", "%s.%s" % (name, entry), var.data.get()
        for entry in asParams:
            yield "params", "%s.%s" % (name, entry), self.attrs[entry].get()
        for entry, attr in self.attrs.items():
            if entry not in asParams:
                yield "attrs", "%s.%s" % (name, entry), attr.get()

    def save(self, hdf, name=None):
        """Writes parameters and attributes to HDF5 in PuzzleLib's layout, which the original PuzzleLib loads.

        Groups: ``params`` holds the arrays under a running index (``"0"``, ``"1"``, ... over the whole file; in an open
        group, after the indices already there); ``links`` holds, for each ``"<module name>.<param>"``, its index as an
        integer dataset; ``attrs`` holds the running statistics as ``"<module name>.<attr>"``. A non-affine
        BatchNorm's scale and bias go to ``params`` too, as PuzzleLib keeps them.

        Saving to a path is atomic: the file is written beside the target under a hidden temporary name, flushed to
        disk and moved over the target with `os.replace`, so a save that fails or is interrupted leaves an existing
        file as it was (a process killed while writing leaves the temporary file behind). An existing target keeps its
        permission bits, a new one gets the umask's; when the path is a symlink, the file it points to is replaced.

        Args:
            hdf (str, os.PathLike or h5py.Group): a file path (created or replaced) or an open group (written into).
            name (str or None): the prefix; defaults to the module's name, else its class name.

        Raises:
            ModuleError: for an `hdf` of another type, a module (or a container's child) created empty and never
                loaded, an entry name that appears twice or contains "/", or an entry the open group already holds;
                nothing is written then.
            ValueError: for a `name` that is not a str or contains "/".
            OSError: from the file system or HDF5 (a missing folder, a full disk); an existing file is left as it was.
        """
        isPath = checkHdf(self.describe(), "save", hdf)
        name = self.saveName(checkName("%s.save" % type(self).__name__, name))
        entries = list(self.saveEntries(name))

        counts = collections.Counter(key for _, key, _ in entries)
        nested = [key for key in counts if "/" in key]
        if nested:
            raise ModuleError("cannot save %r: HDF5 would nest a name containing '/' into groups" % nested[0])
        twice = [key for key, count in counts.items() if count > 1]
        if twice:
            raise ModuleError("cannot save: the entry %r appears twice (give modules unique names)" % twice[0])

        if isPath:
            def writeFile(temporary):
                with h5py.File(temporary, "w") as f:
                    self.writeEntries(f, entries)

            writeAtomically(hdf, writeFile)
        else:
            self.writeEntries(hdf, entries)

    def writeEntries(self, hdf, entries):
        """Writes `entries` ((group, key, ndarray), from `saveEntries`) into the open group `hdf` in PuzzleLib's layout:
        a parameter as ``params/<index>`` with the index in ``links/<key>``, counting on after the indices already in
        ``params``; an attribute as ``attrs/<key>``.

        Raises:
            ModuleError: when `hdf` already holds one of the keys; nothing is written then.
        """
        held = [key for _, key, _ in entries if any(group in hdf and key in hdf[group] for group in ("links", "attrs"))]
        if held:
            raise ModuleError("cannot save: the group already holds the entry %r (give modules unique names)" % held[0])

        params, links, attrs = (hdf.require_group(group) for group in ("params", "links", "attrs"))
        index = 1 + max((int(key) for key in params if key.isascii() and key.isdigit()), default=-1)
        for group, key, value in entries:
            if group == "params":
                params.create_dataset(str(index), data=value)
                links.create_dataset(key, data=index)
                index += 1
            else:
                attrs.create_dataset(key, data=value)

    def load(self, hdf, name=None):
        """Reads parameters and attributes from HDF5 (saved by any module of the same kind, shapes and dtypes).

        Two layouts load: PuzzleLib's, which `save` writes (``links`` holds integer indices into ``params``), and the
        one this library wrote before (``links`` holds the names of ``params`` entries; a non-affine BatchNorm's scale
        and bias sit in ``attrs``). An entry whose shape differs only in size-1 axes is reshaped (PuzzleLib's
        BatchNorm1D keeps (1, C, 1, 1) where this one has (1, C, 1)). Every entry is read and checked before any is
        applied, and an interrupted apply is undone, so a failed load changes nothing.

        Args:
            hdf (str, os.PathLike or h5py.Group): a file path or an open group.
            name (str or None): the prefix; defaults to the module's name, else its class name.

        Raises:
            ModuleError: for an `hdf` of another type, a missing or unreadable file, a missing entry, or an entry of
                another shape or dtype (the message names it).
            ValueError: for a `name` that is not a str or contains "/".
        """
        isPath = checkHdf(self.describe(), "load", hdf)
        name = self.saveName(checkName("%s.load" % type(self).__name__, name))
        if isPath:
            try:
                f = h5py.File(hdf, "r")
            except (OSError, ValueError) as e:
                raise ModuleError(
                    "cannot load %s: %s is missing or not an HDF5 file (%s)" % (self.describe(), hdf, e)
                ) from None
            with f:
                plan = self.loadPlan(f, name)
        else:
            plan = self.loadPlan(hdf, name)

        # NOTE: a load interrupted while the checked entries are applied is undone, so it is applied whole or not at all
        snapshot = self.snapshot("load")
        try:
            for apply in plan:
                apply()
        except BaseException:
            snapshot.restore()
            raise

    def loadPlan(self, hdf, name):
        """Reads and checks this module's entries; returns the callables that apply them."""
        plan = []
        asParams = self.savedAsParams()
        for entry, (group, shape) in self.paramSpecs().items():
            key = "%s.%s" % (name, entry)
            if group == "params" or entry in asParams:
                # NOTE: files written here before kept the `savedAsParams` entries in attrs
                value = readEntry(hdf, "params", key, fallback="attrs" if group == "attrs" else None)
            else:
                value = readEntry(hdf, "attrs", key)
            plan.append(self.makeSetter(group, entry, fitEntry(key, value, shape)))
        return plan

    def makeSetter(self, group, entry, value):
        """A callable that puts `value` into parameter (group ``"params"``) or attribute (``"attrs"``) `entry`,
        creating it in a module created empty."""

        def apply():
            current = self.vars.get(entry) if group == "params" else self.attrs.get(entry)
            if current is None:
                array = gpuarray.to_gpu(value)
                self.setVar(entry, Variable(array, name=entry)) if group == "params" else self.setAttr(entry, array)
            else:
                (current.data if group == "params" else current).set(value)

        return apply


def fitEntry(key, value, shape):
    """Returns `value` (read for entry `key`) in `shape`: as it is, or reshaped when only size-1 axes differ (the same
    other axes in the same order); raises `ModuleError` for any other shape, or a dtype other than float32."""
    shape = tuple(shape)

    def squeezed(dims):
        return [dim for dim in dims if dim != 1]

    if value.shape != shape and value.size == math.prod(shape) and squeezed(value.shape) == squeezed(shape):
        value = value.reshape(shape)
    if value.shape != shape or value.dtype != np.float32:
        raise ModuleError(
            "cannot load %r: expected shape %s and dtype float32; the file has shape %s and dtype %s"
            % (key, shape, value.shape, value.dtype)
        )
    return value


def readEntry(hdf, group, key, fallback=None):
    """Reads entry `key` as an ndarray: from ``attrs``, or for group ``"params"`` through ``links``, whose entry holds
    an integer index into ``params`` (PuzzleLib's layout, ``params[str(links[key][()])]``) or the name of a ``params``
    entry (this library's earlier layout). When the file lacks it and `fallback` names another group, reads it there.

    Raises:
        ModuleError: for a missing entry or one that cannot be read.
    """
    value = findEntry(hdf, group, key)
    if value is None and fallback is not None:
        value = findEntry(hdf, fallback, key)
    if value is None:
        also = "" if fallback is None else " (nor an %s entry)" % fallback
        raise ModuleError("cannot load: the file has no %s entry %r%s" % (group, key, also))
    return value


def findEntry(hdf, group, key):
    """The entry `key` of `group` as an ndarray, or None when the file lacks it."""
    try:
        if group == "params":
            if "links" not in hdf or key not in hdf["links"]:
                return None
            link = hdf["links"][key][()]
            if isinstance(link, np.ndarray) and link.size == 1:
                link = link.reshape(-1)[0]
            if isinstance(link, bytes):
                target = link.decode()
            elif isinstance(link, str):
                target = link
            elif isinstance(link, (int, np.integer)) and not isinstance(link, (bool, np.bool_)):
                target = str(int(link))
            else:
                raise ValueError("the link is neither an index nor a name: %.80r" % (link,))
            if "params" not in hdf or target not in hdf["params"]:
                raise ValueError("the link points to params entry %r, which the file lacks" % target)
            return np.asarray(hdf["params"][target][()])
        if "attrs" not in hdf or key not in hdf["attrs"]:
            return None
        return np.asarray(hdf["attrs"][key][()])
    except (OSError, ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
        raise ModuleError("cannot load %s entry %r: the file is corrupt (%s)" % (group, key, e)) from None
