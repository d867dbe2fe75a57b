"""Containers: modules made of modules (``Sequential``).

Names load on first access (`PuzzleLib.LazyPackage`), as in `PuzzleLib.Modules`.
"""

from PuzzleLib.LazyPackage import makeLazy

makeLazy(
    __name__,
    {
        "Sequential": "Sequential",
    },
)
