"""Modules: layers called on GPUArrays (``y = module(x)``; ``module.backward(grad)``).

Names load on first access (PEP 562), so ``python -m PuzzleLib.Modules.BatchNorm`` runs that file's self-test
without importing it twice.
"""

import importlib
import sys
import types

_modules = {
    "Module": "Module",
    "ModuleError": "Module",
    "Variable": "Variable",
    "BatchNorm": "BatchNorm",
    "BatchNormND": "BatchNormND",
    "BatchNorm1D": "BatchNorm1D",
    "BatchNorm2D": "BatchNorm2D",
    "BatchNorm3D": "BatchNorm3D",
    "Linear": "Linear",
    "Activation": "Activation",
}

__all__ = sorted(_modules)


class _Package(types.ModuleType):
    # NOTE: importing a submodule binds it as an attribute of its package; here the class of the same name must win
    def __setattr__(self, name, value):
        if name in _modules and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name):
    if name not in _modules:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module("%s.%s" % (__name__, _modules[name])), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
