"""The backends the test suite runs on, and the one place that decides whether a case can run here.

The pytest suite runs every test that uses arrays once per backend in `names` (the ``backend`` fixture of
``TestLib/tests/conftest.py``); a CUDA case skips with the reason where the CUDA backend cannot work.
"""

import numpy as np

from PuzzleLib import Config

names = ("cpu", "cuda")


def problem(name):
    """None when the backend `name` can run here, else a sentence saying why not."""
    if name == "cuda":
        reason = Config.cudaProblem()
        return None if reason is None else "CUDA backend unavailable: %s" % reason
    return None


def available():
    """The names of the backends that can run here."""
    return [name for name in names if problem(name) is None]


def skipUnless(name, dtype=None, dataTypes=None):
    """Skips the calling test (with the reason) unless backend `name` can run here and, when given, `dtype` is one of
    `dataTypes` (the dtypes that backend computes the operation under test in)."""
    import pytest

    reason = problem(name)
    if reason is not None:
        pytest.skip(reason)
    if dtype is not None and np.dtype(dtype) not in dataTypes:
        pytest.skip(
            "%s data: the %s backend computes this in %s only"
            % (np.dtype(dtype), name, ", ".join(str(t) for t in dataTypes))
        )
