"""Library-wide configuration: which backend new arrays are created on, and on which CUDA device.

Arrays carry their backend (`PuzzleLib.Backend.Dispatch`), so the choice made here matters only where an array is
*created* (``gpuarray.to_gpu``, ``gpuarray.empty``, a module's parameters); every later operation runs on the backend of
the arrays it is given. Both backends can live in one process.

- `backend` (str): ``"cuda"``, ``"cpu"`` or ``"auto"``, read from the environment variable ``PUZZLELIB_BACKEND``
  (default ``"auto"``) when this module is imported. ``"auto"`` is resolved at the first allocation: CUDA when pycuda
  imports and a device answers, else the CPU, with one log line saying which and why; `backend` then holds the result.
  Asking for ``"cuda"`` where it cannot work raises `ConfigError` at the first allocation, naming what is missing
  (pycuda not installed, no device, driver too old), never a silent fallback.
- `deviceIdx` (int): the CUDA device, from ``PUZZLELIB_DEVICE`` (default 0); set it before the first CUDA allocation.
- `useBackend(name)`: picks the backend of the arrays created next, for the rest of the program (a call) or for a
  ``with`` block (a context manager).
- `cpuKernels` (str): which batch-norm kernels the CPU backend runs, from ``PUZZLELIB_CPU_KERNELS``: ``"c"`` (the C
  source ``Kernels/BatchNorm.c``, compiled on first use), ``"numpy"``, or ``"auto"`` (default: C where a compiler
  builds it, else numpy with one log line). `useCpuKernels(name)` changes it as `useBackend` does the backend.
- `cpuThreads` (int): the cores the CPU backend's kernels use, from ``PUZZLELIB_CPU_THREADS`` (default: the cores this
  process may run on).

Importing this module touches no device and compiles nothing. A malformed ``PUZZLELIB_BACKEND``, ``PUZZLELIB_DEVICE``,
``PUZZLELIB_CPU_KERNELS`` or ``PUZZLELIB_CPU_THREADS`` raises `ConfigError` on import, naming the variable and its
value.
"""

import functools
import logging
import os

__all__ = [
    "ConfigError", "backend", "backendNames", "cpuKernelNames", "cpuKernels", "cpuThreads", "currentBackend",
    "cudaProblem", "deviceIdx", "logger", "useBackend", "useCpuKernels",
]


class ConfigError(RuntimeError):
    """A backend or device setting that is malformed, or a backend that cannot work on this machine."""


backendNames = ("auto", "cuda", "cpu")
cpuKernelNames = ("auto", "c", "numpy")

logger = logging.getLogger("PuzzleLib")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("PuzzleLib: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def checkedBackendName(value, source):
    """`value` lower-cased and stripped when it names a backend; else `ConfigError` naming `source` and the value."""
    name = str(value).strip().lower()
    if name not in backendNames:
        raise ConfigError("%s must be one of 'auto', 'cuda', 'cpu'; got %r" % (source, value))
    return name


def checkedInteger(value, source, least):
    """`value` as an int of at least `least` (0 or 1); else `ConfigError` naming `source` and the value."""
    expected = "a non-negative integer" if least == 0 else "a positive integer"
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError("%s must be %s; got %r" % (source, expected, value)) from None
    if number < least:
        raise ConfigError("%s must be %s; got %r" % (source, expected, value))
    return number


def checkedDeviceIdx(value, source):
    return checkedInteger(value, source, 0)


def checkedThreads(value, source):
    return checkedInteger(value, source, 1)


def checkedCpuKernelsName(value, source):
    """`value` lower-cased and stripped when it names CPU kernels; else `ConfigError` naming `source` and the value."""
    name = str(value).strip().lower()
    if name not in cpuKernelNames:
        raise ConfigError("%s must be one of 'auto', 'c', 'numpy'; got %r" % (source, value))
    return name


def availableCores():
    """The cores this process may run on (its CPU affinity where the system has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


backend = checkedBackendName(os.environ.get("PUZZLELIB_BACKEND", "auto"), "PUZZLELIB_BACKEND")
deviceIdx = checkedDeviceIdx(os.environ.get("PUZZLELIB_DEVICE", "0"), "PUZZLELIB_DEVICE")
cpuKernels = checkedCpuKernelsName(os.environ.get("PUZZLELIB_CPU_KERNELS", "auto"), "PUZZLELIB_CPU_KERNELS")
cpuThreads = checkedThreads(os.environ.get("PUZZLELIB_CPU_THREADS", availableCores()), "PUZZLELIB_CPU_THREADS")


def cudaProblem():
    """None when the CUDA backend can work here (on device `deviceIdx`), else a sentence saying what is missing.

    The probe initialises the CUDA driver (no context is created); its answer is kept for the life of the process.
    """
    return probeCuda(deviceIdx)


@functools.cache
def probeCuda(idx):
    try:
        import pycuda.driver as cuda
    except ImportError as e:
        return "pycuda is not installed (%s); install the extra: pip install 'PuzzleLib[cuda]'" % e
    except OSError as e:
        return "pycuda is installed but the CUDA driver library cannot be loaded (%s)" % e

    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as e:
        text = str(e)
        if "INSUFFICIENT_DRIVER" in text or "insufficient" in text.lower():
            return "the CUDA driver is too old for this pycuda build (%s)" % text
        return "the CUDA driver could not be initialised (%s)" % text

    if count == 0:
        return "no CUDA device is present"
    if idx >= count:
        return "PUZZLELIB_DEVICE=%d but only %d CUDA device(s) are present" % (idx, count)
    return None


def currentBackend():
    """The name of the backend new arrays are created on, ``"cuda"`` or ``"cpu"``.

    Resolves ``"auto"`` (once: the result is stored in `backend`, with one log line saying which and why).

    Raises:
        ConfigError: `backend` is ``"cuda"`` and the CUDA backend cannot work here; the message says what is missing.
    """
    global backend
    if backend == "auto":
        problem = cudaProblem()
        if problem is None:
            logger.info("backend auto -> cuda (device %d answered)", deviceIdx)
            backend = "cuda"
        else:
            logger.info("backend auto -> cpu, because %s", problem)
            backend = "cpu"
    elif backend == "cuda":
        problem = cudaProblem()
        if problem is not None:
            raise ConfigError(
                "the CUDA backend cannot work here (asked for by PUZZLELIB_BACKEND or useBackend): %s" % problem
            )
    return backend


class ProcessChoice:
    """A process-wide setting of this module (`variable`, checked by `checker`): a call sets it for the rest of the
    program; a ``with`` block restores the previous value when it ends."""

    variable, checker, source = None, None, None

    def __init__(self, name):
        self.previous = globals()[self.variable]
        globals()[self.variable] = self.checker(name, self.source)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        globals()[self.variable] = self.previous
        return False


class useBackend(ProcessChoice):
    """Picks the backend (``"cuda"``, ``"cpu"`` or ``"auto"``) of the arrays created next.

    Called, it sets `backend` for the rest of the program; used as a context manager it restores the previous choice
    when the block ends. Arrays created before keep their own backend, so both kinds can live in one process (mixing
    them in one call is an error that names both). The choice is process-wide, not per thread.

    Raises:
        ConfigError: for a name other than the three.

    Example:
        >>> with Config.useBackend("cpu"):
        ...     x = gpuarray.to_gpu(np.ones((2, 3), np.float32))        # a CPU array, whatever the default
    """

    variable, checker, source = "backend", staticmethod(checkedBackendName), "useBackend's name"


class useCpuKernels(ProcessChoice):
    """Picks the batch-norm kernels of the CPU backend (``"c"``, ``"numpy"`` or ``"auto"``) for the calls that follow.

    Called, it sets `cpuKernels` for the rest of the program; used as a context manager it restores the previous choice
    when the block ends. The choice is process-wide, not per thread. Asking for ``"c"`` where the C source cannot be
    built makes the next CPU batch-norm call raise `ConfigError`, naming the compiler's complaint.

    Raises:
        ConfigError: for a name other than the three.

    Example:
        >>> with Config.useCpuKernels("numpy"):
        ...     y = bn(x)                                           # the numpy kernels, whatever the default
    """

    variable, checker, source = "cpuKernels", staticmethod(checkedCpuKernelsName), "useCpuKernels's name"
