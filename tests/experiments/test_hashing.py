"""The shared assignment primitives: determinism, uniformity, stickiness under weight changes."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from flywheel.experiments import (
    InvalidExperiment,
    hash_bucket,
    hash_unit_interval,
    weighted_choice,
)

UNITS = [f"user-{i}" for i in range(100_000)]


def test_hash_bucket_is_pinned_across_versions() -> None:
    # These values must never change: changing them would reshuffle every running experiment.
    assert hash_bucket("exp", "user-1") == hash_bucket("exp", "user-1")
    assert [hash_bucket("checkout", f"u{i}") for i in range(5)] == PINNED


PINNED = [6859, 8566, 4679, 9204, 5800]


def test_hash_bucket_range_and_salt_independence() -> None:
    a = [hash_bucket("salt-a", u, 100) for u in UNITS[:20_000]]
    b = [hash_bucket("salt-b", u, 100) for u in UNITS[:20_000]]
    assert min(a) == 0 and max(a) == 99
    # Independent salts: the 2x2 table of (a < 50, b < 50) is independent (chi-square).
    table = Counter((x < 50, y < 50) for x, y in zip(a, b, strict=True))
    observed = [
        [table[(True, True)], table[(True, False)]],
        [table[(False, True)], table[(False, False)]],
    ]
    assert stats.chi2_contingency(observed).pvalue > 0.001


def test_hash_bucket_is_uniform_chi_square_100k() -> None:
    counts = Counter(hash_bucket("uniformity", u, 100) for u in UNITS)
    observed = [counts[b] for b in range(100)]
    assert stats.chisquare(observed).pvalue > 0.001


def test_unit_interval_is_open_and_uniform() -> None:
    values = [hash_unit_interval("s", u) for u in UNITS[:20_000]]
    assert all(0.0 < v < 1.0 for v in values)
    assert stats.kstest(values, "uniform").pvalue > 0.001


def test_weighted_choice_proportions_chi_square() -> None:
    weights = [("a", 0.5), ("b", 0.3), ("c", 0.2)]
    counts = Counter(weighted_choice("split", u, weights) for u in UNITS)
    observed = [counts["a"], counts["b"], counts["c"]]
    expected = [len(UNITS) * w for _, w in weights]
    assert stats.chisquare(observed, expected).pvalue > 0.001


def test_weighted_choice_ignores_order_and_scale() -> None:
    w1 = [("stable", 90.0), ("canary", 10.0)]
    w2 = [("canary", 0.1), ("stable", 0.9)]
    for u in UNITS[:2_000]:
        assert weighted_choice("ep", u, w1) == weighted_choice("ep", u, w2)


def test_growing_one_option_moves_exactly_its_gain_and_only_into_it() -> None:
    before = [("stable", 90.0), ("canary", 10.0)]
    after = [("stable", 50.0), ("canary", 50.0)]
    moved = 0
    for u in UNITS[:50_000]:
        a, b = weighted_choice("ep", u, before), weighted_choice("ep", u, after)
        if a != b:
            assert (a, b) == ("stable", "canary")
            moved += 1
    assert abs(moved / 50_000 - 0.40) < 0.01


def test_adding_an_option_only_takes_units_into_it() -> None:
    before = [("a", 1.0), ("b", 1.0)]
    after = [("a", 1.0), ("b", 1.0), ("c", 1.0)]
    moved = 0
    for u in UNITS[:30_000]:
        x, y = weighted_choice("s", u, before), weighted_choice("s", u, after)
        if x != y:
            assert y == "c"
            moved += 1
    assert abs(moved / 30_000 - 1 / 3) < 0.015


@settings(max_examples=60, deadline=None)
@given(
    weights=st.lists(st.floats(0.0, 100.0), min_size=2, max_size=5),
    index=st.integers(0, 4),
    new_weight=st.floats(0.0, 100.0),
)
def test_single_weight_change_moves_units_only_to_or_from_that_option(
    weights: list[float], index: int, new_weight: float
) -> None:
    index %= len(weights)
    named = [(f"v{i}", w) for i, w in enumerate(weights)]
    changed = list(named)
    changed[index] = (f"v{index}", new_weight)
    if sum(w for _, w in named) == 0 or sum(w for _, w in changed) == 0:
        return
    for u in UNITS[:300]:
        a, b = weighted_choice("p", u, named), weighted_choice("p", u, changed)
        if a != b:
            assert f"v{index}" in (a, b)
            assert (b == f"v{index}") == (new_weight > weights[index])


@pytest.mark.parametrize(
    "weights",
    [[], [("a", 0.0)], [("a", -1.0), ("b", 1.0)], [("a", math.nan)], [("a", math.inf)]],
)
def test_weighted_choice_rejects_bad_weights(weights: list[tuple[str, float]]) -> None:
    with pytest.raises(InvalidExperiment, match="weight"):
        weighted_choice("s", "u", weights)


def test_hash_bucket_rejects_zero_buckets() -> None:
    with pytest.raises(InvalidExperiment, match="buckets"):
        hash_bucket("s", "u", 0)
