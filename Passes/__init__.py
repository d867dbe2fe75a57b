"""Passes: functions that build or rewrite networks of modules (batch-normalizing a layer, folding batch norm for
inference)."""

from PuzzleLib.Passes.BatchNormFolding import foldBatchNorm
from PuzzleLib.Passes.BatchNormInsertion import batchNorm

__all__ = ["batchNorm", "foldBatchNorm"]
