"""The one type of model inputs and outputs on serving's paths: named numpy arrays."""

from __future__ import annotations

import numpy as np

Tensors = dict[str, np.ndarray]

__all__ = ["Tensors"]
