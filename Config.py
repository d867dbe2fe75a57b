"""Library-wide configuration: which backend runs, on which device.

`backend` is read from the environment variable ``PUZZLELIB_BACKEND`` the first time it is asked for:

- ``cpu``: the numpy backend, available everywhere;
- ``cuda``: the pycuda backend; if it cannot work (pycuda not installed, no device, driver too old) asking for it
  raises `ConfigError` that says what is missing, never a silent fallback;
- ``auto`` (default): CUDA when pycuda imports and a device answers, else CPU, with one log line saying which and why.

Resolution is lazy (module ``__getattr__``), so importing this module touches no device. ``deviceIdx`` comes from
``PUZZLELIB_DEVICE`` (default 0). Set the variables before the first use of a backend; `setBackend` does it from code.
"""

import logging
import os

__all__ = ["ConfigError", "setBackend", "cudaProblem", "logger"]  # plus the lazy `backend` and `deviceIdx`


class ConfigError(RuntimeError):
    """The requested backend cannot work on this machine."""


class Backend:
    cuda = "cuda"
    cpu = "cpu"
    auto = "auto"


logger = logging.getLogger("PuzzleLib")
if not logger.handlers:
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("PuzzleLib: %(message)s"))
    logger.addHandler(_handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

_resolved = None


def _requested():
    value = os.environ.get("PUZZLELIB_BACKEND", Backend.auto).strip().lower()
    if value not in (Backend.cuda, Backend.cpu, Backend.auto):
        raise ConfigError("PUZZLELIB_BACKEND must be one of 'auto', 'cuda', 'cpu'; got %r" % value)
    return value


def _deviceIdx():
    value = os.environ.get("PUZZLELIB_DEVICE", "0")
    try:
        idx = int(value)
    except ValueError:
        raise ConfigError("PUZZLELIB_DEVICE must be a non-negative integer; got %r" % value) from None
    if idx < 0:
        raise ConfigError("PUZZLELIB_DEVICE must be a non-negative integer; got %r" % value)
    return idx


def cudaProblem():
    """Returns None when the CUDA backend can work here, else a sentence saying what is missing."""
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

    idx = _deviceIdx()
    if count == 0:
        return "no CUDA device is present"
    if idx >= count:
        return "PUZZLELIB_DEVICE=%d but only %d CUDA device(s) are present" % (idx, count)
    return None


def _resolve():
    requested = _requested()
    if requested == Backend.cpu:
        return Backend.cpu

    problem = cudaProblem()
    if requested == Backend.cuda:
        if problem is not None:
            raise ConfigError("PUZZLELIB_BACKEND=cuda cannot work: %s" % problem)
        return Backend.cuda

    if problem is None:
        logger.info("backend auto -> cuda (device %d answered)", _deviceIdx())
        return Backend.cuda

    logger.info("backend auto -> cpu, because %s", problem)
    return Backend.cpu


def setBackend(name):
    """Chooses the backend from code (same values as PUZZLELIB_BACKEND); only before any backend module is imported.

    Raises:
        ConfigError: for an unknown name, or when a backend is already in use.
    """
    global _resolved
    import sys

    if any(mod.startswith("PuzzleLib.Backend.Cpu") or mod.startswith("PuzzleLib.Backend.Cuda") for mod in sys.modules):
        raise ConfigError(
            "the backend is already in use (%s); choose it before importing PuzzleLib.Backend" % _resolved
        )

    os.environ["PUZZLELIB_BACKEND"] = name
    _resolved = None
    _requested()


def __getattr__(name):
    global _resolved
    if name == "backend":
        if _resolved is None:
            _resolved = _resolve()
        return _resolved
    if name == "deviceIdx":
        return _deviceIdx()
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
