"""Cost: losses that hand back the error and the negated gradient (PuzzleLib's sign convention)."""

from PuzzleLib.Cost.CrossEntropy import CrossEntropy

__all__ = ["CrossEntropy"]
