"""Shared pytest fixtures: seeded numpy state for every test."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def seeded():
    np.random.seed(1234)
    yield
