"""Modules: layers called on GPUArrays (``y = module(x)``; ``module.backward(grad)``).

Names load on first access (PEP 562), so ``python -m PuzzleLib.Modules.BatchNorm`` runs that file's self-test
without importing it twice.
"""

import importlib

_modules = {
    "Module": "Module",
    "ModuleError": "Module",
    "Variable": "Variable",
    "BatchNorm": "BatchNorm",
    "BatchNormND": "BatchNormND",
    "BatchNorm1D": "BatchNorm1D",
    "BatchNorm2D": "BatchNorm2D",
    "BatchNorm3D": "BatchNorm3D",
}

__all__ = sorted(_modules)


def __getattr__(name):
    if name not in _modules:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module("%s.%s" % (__name__, _modules[name])), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
