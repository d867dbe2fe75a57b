"""Every module file's own unittest() (SPEC section 5), on every backend, in this process (`RunUnittests` runs them
from the command line)."""

import importlib

import pytest

from PuzzleLib.TestLib.RunUnittests import moduleNames

NAMES = moduleNames()


@pytest.mark.backendIndependent
def test_every_package_contributes_its_self_tests():
    expected = {"Modules.BatchNorm", "Modules.BatchNormND", "Modules.BatchNorm2D", "Modules.Linear",
                "Containers.Sequential", "Passes.BatchNormInsertion", "Passes.BatchNormFolding", "Cost.CrossEntropy",
                "Optimizers.MomentumSGD"}
    assert {"PuzzleLib." + name for name in expected} <= set(NAMES), NAMES


@pytest.mark.parametrize("name", NAMES)
def test_module_unittest(name):
    importlib.import_module(name).unittest()
