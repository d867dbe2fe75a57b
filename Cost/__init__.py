"""Cost: losses that hand back the error and the negated gradient (PuzzleLib's sign convention).

Names load on first access (`PuzzleLib.LazyPackage`), as in `PuzzleLib.Modules`.
"""

from PuzzleLib.LazyPackage import makeLazy

makeLazy(
    __name__,
    {
        "CrossEntropy": "CrossEntropy",
    },
)
