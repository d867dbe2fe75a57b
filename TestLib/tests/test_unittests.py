"""Every module's own unittest(), on every backend available here (each in a fresh process)."""

import os
import subprocess
import sys

import pytest

from PuzzleLib import Config

BACKENDS = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(
            Config.cudaProblem() is not None, reason="CUDA unavailable: %s" % Config.cudaProblem()
        ),
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_module_unittests(backend):
    env = dict(os.environ, PUZZLELIB_BACKEND=backend)
    result = subprocess.run(
        [sys.executable, "-m", "PuzzleLib.TestLib.RunUnittests"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    passed = int(summary.split()[0])
    assert summary.endswith("passed, 0 failed") and passed >= 5, result.stdout
