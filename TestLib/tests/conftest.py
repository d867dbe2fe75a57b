"""Shared pytest fixtures: seeded numpy state for every test, and a poisoned memory pool.

Every block the pool serves during the tests is filled with 0xFF bytes (NaN in every float type) first, so code that
reads memory it never wrote produces NaN and fails its comparison with the reference.
"""

import numpy as np
import pytest

from PuzzleLib.Backend import gpuarray

gpuarray.memoryPool.poison = True


@pytest.fixture(autouse=True)
def seeded():
    np.random.seed(1234)
    yield
