"""Runs the `unittest()` at the end of every module file, on the backend in use.

``python -m PuzzleLib.TestLib.RunUnittests`` imports each module of the packages below, calls its ``unittest()`` once
(a failure is reported, never retried) and ends with the line ``N passed, N failed``; the exit status is 1 on any
failure. The memory pool is poisoned (every block served is NaN-filled) so that reads of unwritten memory show. Set
``PUZZLELIB_BACKEND`` to choose the backend; the pytest suite runs the same self-tests on every backend
(``TestLib/tests/test_unittests.py``).
"""

import importlib
import pkgutil
import sys
import traceback

PACKAGES = ("Modules", "Containers", "Passes", "Cost", "Optimizers")


def moduleNames():
    """Names of every module (not package) under PACKAGES that defines a callable ``unittest``."""
    names = []
    for package in PACKAGES:
        pkg = importlib.import_module("PuzzleLib.%s" % package)
        for info in pkgutil.iter_modules(pkg.__path__, prefix="PuzzleLib.%s." % package):
            if not info.ispkg and callable(getattr(importlib.import_module(info.name), "unittest", None)):
                names.append(info.name)
    return sorted(names)


def main():
    from PuzzleLib import Config
    from PuzzleLib.Backend import gpuarray

    gpuarray.memoryPool.poison = True
    print("backend: %s" % Config.currentBackend())
    passed, failed = 0, []
    for name in moduleNames():
        try:
            importlib.import_module(name).unittest()
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
