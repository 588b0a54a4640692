"""Fixtures of the feature-store tests: a small repo of definitions over Parquet files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.features import (
    Aggregation,
    Entity,
    EventStream,
    FeatureService,
    FeatureView,
    Field,
    ParquetSource,
    StreamFeatureView,
    list_of,
    vector,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def user_entity() -> Entity:
    return Entity("user", join_key="user_id", dtype="int64", description="a shopper")


def user_stats_view(path: str = "data/user_stats.parquet", **kw: object) -> FeatureView:
    schema = kw.pop(
        "schema",
        [
            Field("clicks", "int64"),
            Field("spend", "float64"),
            Field("country", "string"),
        ],
    )
    return FeatureView(
        kw.pop("name", "user_stats"),  # type: ignore[arg-type]
        entities=kw.pop("entities", ["user"]),  # type: ignore[arg-type]
        source=ParquetSource(path, timestamp_field="ts"),
        schema=schema,  # type: ignore[arg-type]
        ttl=kw.pop("ttl", "7d"),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


def clicks_stream() -> EventStream:
    return EventStream(
        "clicks",
        schema=[
            Field("user_id", "int64"),
            Field("item_id", "int64"),
            Field("amount", "float64", nullable=True),
        ],
        timestamp_field="ts",
    )


def click_aggs_view() -> StreamFeatureView:
    return StreamFeatureView(
        "click_aggs",
        entities=["user"],
        source=clicks_stream(),
        aggregations=[
            Aggregation("item_id", "count", "1h", tile="5m"),
            Aggregation("amount", "sum", "1h", tile="5m"),
            Aggregation("amount", "mean", "1d", tile="2h"),
            Aggregation("amount", "min", "1h", tile="5m"),
            Aggregation("amount", "max", "1h", tile="5m"),
            Aggregation("item_id", "last", "1d", tile="2h"),
            Aggregation("item_id", "count_distinct", "1d", tile="2h"),
            Aggregation("item_id", "last_n", "1d", n=3, tile="2h"),
        ],
        allowed_lateness="10m",
    )


def write_user_stats(root: Path, n_users: int = 20, rows: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(
        {
            "user_id": rng.integers(0, n_users, rows).astype("int64"),
            "ts": [T0 + timedelta(hours=int(h)) for h in rng.integers(0, 24 * 10, rows)],
            "clicks": rng.integers(0, 100, rows).astype("int64"),
            "spend": rng.random(rows) * 100,
            "country": rng.choice(["de", "fr", "us"], rows),
        }
    )
    path = root / "data" / "user_stats.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)
    return df


@pytest.fixture
def repo_objects() -> list[object]:
    fv = user_stats_view()
    svc = FeatureService("ranker_features", [fv])
    emb = FeatureView(
        "user_embedding",
        entities=["user"],
        source=ParquetSource("data/emb.parquet", timestamp_field="ts"),
        schema=[Field("emb", vector(4)), Field("tags", list_of("string"))],
    )
    return [user_entity(), fv, svc, emb]


@pytest.fixture(params=["sqlite", "redis"])
def online_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An online-store URL: the embedded SQLite file, then the real Redis (own key prefix)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/online.db"
    request.applymarker(pytest.mark.integration)
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    return f"{url}?prefix={prefix}"


@pytest.fixture
def online_project(tmp_path: Path, online_url: str):  # type: ignore[no-untyped-def]
    """A project whose online store is ``online_url``."""
    from tests.conftest import make_project

    proj = make_project(tmp_path / "proj", online_store=online_url)
    yield proj
    proj.close()


@pytest.fixture
def stream_project(tmp_path: Path, backend: dict[str, str]):  # type: ignore[no-untyped-def]
    from tests.conftest import make_project

    proj = make_project(tmp_path / "proj", **backend)
    yield proj
    proj.close()
