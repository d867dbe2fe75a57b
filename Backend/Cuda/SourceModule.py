"""Run-time compilation of the project's CUDA sources (`PuzzleLib.Kernels`) with pycuda.

A source is compiled once per process and context (memoized on file, options and context) and once per machine
thanks to pycuda's disk cache (keyed on the source text, options and architecture), with `Kernels.NVCC_OPTIONS` (the
options the compile test uses too, so a source that passes that test compiles here) and its declaration's defines.

Debugging: with ``PUZZLELIB_CUDA_DEBUG=1`` sources compile with ``-G -lineinfo`` (device debug info, no
optimization), and a compile error prints the numbered source before the error propagates.
"""

import os
import sys
import threading

from pycuda.compiler import SourceModule

from PuzzleLib.Backend.Cuda import Driver
from PuzzleLib.Kernels import KERNELS_DIR, NVCC_OPTIONS, sourcePath

DEBUG_OPTIONS = ("-G", "-lineinfo")

modules = {}
# NOTE: reentrant, so that a thread whose interrupt left it held (a `with` block cut short at its exit) can still
# take it
lock = threading.RLock()


def debugEnabled():
    return os.environ.get("PUZZLELIB_CUDA_DEBUG", "0").strip().lower() not in ("", "0", "false", "no")


def numberedSource(source):
    return "\n".join("%5d  %s" % (i + 1, line) for i, line in enumerate(source.splitlines()))


def nvccOptions(defines=None):
    """Compiler options for a build: the fixed options, ``-DNAME=VALUE`` for each define, and the debug switch."""
    options = list(NVCC_OPTIONS)
    for name, value in sorted((defines or {}).items()):
        options.append("-D%s=%s" % (name, value))
    if debugEnabled():
        options = [opt for opt in options if opt != "-O3"] + list(DEBUG_OPTIONS)
    return options


def getModule(fileName, defines=None):
    """Returns the compiled pycuda module of ``Kernels/<fileName>`` for the current context.

    Args:
        fileName (str): a source of `PuzzleLib.Kernels`, e.g. ``"BatchNorm.cu"``.
        defines (dict or None): preprocessor macros (``{"BLOCK_SIZE": 256}``) that specialise the build.

    Raises:
        pycuda.driver.CompileError: when nvcc rejects the source (the numbered source is printed first in debug mode).
    """
    options = nvccOptions(defines)
    key = (fileName, tuple(options), id(Driver.context()))
    # NOTE: a compiled module is found without the lock, so no interrupt can leave the lock held there (an interrupt
    # can cut a `with` statement short between its block and its exit)
    module = modules.get(key)
    if module is not None:
        return module

    with lock:
        module = modules.get(key)
        if module is not None:
            return module

        with open(sourcePath(fileName)) as f:
            source = f.read()

        try:
            module = SourceModule(
                source, arch=Driver.arch(), no_extern_c=True, options=options, include_dirs=[KERNELS_DIR]
            )
        except Exception:
            if debugEnabled():
                print("%s:\n%s" % (fileName, numberedSource(source)), file=sys.stderr)
            raise

        modules[key] = module
        return module
