"""Containers: modules made of modules (``Sequential``)."""

from PuzzleLib.Containers.Sequential import Sequential

__all__ = ["Sequential"]
