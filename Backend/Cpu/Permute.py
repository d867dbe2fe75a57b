"""Axis permutation of the CPU backend, over numpy. Twin of `Backend.Cuda.Permute`; `Backend.Permute` checks the
arguments and allocates the output.
"""

import numpy as np

from PuzzleLib.Backend.Cpu.GPUArray import hostView


def permute(src, perm, out):
    """out = numpy.transpose(src, perm), for a valid permutation and an `out` of the permuted shape and src's dtype."""
    np.copyto(hostView(out), np.transpose(hostView(src), perm))
