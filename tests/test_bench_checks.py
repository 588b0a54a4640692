"""The answer checks of the feature-store benchmark (#17 item 14): a wrong PIT answer and a
materialization whose rows are not all in Redis are errors, never a "-" in the table."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import features_vs_feast as bench  # noqa: E402


@pytest.fixture
def reference(tmp_path: Path) -> pd.DataFrame:
    ref = pd.DataFrame({"a": [0.5, np.nan, 1.5], "b": [1.0, np.nan, 3.0], "c": [0.1, np.nan, 0.3]})
    (tmp_path / "data").mkdir()
    ref.to_parquet(tmp_path / "data" / "pit_reference.parquet", index=False)
    return ref


def test_pit_answer_equal_to_the_reference_passes(tmp_path: Path, reference: pd.DataFrame) -> None:
    out = bench.compare_to_reference(tmp_path, reference.copy())
    assert "error" not in out and out["mismatches"] == 0 and out["rows"] == 3


def test_pit_answer_with_another_row_count_is_an_error(
    tmp_path: Path, reference: pd.DataFrame
) -> None:
    out = bench.compare_to_reference(tmp_path, reference.head(2))
    assert out["error"].startswith("wrong answer: 2 rows returned, the reference has 3")


def test_pit_answer_with_a_different_value_is_an_error(
    tmp_path: Path, reference: pd.DataFrame
) -> None:
    got = reference.copy()
    got.loc[1, "a"] = 7.0  # a value where the reference has none (TTL expired)
    out = bench.compare_to_reference(tmp_path, got)
    assert out["mismatches"] == 1 and "1 values differ" in out["error"]


def test_materialized_rows_are_counted_in_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    counted: list[str] = []

    def rows_in_redis(system: str) -> int:
        counted.append(system)
        return 900

    monkeypatch.setattr(bench, "redis_rows", rows_in_redis)
    short: dict[str, Any] = {"seconds": 2.0}
    bench.check_materialized(short, "feast", 1000)
    assert counted == ["feast"] and short["rows"] == 900 and short["rows_per_s"] == 450.0
    assert "Redis holds 900 rows" in short["error"]
    full: dict[str, Any] = {"seconds": 3.0}
    bench.check_materialized(full, "flywheel", 900)
    assert "error" not in full and full["rows_per_s"] == 300.0


@pytest.mark.integration
def test_rows_are_read_back_from_the_real_redis(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feast's rows: hashes whose key ends with the project and that hold ``_ts:stats`` (another
    view's hash is not counted); Flywheel's: the view's keys under the benchmark prefix."""
    import redis

    project = redis_prefix.replace(":", "")  # unique per test, so the pattern sees only ours
    monkeypatch.setattr(bench, "REDIS_URL", redis_url)
    monkeypatch.setattr(bench, "FEAST_PROJECT", project)
    monkeypatch.setattr(bench, "FW_MAT_KEYS", f"{redis_prefix}stats__*")
    client = redis.Redis.from_url(redis_url)
    keys = [f"{redis_prefix}feast-{i}-".encode() + project.encode() for i in range(7)]
    try:
        for key in keys[:5]:
            client.hset(key, mapping={b"_ts:stats": b"t", b"123": b"v"})
        for key in keys[5:]:
            client.hset(key, mapping={b"_ts:pit": b"t"})
        for i in range(4):
            client.set(f"{redis_prefix}stats__v1:{i}", b"x")
        client.set(f"{redis_prefix}pit__v1:0", b"x")
        assert bench.redis_rows("feast") == 5
        assert bench.redis_rows("flywheel") == 4
    finally:
        client.delete(*keys)
