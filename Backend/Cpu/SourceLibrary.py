"""Run-time compilation of the project's C sources (``Kernels/*.c``) into shared libraries loaded with ctypes: the CPU
twin of `Backend.Cuda.SourceModule`.

A source is compiled once per machine and kept in a disk cache, keyed on the source text, the compiler's version, the
options and the machine's processor (``-march=native`` builds for the processor that runs it), then loaded once per
process. The compiler is ``$CC``, else ``cc``. Options: `COMPILER_OPTIONS`, plus each of `OPTIONAL_OPTIONS` that the
compiler accepts (a compiler without OpenMP builds a library that runs on one core). The cache is the folder
``$PUZZLELIB_CACHE_DIR``, else ``$XDG_CACHE_HOME/PuzzleLib``, else ``~/.cache/PuzzleLib``; where it cannot be written, a
temporary folder of the process serves. A library is written under a temporary name and renamed into place, so
processes that compile at once (MPI ranks) never load a half-written file.

Why at run time rather than as an extension module built by ``pip install``: the package stays pure Python (one wheel,
an editable install that needs no build step, no Python headers), a machine that gains a compiler later gets the C
kernels without reinstalling, ``-march=native`` is safe because the library is built where it runs, and the CUDA
sources are built the same way. The price is a compiler at run time (without one the numpy kernels serve) and about a
second for the first call on a machine.
"""

import ctypes
import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import threading

from PuzzleLib.Kernels import sourcePath

COMPILER_OPTIONS = ("-std=c99", "-O3", "-fPIC", "-shared")
# NOTE: tried together first, then dropped one at a time from the last: -fopenmp brings the threads, -march=native the
# processor's SIMD width (and its float16 conversions)
OPTIONAL_OPTIONS = ("-march=native", "-fopenmp")
COMPILE_TIMEOUT = 300

libraries = {}
lock = threading.Lock()


class CompileError(RuntimeError):
    """The C compiler is missing or refused a source; the message says which and gives the compiler's last words."""


def compilerCommand():
    """The compiler as an argument list (``$CC``, else ``cc``). Raises `CompileError` when it is not on the PATH."""
    command = shlex.split(os.environ.get("CC", "cc"))
    if not command or shutil.which(command[0]) is None:
        raise CompileError("no C compiler found (CC=%r)" % os.environ.get("CC", "cc"))
    return command


def compilerVersion(command):
    try:
        result = subprocess.run(command + ["--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        raise CompileError("the C compiler %r does not run: %s" % (" ".join(command), e)) from None
    return result.stdout + result.stderr


def processorSignature():
    """What a ``-march=native`` build depends on: the machine and the processor's feature flags where Linux lists
    them."""
    signature = platform.machine() + " " + platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features", "model name")):
                    signature += "\n" + line.strip()
    except OSError:
        pass
    return signature


def cacheDirs():
    """The folders a library may be written to, in order: the configured cache, then a folder of this process."""
    base = os.environ.get("PUZZLELIB_CACHE_DIR")
    if not base:
        base = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
                            "PuzzleLib")
    return [base, None]


def optionSets():
    """Option lists to try, the most capable first."""
    return [list(COMPILER_OPTIONS) + list(OPTIONAL_OPTIONS[:count]) for count in range(len(OPTIONAL_OPTIONS), -1, -1)]


def compileInto(command, source, options, folder, name):
    """Compiles `source` into ``folder/name`` (through a temporary file); returns the compiler's output on failure,
    None on success. Raises OSError where the folder cannot be written."""
    handle, temporary = tempfile.mkstemp(prefix=name + ".", suffix=".tmp", dir=folder)
    os.close(handle)
    try:
        try:
            result = subprocess.run(
                command + options + ["-o", temporary, source], capture_output=True, text=True, timeout=COMPILE_TIMEOUT
            )
        except (OSError, subprocess.SubprocessError) as e:
            return str(e)
        if result.returncode != 0:
            return (result.stderr or result.stdout).strip() or "exit status %d" % result.returncode
        os.replace(temporary, os.path.join(folder, name))
        return None
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def buildLibrary(fileName):
    """The path of the compiled library of ``Kernels/<fileName>``, compiled now unless the cache holds it."""
    command = compilerCommand()
    source = sourcePath(fileName)
    with open(source, "rb") as f:
        text = f.read()

    stem = os.path.splitext(fileName)[0]
    machine = (compilerVersion(command) + "\0" + processorSignature()).encode()
    failures = []
    for options in optionSets():
        key = hashlib.sha256(
            b"\0".join([text, " ".join(command + options).encode(), machine])
        ).hexdigest()[:20]
        name = "%s-%s.so" % (stem, key)

        problem = "no folder to write the library to"
        for folder in cacheDirs():
            if folder is not None and os.path.exists(os.path.join(folder, name)):
                return os.path.join(folder, name)
            try:
                folder = folder if folder is not None else tempfile.mkdtemp(prefix="PuzzleLib-")
                os.makedirs(folder, exist_ok=True)
                problem = compileInto(command, source, options, folder, name)
            except OSError as e:
                # NOTE: the folder cannot be written: the next one
                problem = str(e)
                continue
            if problem is None:
                return os.path.join(folder, name)
            break
        failures.append("%s: %s" % (" ".join(options), problem.splitlines()[-1] if problem else "?"))

    raise CompileError("the C compiler %r could not build %s (%s)" % (" ".join(command), fileName, "; ".join(failures)))


def loadLibrary(fileName):
    """The ctypes library of ``Kernels/<fileName>`` (e.g. ``"BatchNorm.c"``), compiled on the first call on a machine.

    Raises:
        CompileError: no compiler, or none of the option sets compiles; OSError: the library does not load.
    """
    with lock:
        library = libraries.get(fileName)
        if library is None:
            library = ctypes.CDLL(buildLibrary(fileName))
            libraries[fileName] = library
        return library
