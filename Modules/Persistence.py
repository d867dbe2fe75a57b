"""Persistence of modules in HDF5: `Persistent`, the part of `Modules.Module` that saves and loads, in the original
PuzzleLib's layout (which `save` writes and the original reads) and in the layout this library wrote before.

PuzzleLib's layout: each parameter is ``params/<index>`` (``"0"``, ``"1"``, ... one running index over the whole
file), ``links/<name>.<param>`` holds that index as an integer, the statistics are ``attrs/<name>.<attr>``; a
non-affine BatchNorm's scale and bias go to ``params`` too, as the original keeps them. The earlier layout differs in
two ways: ``links`` held the name of the ``params`` entry, and a non-affine BatchNorm's scale and bias sat in ``attrs``.
A save to a path is atomic (`AtomicFile.writeAtomically`); a load reads and checks every entry before it applies any,
and applies them as one transaction (`Modules.Transaction`).
"""

import collections
import math
import os

import h5py
import numpy as np

from PuzzleLib.AtomicFile import writeAtomically
from PuzzleLib.Backend import gpuarray
from PuzzleLib.Modules.Arguments import checkName
from PuzzleLib.Modules.ModuleError import ModuleError
from PuzzleLib.Modules.Variable import Variable


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



class Persistent:
    """What `Modules.Module` saves and loads: `paramSpecs` (the entries), `save`, `load`, and the hooks a module may
    change (`savedAsParams`, `saveEntries`, `makeSetter`; containers change `saveEntries` and `loadPlan`)."""

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
        self.snapshot("load").run(applyAll, plan)

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


def applyAll(plan):
    """Runs every setter of a load's plan, in order."""
    for apply in plan:
        apply()
