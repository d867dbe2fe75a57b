"""Optimizers: update a network's parameters from their gradients (``SGD``, ``MomentumSGD``)."""

from PuzzleLib.Optimizers.MomentumSGD import MomentumSGD
from PuzzleLib.Optimizers.Optimizer import Optimizer
from PuzzleLib.Optimizers.SGD import SGD

__all__ = ["Optimizer", "SGD", "MomentumSGD"]
