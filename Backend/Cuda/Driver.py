"""The CUDA device and context the backend runs on.

Nothing is touched at import. The first call of `context()` (made by the first allocation) initialises the driver, takes
device `PuzzleLib.Config.deviceIdx` and pushes its *primary* context (the one the CUDA runtime, cuBLAS and PyTorch
share), so memory and kernels of every library in the process live in one context. At interpreter exit the hooks
registered with `onExit` run (the memory pool gives its held blocks back, cuBLAS drops its handle), then the context is
popped.
"""

import atexit
import threading

import pycuda.driver as cuda

from PuzzleLib import Config

# NOTE: reentrant, so that a thread whose interrupt left it held (a `with` block cut short at its exit) can still
# take it
lock = threading.RLock()
device, primary = None, None
exitHooks = []


def context():
    """The primary context of device `Config.deviceIdx`, retained and pushed on the first call.

    Raises:
        PuzzleLib.Config.ConfigError: no device answers (the message says what is missing).
    """
    global device, primary
    # NOTE: no lock once the context exists: the lock is taken only by the first calls (an interrupt can cut a `with`
    # statement short between its block and its exit, and a lock left held there would hang every later call)
    if primary is not None:
        return primary
    with lock:
        if primary is None:
            problem = Config.cudaProblem()
            if problem is not None:
                raise Config.ConfigError("the CUDA backend cannot work: %s" % problem)
            cuda.init()
            device = cuda.Device(Config.deviceIdx)
            primary = device.retain_primary_context()
            primary.push()
            atexit.register(shutdown)
        return primary


def onExit(hook):
    """Registers `hook()` to run at exit before the context is popped (last registered runs first)."""
    exitHooks.append(hook)
    return hook


def shutdown():
    global primary
    if primary is None:
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
        primary.pop()
        primary.detach()
    except cuda.Error:
        pass
    primary = None


def currentDevice():
    """The `pycuda.driver.Device` in use (taking it on the first call)."""
    context()
    return device


def computeCapability():
    """Returns (major, minor) of the device, e.g. (9, 0) for an H100."""
    return currentDevice().compute_capability()


def arch():
    """Returns the nvcc architecture name of the device, e.g. ``"sm_90"``."""
    major, minor = computeCapability()
    return "sm_%d%d" % (major, minor)


def multiprocessorCount():
    return currentDevice().get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)


def multiprocessorLimits():
    """(threads, 32-bit registers, bytes of shared memory) one multiprocessor of the device holds at once."""
    device, attribute = currentDevice(), cuda.device_attribute
    return (
        device.get_attribute(attribute.MAX_THREADS_PER_MULTIPROCESSOR),
        device.get_attribute(attribute.MAX_REGISTERS_PER_MULTIPROCESSOR),
        device.get_attribute(attribute.MAX_SHARED_MEMORY_PER_MULTIPROCESSOR),
    )


def functionResources(function):
    """(registers per thread, bytes of static shared memory per block) of a compiled `pycuda.driver.Function`, as
    ptxas allotted them."""
    attribute = cuda.function_attribute
    return function.get_attribute(attribute.NUM_REGS), function.get_attribute(attribute.SHARED_SIZE_BYTES)


def deviceName():
    return currentDevice().name()


def synchronize():
    context().synchronize()
