"""Modules: layers called on GPUArrays (``y = module(x)``; ``module.backward(grad)``), one class per file."""

from PuzzleLib.Modules.Activation import Activation
from PuzzleLib.Modules.BatchNorm import BatchNorm
from PuzzleLib.Modules.BatchNorm1D import BatchNorm1D
from PuzzleLib.Modules.BatchNorm2D import BatchNorm2D
from PuzzleLib.Modules.BatchNorm3D import BatchNorm3D
from PuzzleLib.Modules.BatchNormND import BatchNormND
from PuzzleLib.Modules.Linear import Linear
from PuzzleLib.Modules.Module import Module, ModuleError
from PuzzleLib.Modules.SyncBatchNorm import SyncBatchNorm
from PuzzleLib.Modules.SyncBatchNorm1D import SyncBatchNorm1D
from PuzzleLib.Modules.SyncBatchNorm2D import SyncBatchNorm2D
from PuzzleLib.Modules.SyncBatchNorm3D import SyncBatchNorm3D
from PuzzleLib.Modules.SyncBatchNormND import SyncBatchNormND
from PuzzleLib.Modules.Variable import Variable

__all__ = [
    "Module", "ModuleError", "Variable", "BatchNormND", "BatchNorm", "BatchNorm1D", "BatchNorm2D", "BatchNorm3D",
    "SyncBatchNormND", "SyncBatchNorm", "SyncBatchNorm1D", "SyncBatchNorm2D", "SyncBatchNorm3D", "Linear", "Activation",
]
