"""Packages whose public classes load on first access (PEP 562).

A package such as `PuzzleLib.Modules` names each class after the file that holds it (``Modules/BatchNorm.py`` defines
``BatchNorm``). Loading lazily keeps ``import PuzzleLib.Modules`` cheap and lets ``python -m
PuzzleLib.Modules.BatchNorm`` run a file's self-test without importing it twice. Python binds an imported submodule as
an attribute of its package, which would hide the class of the same name; the package's class here refuses that
binding, so ``from PuzzleLib.Modules import BatchNorm`` is the class whatever was imported before.
"""

import importlib
import sys
import types


class LazyPackage(types.ModuleType):
    """Module type of a lazy package; `names` maps each public name to the submodule that defines it."""

    names = {}

    def __getattr__(self, name):
        if name not in self.names:
            raise AttributeError("module %r has no attribute %r" % (self.__name__, name))
        value = getattr(importlib.import_module("%s.%s" % (self.__name__, self.names[name])), name)
        self.__dict__[name] = value
        return value

    def __setattr__(self, name, value):
        if name in self.names and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)

    def __dir__(self):
        return sorted(set(self.names) | set(self.__dict__))


def makeLazy(packageName, names):
    """Turns the package `packageName` (call it from its __init__ with ``__name__``) into a `LazyPackage`.

    Args:
        packageName (str): the package's ``__name__``.
        names (dict): public name -> submodule name within the package.
    """
    package = sys.modules[packageName]
    package.__class__ = type("LazyPackage", (LazyPackage,), {"names": dict(names)})
    package.__all__ = sorted(names)
