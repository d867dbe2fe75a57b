"""Module: the base of every layer (forward, backward, modes, parameters, HDF5 persistence)."""

import os

import h5py
import numpy as np

from PuzzleLib.Backend import Blas, gpuarray
from PuzzleLib.Modules.Variable import Variable


class ModuleError(Exception):
    """Bad input to a module (shape, dtype, state or file); the module is left exactly as it was."""


def checkPositiveInt(owner, name, value):
    """Raises ValueError naming `owner` and `name` unless `value` is a positive int (bools are not ints here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError("%s: %s must be a positive int; got %r" % (owner, name, value))


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
        name (str or None): the module's name, used for the entries of saved files (``"<name>.<param>"``).
    """

    def __init__(self, name=None):
        self.name = name
        self.vars, self.attrs = {}, {}
        self.train = True
        self.calctype = np.dtype(np.float32)
        self.inData, self.data, self.grad = None, None, None

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
        arrays = [var.data for var in self.vars.values()] + list(self.attrs.values())
        return arrays[0].backend if arrays else None

    def zeroGradParams(self):
        """Sets the gradient of every parameter to zero."""
        for var in self.vars.values():
            var.grad.fill(0)

    def updateParams(self, learnRate):
        """param += learnRate * grad, for every parameter (PuzzleLib's sign convention: grads are negated)."""
        for var in self.vars.values():
            Blas.toVectorAddVector(var.data, var.grad, alpha=learnRate)

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
        """Returns ``np.dtype(T)``; raises `ModuleError` when it is not one of `calcTypes()`."""
        dtype, supported = np.dtype(T), self.calcTypes()
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
        output block). An error past the checks (the device out of memory) leaves parameters and statistics as they
        were, without the previous results.

        Raises:
            ModuleError: when `data` is not a GPUArray of the module's backend, its shape or dtype does not fit the
                module, or the module cannot run (`checkReady`); the module is left as it was.
        """
        self.checkArray(data, "data")
        self.checkReady()
        self.checkDataShape(data.shape)
        self.checkDataType(data.dtype)

        self.releaseResults()
        out = self.updateData(data)
        self.inData, self.data = data, out
        return out

    def releaseResults(self):
        """Drops the references to the previous forward's results (``inData``, ``data``)."""
        self.inData, self.data = None, None

    def backward(self, grad, updParamGrads=True, updGrad=True, scale=1.0, momentum=0.0):
        """Backpropagates `grad` (the gradient of the output; shape and dtype of ``self.data``).

        ``self.grad`` receives the gradient of the input (when `updGrad`); each parameter gradient accumulates as
        ``var.grad = scale * d + momentum * var.grad`` (when `updParamGrads`).

        Raises:
            ModuleError: before any forward, or when `grad` does not match the output in shape or dtype.
        """
        self.checkGrad(grad)
        ingrad = self.updateGrad(grad) if updGrad else None
        if updParamGrads and self.vars:
            self.accGradParams(grad, scale=scale, momentum=momentum)
        if updGrad:
            self.grad = ingrad
        return ingrad

    def updateData(self, data):
        raise NotImplementedError()

    def updateGrad(self, grad):
        raise NotImplementedError()

    def accGradParams(self, grad, scale=1.0, momentum=0.0):
        raise NotImplementedError()

    @staticmethod
    def accumulate(var, d, scale, momentum):
        """var.grad = scale * d + momentum * var.grad."""
        Blas.addVectorToVector(d.reshape(var.grad.shape), var.grad, out=var.grad, alpha=scale, beta=momentum)

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

    def checkReady(self):
        """Raises `ModuleError` when the module cannot run in its present state (e.g. created empty); no-op here."""

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
        """Entries the module saves: {name: (group, shape)} with group ``params`` or ``attrs``."""
        specs = {name: ("params", var.shape) for name, var in self.vars.items()}
        specs.update({name: ("attrs", attr.shape) for name, attr in self.attrs.items()})
        return specs

    def saveEntries(self, name):
        """Yields (group, "<name>.<entry>", ndarray) for every parameter and attribute."""
        for entry, var in self.vars.items():
            yield "params", "%s.%s" % (name, entry), var.data.get()
        for entry, attr in self.attrs.items():
            yield "attrs", "%s.%s" % (name, entry), attr.get()

    def save(self, hdf, name=None):
        """Writes parameters and attributes to HDF5 in PuzzleLib's layout.

        Groups: ``params`` (trainable arrays), ``links`` (for each parameter name, the ``params`` entry holding it)
        and ``attrs`` (running statistics and constants); entry names are ``"<module name>.<param>"``.

        Args:
            hdf (str, os.PathLike or h5py.Group): a file path (created or overwritten) or an open group.
            name (str or None): the prefix; defaults to the module's name, else its class name.
        """
        name = self.saveName(name)
        if isinstance(hdf, (str, os.PathLike)):
            with h5py.File(hdf, "w") as f:
                self.writeEntries(f, name)
        else:
            self.writeEntries(hdf, name)

    def writeEntries(self, hdf, name):
        params, links, attrs = (hdf.require_group(group) for group in ("params", "links", "attrs"))
        for group, key, value in self.saveEntries(name):
            if key in params or key in attrs:
                raise ModuleError("cannot save: the entry %r appears twice (give modules unique names)" % key)
            if group == "params":
                params.create_dataset(key, data=value)
                links[key] = key
            else:
                attrs.create_dataset(key, data=value)

    def load(self, hdf, name=None):
        """Reads parameters and attributes saved by `save` (any module of the same kind, shapes and dtypes).

        Every entry is read and checked before any is applied, so a failed load changes nothing.

        Raises:
            ModuleError: for a missing or unreadable file, a missing entry, or an entry of another shape or dtype
                (the message names it).
        """
        name = self.saveName(name)
        if isinstance(hdf, (str, os.PathLike)):
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

        for apply in plan:
            apply()

    def loadPlan(self, hdf, name):
        """Reads and checks this module's entries; returns the callables that apply them."""
        plan = []
        for entry, (group, shape) in self.paramSpecs().items():
            key = "%s.%s" % (name, entry)
            value = readEntry(hdf, group, key)
            if value.shape != tuple(shape) or value.dtype != np.float32:
                raise ModuleError(
                    "cannot load %r: expected shape %s and dtype float32; the file has shape %s and dtype %s"
                    % (key, tuple(shape), value.shape, value.dtype)
                )
            plan.append(self.makeSetter(group, entry, value))
        return plan

    def makeSetter(self, group, entry, value):
        def apply():
            current = self.vars.get(entry) if group == "params" else self.attrs.get(entry)
            if current is None:
                array = gpuarray.to_gpu(value)
                self.setVar(entry, Variable(array, name=entry)) if group == "params" else self.setAttr(entry, array)
            else:
                (current.data if group == "params" else current).set(value)

        return apply


def readEntry(hdf, group, key):
    try:
        if group == "params":
            link = hdf["links"][key][()]
            target = link.decode() if isinstance(link, bytes) else str(link)
            return np.asarray(hdf["params"][target][()])
        return np.asarray(hdf["attrs"][key][()])
    except KeyError:
        raise ModuleError("cannot load: the file has no %s entry %r" % (group, key)) from None
    except (OSError, ValueError, TypeError) as e:
        raise ModuleError("cannot load %s entry %r: the file is corrupt (%s)" % (group, key, e)) from None
