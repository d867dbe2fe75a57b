"""Which backend runs: the backend of the arrays a call is given, or, for new arrays, the one `PuzzleLib.Config` picks.

Every `GPUArray` carries its backend (``array.backend``, a `PuzzleLib.Backend.Contract.Backend`), so the front modules
dispatch on their arguments, as Chainer's ``get_array_module`` does; only the constructors of `Backend.gpuarray` ask
`currentBackend`. This file is the one place that imports a backend package, and it does so on first use: importing
any module of the library touches no device.
"""

from PuzzleLib import Config


def backendNamed(name):
    """The `Backend` called `name` (``"cpu"`` or ``"cuda"``), importing its package on first use.

    Raises:
        ValueError: for another name.
        ImportError: for ``"cuda"`` where pycuda is not installed.
    """
    if name == "cuda":
        from PuzzleLib.Backend.Cuda import backend
    elif name == "cpu":
        from PuzzleLib.Backend.Cpu import backend
    else:
        raise ValueError("backend name must be 'cpu' or 'cuda'; got %r" % (name,))
    return backend


def currentBackend():
    """The `Backend` new arrays are created on (`PuzzleLib.Config.currentBackend`, which resolves ``"auto"``).

    Raises:
        PuzzleLib.Config.ConfigError: the CUDA backend was asked for and cannot work here.
    """
    return backendNamed(Config.currentBackend())
