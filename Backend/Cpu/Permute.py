"""Axis permutation of the CPU backend (`PermutePrimitives` of the contract), over numpy. Twin of
`Backend.Cuda.Permute`; `Backend.Permute` checks the arguments and allocates the output.
"""

import numpy as np

from PuzzleLib.Backend.Cpu.GPUArray import hostView

# NOTE: numpy moves elements of any size
itemSizes = None


def permute(src, perm, out):
    np.copyto(hostView(out), np.transpose(hostView(src), perm))
