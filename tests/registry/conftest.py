"""Fixtures for registry tests: small fitted models and their data."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture
def xy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return x, y


@pytest.fixture
def random_inputs() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(37, 4))
