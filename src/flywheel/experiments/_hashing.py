"""Deterministic, salted unit hashing: the one assignment primitive every system shares.

``hash_bucket(salt, unit)`` maps a unit to one of ``buckets`` buckets with a keyed-free 64-bit
BLAKE2b digest of ``salt + "\\x1f" + unit``: stable across processes, machines and Python
versions (unlike ``hash()``), uniform (a chi-square test over 100,000 units is in the tests), and
independent between salts, so two experiments with different salts split users independently.

``weighted_choice(salt, unit, weights)`` is weighted rendezvous hashing (highest random weight):
every option ``i`` gets an exponential "arrival time" ``-ln(u_i) / w_i`` from the unit's own
uniform ``u_i = hash(salt, unit, option_i)`` and the earliest arrival wins, so option ``i`` is
chosen with probability ``w_i / sum(w)``. Because each option's draw depends only on the unit and
that option's name, a change to one option's weight moves units only into that option (when it
grows) or only out of it (when it shrinks), exactly the share it gained or lost; adding an option
only takes units into it; removing one only moves its own units; the order of the options does
not matter. That is the fewest units a stateless rule can move. (Experiments stored in the
metadata store go further and move the provable minimum for any change of several weights at
once, see ``flywheel.experiments._allocation``.)

Both are pure functions with no I/O and take about a microsecond per option.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from hashlib import blake2b

from flywheel.experiments._errors import InvalidExperiment

HASH_SEPARATOR = "\x1f"
_SEPARATOR = HASH_SEPARATOR
_TWO_POW_MINUS_53 = 2.0**-53


def hash64(salt: str, unit: str) -> int:
    """The unsigned 64-bit hash of ``unit`` under ``salt`` (BLAKE2b, 8-byte digest)."""
    digest = blake2b((salt + _SEPARATOR + unit).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def hash_bucket(salt: str, unit: str, buckets: int = 10_000) -> int:
    """The bucket in ``[0, buckets)`` of ``unit`` under ``salt``: deterministic and uniform.

    Args:
        salt: separates independent splits (an experiment's or a layer's salt).
        unit: the unit's id (user id, session id, ...).
        buckets: how many buckets (>= 1). The modulo bias of a 64-bit hash is below 1e-15.
    """
    if buckets < 1:
        raise InvalidExperiment("buckets", f"must be >= 1, got {buckets}")
    return hash64(salt, unit) % buckets


def hash_unit_interval(salt: str, unit: str) -> float:
    """A deterministic uniform float in the open interval (0, 1) for ``unit`` under ``salt``."""
    return ((hash64(salt, unit) >> 11) + 0.5) * _TWO_POW_MINUS_53


def weighted_choice(salt: str, unit: str, weights: Sequence[tuple[str, float]]) -> str:
    """Pick one option for ``unit``, sticky across calls and stable when weights change.

    Args:
        salt: the split's salt (e.g. the endpoint or experiment name).
        unit: the unit's id.
        weights: ``(option, weight)`` pairs; weights are non-negative and need not sum to 1
            (``[("stable", 90), ("canary", 10)]`` is fine). Options with weight 0 get nobody.

    Returns:
        The chosen option; option ``i`` is chosen with probability ``w_i / sum(w)``.

    Raises:
        InvalidExperiment: no options, a negative or non-finite weight, or all weights zero.
    """
    best_name: str | None = None
    best_score = math.inf
    prefix = salt + _SEPARATOR + unit + _SEPARATOR
    for name, weight in weights:
        if weight > 0.0 and weight != math.inf:
            digest = blake2b((prefix + name).encode(), digest_size=8).digest()
            u = ((int.from_bytes(digest, "big") >> 11) + 0.5) * _TWO_POW_MINUS_53
            score = -math.log(u) / weight  # inf only for subnormal weights
            if score < best_score or best_name is None:
                best_score = score
                best_name = name
        elif weight != 0.0:  # negative, NaN or infinite
            raise InvalidExperiment("weights", f"weight of {name!r} must be finite and >= 0")
    if best_name is None:
        raise InvalidExperiment("weights", "need at least one option with a positive weight")
    return best_name


__all__ = ["HASH_SEPARATOR", "hash64", "hash_bucket", "hash_unit_interval", "weighted_choice"]
