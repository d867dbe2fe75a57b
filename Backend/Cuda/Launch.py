"""Launching the project's kernels: every CUDA primitive's one way to call a kernel, and the grid helpers they share.

A `KernelSource` compiles one source of `PuzzleLib.Kernels` on first use and prepares each entry point once, with the
format its declared `Signature` gives; `KernelSource.launch` packs the arguments from keywords named as the C
parameters, so the Python call and the C signature cannot drift apart unnoticed (the declarations themselves are
checked against the compiled PTX by ``TestLib/tests/test_kernel_signatures.py``). All kernels run on the default
stream of the primary context: a pool block freed after a launch is only reused by work queued after it.
"""

from PuzzleLib.Backend.Cuda import Driver
from PuzzleLib.Backend.Cuda.SourceModule import getModule
from PuzzleLib.Kernels import blocksPerMultiprocessor

MAX_GRID_X_1D = 65535
MAX_GRID_Y = 65535


def ceilDiv(a, b):
    return -(-a // b)


def grid1d(n, blockSize):
    """(grid, block) of a grid-stride kernel over `n` items: capping the grid bounds the launch, never the size."""
    return (max(1, min(ceilDiv(n, blockSize), MAX_GRID_X_1D)), 1, 1), (blockSize, 1, 1)


def residentBlocks(function, blockSize):
    """Blocks of `blockSize` threads of the compiled `function` resident at once on the whole device: what one wave of
    a grid holds, at the occupancy its registers and shared memory allow (not a guess per block size)."""
    registers, shared = Driver.functionResources(function)
    return Driver.multiprocessorCount() * blocksPerMultiprocessor(
        registers, shared, blockSize, Driver.multiprocessorLimits()
    )


class KernelSource:
    """The entry points of one source, compiled and prepared on first use.

    Args:
        declaration (module): the source's declaration in `PuzzleLib.Kernels` (``SOURCE``, ``defines`` and the
            `Signature` objects).
    """

    def __init__(self, declaration):
        self.declaration = declaration
        self.functions = {}

    def function(self, name, signature):
        func = self.functions.get(name)
        if func is None:
            module = getModule(self.declaration.SOURCE, self.declaration.defines)
            func = module.get_function(name)
            func.prepare(signature.format)
            self.functions[name] = func
        return func

    def prepared(self, signature, grid, block, instance, dynamic, **static):
        """A `PreparedLaunch` of ``signature.name(**instance)`` on (grid, block): its static arguments packed once
        (`Signature.bind`), `dynamic` (names in order) left to each launch. `grid` may be a function of the resident
        blocks of the entry point (`residentBlocks`), which then gives the grid."""
        name = signature.name(**(instance or {}))
        function = self.function(name, signature)
        if callable(grid):
            grid = grid(residentBlocks(function, block[0] * block[1] * block[2]))
        return PreparedLaunch(function, grid, block, signature.bind(dynamic, **static))

    def launch(self, signature, grid, block, instance=None, **arguments):
        """Queues the entry point ``signature.name(**instance)`` on (grid, block) with the arguments given by name.

        Raises:
            TypeError: an argument of the signature is missing or an unknown one is given.
        """
        name = signature.name(**(instance or {}))
        self.function(name, signature).prepared_call(grid, block, *signature.pack(**arguments))


class PreparedLaunch:
    """One kernel of a plan, prepared once: the compiled function, its grid and block, and its argument list with the
    static values in place (a `Kernels.Signature.Binding`). Calling it with the dynamic values (addresses as ints,
    in the order it was prepared with) queues the launch."""

    __slots__ = ("function", "grid", "block", "binding", "arguments")

    def __init__(self, function, grid, block, binding):
        self.function, self.grid, self.block, self.binding = function, grid, block, binding
        self.arguments = binding.arguments

    def __call__(self, *values):
        self.function.prepared_call(self.grid, self.block, *self.arguments(*values))
