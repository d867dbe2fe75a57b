"""PuzzleLib: batch normalization modules for the GPU, with a numpy CPU backend.

Importing the package is cheap: no device is touched and nothing compiles until a backend module
(`PuzzleLib.Backend.gpuarray` and friends) is first imported. The backend is chosen by `PuzzleLib.Config`.
"""

__version__ = "0.1.0"
