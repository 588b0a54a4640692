"""Experiments: A/B tests with deterministic assignment and layers, bandits, analysis, OPE.

Public API (see the README section "Experiments")::

    hash_bucket(salt, unit, buckets=10_000) -> int        # pure, deterministic, uniform
    weighted_choice(salt, unit, [(option, weight), ...]) -> str   # sticky weighted split
"""

from flywheel.experiments._errors import (
    AnalysisError,
    ExperimentError,
    ExperimentExists,
    ExperimentNotFound,
    ExperimentStateError,
    InvalidExperiment,
)
from flywheel.experiments._hashing import hash64, hash_bucket, hash_unit_interval, weighted_choice

__all__ = [
    "AnalysisError",
    "ExperimentError",
    "ExperimentExists",
    "ExperimentNotFound",
    "ExperimentStateError",
    "InvalidExperiment",
    "hash64",
    "hash_bucket",
    "hash_unit_interval",
    "weighted_choice",
]
