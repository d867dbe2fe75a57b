"""Runs the `unittest()` at the end of every module file, on the backend in use.

``python -m PuzzleLib.TestLib.RunUnittests`` imports each module of the packages below, calls its ``unittest()`` once
(a failure is reported, never retried) and ends with the line ``N passed, N failed``; the exit status is 1 on any
failure. The memory pool is poisoned (every block served is NaN-filled) so that reads of unwritten memory show. Set
``PUZZLELIB_BACKEND`` to choose the backend.
"""

import importlib
import pkgutil
import sys
import traceback

PACKAGES = ("Modules", "Containers", "Cost", "Optimizers")


def moduleNames():
    """Names of every module (not package) under PACKAGES that defines a callable ``unittest``."""
    import PuzzleLib

    names = []
    for package in PACKAGES:
        try:
            pkg = importlib.import_module("PuzzleLib.%s" % package)
        except ModuleNotFoundError:
            continue
        for info in pkgutil.iter_modules(pkg.__path__, prefix="%s.%s." % (PuzzleLib.__name__, package)):
            if not info.ispkg:
                names.append(info.name)
    return sorted(names)


def main():
    from PuzzleLib import Config
    from PuzzleLib.Backend import gpuarray

    gpuarray.memoryPool.poison = True
    print("backend: %s" % Config.backend)
    passed, failed = 0, []
    for name in moduleNames():
        module = importlib.import_module(name)
        test = getattr(module, "unittest", None)
        if not callable(test):
            continue
        try:
            test()
        except Exception:
            failed.append(name)
            print("FAILED %s\n%s" % (name, traceback.format_exc()))
        else:
            passed += 1
            print("passed %s" % name)

    print("%d passed, %d failed" % (passed, len(failed)))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
