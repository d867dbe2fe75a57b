"""How deep a module call goes before its kernel: the Python frames from ``bn(x)`` (or ``bn.backward(dy)``) to the
frame that calls a C kernel of the CPU backend, counted by wrapping the kernels of `Backend.Cpu.CBatchNorm`.

Used by ``TestLib/tests/test_call_path.py`` (which fails when a chain grows past its bound) and by
`Benchmarks.CallPathBenchmark` (which prints the chains).
"""

import contextlib
import sys

from PuzzleLib.Backend import BatchNormPlan
from PuzzleLib.Backend.Cpu import CBatchNorm

MARKER = "callPathMarker"


@contextlib.contextmanager
def recordedKernels():
    """Wraps every loaded C kernel so that each call records the chain of frames above it (`chains`, a list the block
    receives: one list of "file:function" names per kernel call, outermost first, the caller's own frames left out);
    plans are made anew inside the block and after it (they hold the kernels they were made with)."""
    chains, saved = [], {char: dict(functions) for char, functions in CBatchNorm.kernels.items()}

    def wrap(function):
        def kernel(arguments):
            names, frame = [], sys._getframe(1)
            while frame is not None and frame.f_code.co_name != MARKER:
                names.append("%s:%s" % (frame.f_code.co_filename.rsplit("/", 1)[-1], frame.f_code.co_qualname))
                frame = frame.f_back
            chains.append(list(reversed(names)))
            return function(arguments)

        return kernel

    for functions in CBatchNorm.kernels.values():
        for name, (function, pack) in functions.items():
            functions[name] = (wrap(function), pack)
    BatchNormPlan.cachedPlan.cache_clear()
    try:
        yield chains
    finally:
        for char, functions in saved.items():
            CBatchNorm.kernels[char] = functions
        BatchNormPlan.cachedPlan.cache_clear()


def chainOf(call, chains):
    """The frames of the first kernel call `call()` makes (a list of names; its length is the depth), None when it
    calls no kernel; `chains` is the list of `recordedKernels`."""
    del chains[:]

    def callPathMarker():
        call()

    callPathMarker()
    return chains[0][1:] if chains else None
