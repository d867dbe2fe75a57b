"""The CUDA device and context the backend runs on.

Importing this module initialises the driver, takes device `PuzzleLib.Config.deviceIdx` and pushes its *primary*
context (the one the CUDA runtime, cuBLAS and PyTorch share), so memory and kernels of every library in the process
live in one context. At interpreter exit the memory pool gives its held blocks back, then the context is popped.

Raises (on import):
    PuzzleLib.Config.ConfigError: when no device answers (via `Config.cudaProblem`).
"""

import atexit

import pycuda.driver as cuda

from PuzzleLib import Config

problem = Config.cudaProblem()
if problem is not None:
    raise Config.ConfigError("the CUDA backend cannot work: %s" % problem)

cuda.init()
deviceIdx = Config.deviceIdx
device = cuda.Device(deviceIdx)
context = device.retain_primary_context()
context.push()

exitHooks = []


def onExit(hook):
    """Registers `hook()` to run at exit before the context is popped (last registered runs first)."""
    exitHooks.append(hook)
    return hook


def shutdown():
    global context
    if context is None:
        return

    while exitHooks:
        hook = exitHooks.pop()
        try:
            hook()
        except Exception:
            # NOTE: at exit the driver may already be tearing down (and cuBLAS raises its own errors then); nothing
            # useful remains to report, and the remaining hooks and the pop must still run
            pass

    try:
        context.pop()
        context.detach()
    except cuda.Error:
        pass
    context = None


atexit.register(shutdown)


def computeCapability():
    """Returns (major, minor) of the device, e.g. (9, 0) for an H100."""
    return device.compute_capability()


def arch():
    """Returns the nvcc architecture name of the device, e.g. ``"sm_90"``."""
    major, minor = computeCapability()
    return "sm_%d%d" % (major, minor)


def multiprocessorCount():
    return device.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)


def maxThreadsPerMultiprocessor():
    return device.get_attribute(cuda.device_attribute.MAX_THREADS_PER_MULTIPROCESSOR)


def deviceName():
    return device.name()


def synchronize():
    context.synchronize()
