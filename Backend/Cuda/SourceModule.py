"""Run-time compilation of the project's CUDA sources (`Kernels/*.cu`) with pycuda.

A source is compiled once per process and context (memoized on file, options and context) and once per machine
thanks to pycuda's disk cache (keyed on the source text, options and architecture). `NVCC_OPTIONS` are also the
options `TestLib/test_kernels_compile.py` compiles with, so a file that passes that test compiles here too.

Debugging: with ``PUZZLELIB_CUDA_DEBUG=1`` sources compile with ``-G -lineinfo`` (device debug info, no
optimization), and a compile error prints the numbered source before the error propagates.

pycuda is imported lazily, so this module can be imported (for its constants) where no device exists.
"""

import os
import sys
import threading

KERNELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "Kernels")

NVCC_OPTIONS = ("-O3", "-Xptxas", "-warn-spills")
DEBUG_OPTIONS = ("-G", "-lineinfo")

modules = {}
lock = threading.Lock()


def debugEnabled():
    return os.environ.get("PUZZLELIB_CUDA_DEBUG", "0").strip().lower() not in ("", "0", "false", "no")


def kernelPath(fileName):
    return os.path.join(KERNELS_DIR, fileName)


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
        fileName (str): a file in `KERNELS_DIR`, e.g. ``"BatchNorm.cu"``.
        defines (dict or None): preprocessor macros (``{"BLOCK_SIZE": 256}``) that specialise the build.

    Raises:
        pycuda.driver.CompileError: when nvcc rejects the source (the numbered source is printed first in debug mode).
    """
    from pycuda.compiler import SourceModule

    from PuzzleLib.Backend.Cuda import Driver

    options = nvccOptions(defines)
    key = (fileName, tuple(options), id(Driver.context))

    with lock:
        module = modules.get(key)
        if module is not None:
            return module

        with open(kernelPath(fileName)) as f:
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


class Kernels:
    """Function handles of one compiled source, prepared once and cached by name.

    `get(name, argTypes)` returns a pycuda function prepared with the `struct` format `argTypes` (``"P"`` pointer,
    ``"i"`` int32, ``"q"`` int64, ``"f"`` float32), ready for ``func.prepared_call(grid, block, *args)``.
    """

    def __init__(self, fileName, defines=None):
        self.fileName, self.defines = fileName, dict(defines or {})
        self.functions = {}

    def get(self, name, argTypes):
        func = self.functions.get(name)
        if func is None:
            func = getModule(self.fileName, self.defines).get_function(name)
            func.prepare(argTypes)
            self.functions[name] = func
        return func
