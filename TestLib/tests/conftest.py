"""The ``backend`` fixture: every test runs once per backend (`PuzzleLib.TestLib.Backends.names`), in one process.

A test is run on each backend unless it is marked ``backendIndependent`` (configuration, compilation, source checks,
the cross-checks that use both backends themselves). On each run the fixture skips with the reason where that backend
cannot work, makes it the backend of the arrays the test creates (`Config.useBackend`), and poisons its memory pool:
every block served is filled with 0xFF bytes (NaN in every float type) first, so code that reads memory it never wrote
produces NaN and fails its comparison with the reference. The fixture's value is the `Contract.Backend` (None for a
backend-independent test). Every test also starts from a seeded numpy generator.
"""

import numpy as np
import pytest

from PuzzleLib import Config
from PuzzleLib.Backend.Dispatch import backendNamed
from PuzzleLib.TestLib import Backends


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("backendIndependent") is None:
        metafunc.parametrize("backend", Backends.names, indirect=True)


@pytest.fixture(autouse=True)
def backend(request):
    name = getattr(request, "param", None)
    if name is None:
        yield None
        return

    Backends.skipUnless(name)
    chosen = backendNamed(name)
    chosen.gpuarray.memoryPool.poison = True
    with Config.useBackend(name):
        yield chosen


@pytest.fixture(autouse=True)
def seeded():
    np.random.seed(1234)
    yield
