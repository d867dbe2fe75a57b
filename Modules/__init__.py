"""Modules: layers called on GPUArrays (``y = module(x)``; ``module.backward(grad)``).

Names load on first access (`PuzzleLib.LazyPackage`), so ``python -m PuzzleLib.Modules.BatchNorm`` runs that file's
self-test without importing it twice.
"""

from PuzzleLib.LazyPackage import makeLazy

makeLazy(
    __name__,
    {
        "Module": "Module",
        "ModuleError": "Module",
        "Variable": "Variable",
        "BatchNorm": "BatchNorm",
        "BatchNormND": "BatchNormND",
        "BatchNorm1D": "BatchNorm1D",
        "BatchNorm2D": "BatchNorm2D",
        "BatchNorm3D": "BatchNorm3D",
        "Linear": "Linear",
        "Activation": "Activation",
    },
)
