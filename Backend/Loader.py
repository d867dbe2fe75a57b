"""Picks the implementation of a Backend module for the backend chosen by `PuzzleLib.Config`."""

import importlib

from PuzzleLib import Config


def backendModule(name):
    """Imports `PuzzleLib.Backend.Cuda.<name>` or `PuzzleLib.Backend.Cpu.<name>`, whichever backend is in use."""
    package = "Cuda" if Config.backend == Config.Backend.cuda else "Cpu"
    return importlib.import_module("PuzzleLib.Backend.%s.%s" % (package, name))
