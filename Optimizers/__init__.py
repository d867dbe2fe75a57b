"""Optimizers: update a network's parameters from their gradients (``SGD``, ``MomentumSGD``).

Names load on first access (`PuzzleLib.LazyPackage`), as in `PuzzleLib.Modules`.
"""

from PuzzleLib.LazyPackage import makeLazy

makeLazy(
    __name__,
    {
        "Optimizer": "Optimizer",
        "SGD": "SGD",
        "MomentumSGD": "MomentumSGD",
    },
)
