"""Containers: modules made of modules (``Sequential``).

Names load on first access (PEP 562), as in `PuzzleLib.Modules`.
"""

import importlib

_modules = {
    "Sequential": "Sequential",
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
