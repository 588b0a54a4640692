"""Definitions (YAML and Python), targeting filters and bucket allocation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.experiments import ExperimentSpec, InvalidExperiment, Metric, MetricKind, Variant
from flywheel.experiments._allocation import (
    BUCKETS,
    from_ranges,
    moved_buckets,
    reallocate,
    resize_layer_share,
    target_counts,
)
from flywheel.experiments._targeting import compile_targeting

YAML = """
name: checkout-button
unit: user_id
layer: checkout
traffic: 0.4
variants:
  - {name: control, weight: 1}
  - {name: green, weight: 3}
targeting: {country: {in: [US]}}
metrics:
  - {name: conversion, kind: proportion, event: purchase}
guardrails:
  - {name: latency, kind: mean, event: latency_ms, direction: decrease, tolerance: 0.05}
start: 2026-11-26T10:00:00
"""


def test_yaml_and_python_definitions_are_the_same(tmp_path: Path) -> None:
    path = tmp_path / "exp.yaml"
    path.write_text(YAML)
    from_yaml = ExperimentSpec.from_yaml(path)
    python = ExperimentSpec(
        name="checkout-button",
        variants=(Variant("control", 1), Variant("green", 3)),
        layer="checkout",
        traffic=0.4,
        targeting={"country": {"in": ["US"]}},
        metrics=(Metric("conversion", MetricKind.proportion, "purchase"),),
        guardrails=(
            Metric("latency", MetricKind.mean, "latency_ms", direction="decrease", tolerance=0.05),
        ),
        start=from_yaml.start,
    )
    assert from_yaml == python
    assert ExperimentSpec.from_dict(from_yaml.to_dict()) == from_yaml
    assert from_yaml.start is not None and from_yaml.start.tzinfo is not None
    assert from_yaml.control_arm == "control" and from_yaml.layer_name == "checkout"


def test_yaml_errors_name_the_file_or_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(InvalidExperiment, match="not valid YAML"):
        ExperimentSpec.from_yaml(bad)
    with pytest.raises(InvalidExperiment, match="cannot read"):
        ExperimentSpec.from_yaml(tmp_path / "missing.yaml")
    with pytest.raises(InvalidExperiment, match=r"experiment 'x': variants\[1\]\.weight"):
        ExperimentSpec.from_dict({"name": "x", "variants": ["a", {"name": "b", "weight": -1}]})
    with pytest.raises(InvalidExperiment, match="either variants or bandit"):
        ExperimentSpec.from_dict(
            {"name": "x", "variants": ["a", "b"], "bandit": {"arms": ["a", "b"]}}
        )
    with pytest.raises(InvalidExperiment, match="upstream"):
        ExperimentSpec.from_dict({"name": "x", "variants": ["a", "b"], "upstream": ["planet:x"]})


CONTEXTS = [
    {"country": "US", "age": 30, "plan": "pro", "email": "a@shop.com"},
    {"country": "FR", "age": 17},
    {"country": "CA"},
    {},
    {"age": "thirty", "country": ["US"]},
]


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"country": "US"}, [True, False, False, False, False]),
        ({"country": {"in": ["US", "CA"]}}, [True, False, True, False, False]),
        ({"country": {"nin": ["US"]}}, [False, True, True, True, True]),
        ({"age": {"gte": 18}}, [True, False, False, False, False]),
        ({"age": {"lt": 18}}, [False, True, False, False, False]),
        ({"plan": {"exists": False}}, [False, True, True, True, True]),
        ({"email": {"regex": "@shop\\.com$"}}, [True, False, False, False, False]),
        ({"any": [{"country": "FR"}, {"age": {"gte": 21}}]}, [True, True, False, False, False]),
        ({"not": {"country": "US"}}, [False, True, True, True, True]),
        ({"country": {"ne": "US"}, "age": {"exists": True}}, [False, True, False, False, True]),
    ],
)
def test_targeting_operators(spec: dict[str, object], expected: list[bool]) -> None:
    predicate = compile_targeting(spec)
    assert [predicate(c) for c in CONTEXTS] == expected


@pytest.mark.parametrize(
    "spec",
    [{"a": {"in": 3}}, {"a": {"gt": [1]}}, {"a": {"regex": "("}}, {"any": []}, {"a": {"like": 1}}],
)
def test_bad_targeting_is_rejected(spec: dict[str, object]) -> None:
    with pytest.raises(InvalidExperiment, match="targeting"):
        compile_targeting(spec)


def test_target_counts_sum_to_all_buckets() -> None:
    assert target_counts([1, 1, 1]) == [3334, 3333, 3333]
    assert sum(target_counts([0.1, 0.7, 0.2])) == BUCKETS


@settings(max_examples=40, deadline=None)
@given(
    before=st.lists(st.integers(0, 20), min_size=2, max_size=5).filter(lambda w: sum(w) > 0),
    after=st.lists(st.integers(0, 20), min_size=2, max_size=5).filter(lambda w: sum(w) > 0),
)
def test_reallocation_moves_exactly_the_minimum(before: list[int], after: list[int]) -> None:
    names = [f"v{i}" for i in range(max(len(before), len(after)))]
    old = reallocate(None, list(zip(names, before, strict=False)))
    new = reallocate(old, list(zip(names, after, strict=False)))
    old_counts = {n: len(from_ranges(r)) for n, r in old.items()}
    new_counts = {n: len(from_ranges(r)) for n, r in new.items()}
    assert sum(new_counts.values()) == BUCKETS
    minimum = sum(max(0, new_counts.get(n, 0) - old_counts.get(n, 0)) for n in names)
    assert moved_buckets(old, new) == minimum


def test_layer_share_grows_and_shrinks_in_place() -> None:
    layer = {"other": [[0, 3000]]}
    mine = resize_layer_share(layer, "me", 0.2, "L")
    assert len(from_ranges(mine)) == 2000 and not set(from_ranges(mine)) & set(range(3000))
    layer["me"] = mine
    grown = resize_layer_share(layer, "me", 0.5, "L")
    assert set(from_ranges(mine)) <= set(from_ranges(grown))
    layer["me"] = grown
    shrunk = resize_layer_share(layer, "me", 0.1, "L")
    assert set(from_ranges(shrunk)) <= set(from_ranges(grown)) and len(from_ranges(shrunk)) == 1000
