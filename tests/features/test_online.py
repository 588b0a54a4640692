"""Online store contract (SQLite and real Redis) and ``get_online_features`` end to end."""

from __future__ import annotations

import threading
from datetime import timedelta

import orjson
import pytest

from flywheel.features import FeatureService, FeatureStore, FeatureStoreError
from flywheel.features._online import open_online_store
from flywheel.project import Project
from tests.features.conftest import T0, user_entity, user_stats_view, write_user_stats


def test_contract_newest_wins_idempotent_batch_read(online_url: str) -> None:
    store = open_online_store(online_url, namespace="t")
    try:
        store.write("t1", [("1", 100, b"a"), ("2", 100, b"b")])
        store.write("t1", [("1", 50, b"older"), ("2", 200, b"newer")])
        store.write("t1", [("1", 100, b"same-time")])  # equal event time overwrites
        store.write("t2", [("1", 7, b"other")])
        got = store.read([("t1", ["1", "2", "3", "1"]), ("t2", ["1"]), ("nope", ["1"])])
        assert got == [
            [(100, b"same-time"), (200, b"newer"), None, (100, b"same-time")],
            [(7, b"other")],
            [None],
        ]
        before = store.read([("t1", ["1", "2"])])
        store.write("t1", [("1", 100, b"same-time"), ("2", 200, b"newer")])
        assert store.read([("t1", ["1", "2"])]) == before
        store.drop("t1")
        assert store.read([("t1", ["1"])]) == [[None]]
    finally:
        store.close()


def test_contract_transact_is_atomic_under_concurrency(online_url: str) -> None:
    stores = [open_online_store(online_url, namespace="t") for _ in range(2)]

    def bump(store_index: int) -> None:
        for _ in range(25):

            def update(cur: dict) -> dict:  # type: ignore[type-arg]
                row = cur["k"]
                n = 0 if row is None else int(row[1])
                return {"k": (n + 1, str(n + 1).encode())}

            stores[store_index].transact("counter", ["k"], update)

    threads = [threading.Thread(target=bump, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stores[0].read([("counter", ["k"])])[0][0] == (50, b"50")
    for s in stores:
        s.close()


def test_materialize_then_read_online(online_project: Project) -> None:
    data = write_user_stats(online_project.root, n_users=30, rows=400)
    store = FeatureStore(online_project)
    fv = user_stats_view(ttl="3d")
    store.apply([user_entity(), fv, FeatureService("svc", [fv])])
    end = T0 + timedelta(days=11)
    report = store.materialize(T0 - timedelta(days=1), end)
    latest = data.sort_values("ts").groupby("user_id").tail(1).set_index("user_id")
    assert report.rows == len(latest)
    ids = [*latest.index[:5].tolist(), 999]
    resp = store.get_online_features(
        ["user_stats:clicks", "user_stats:country"], [{"user_id": i} for i in ids]
    )
    d = resp.to_dict()
    assert d["user_id"] == ids
    # TTL 3 days counted from now (2026 wall clock is long after T0): everything is expired.
    assert resp.statuses["clicks"] == ["expired"] * 5 + ["missing"]
    assert d["clicks"] == [None] * 6

    store.apply(
        [
            user_entity(),
            user_stats_view(ttl=None),
            FeatureService("svc", [user_stats_view(ttl=None)]),
        ]
    )
    resp = store.get_online_features(store.get_feature_service("svc"), {"user_id": ids})
    d = resp.to_dict()
    assert d["clicks"][:5] == latest["clicks"].iloc[:5].tolist()
    assert d["country"][:5] == latest["country"].iloc[:5].tolist()
    assert d["spend"][:5] == pytest.approx(latest["spend"].iloc[:5].tolist())
    assert resp.statuses["spend"] == ["present"] * 5 + ["missing"]
    times = resp.event_timestamps["clicks"]
    assert times[:5] == [t.to_pydatetime() for t in latest["ts"].iloc[:5]]
    assert times[5] is None
    df = resp.to_df()
    assert list(df.columns) == ["user_id", "clicks", "spend", "country"]


def test_incremental_watermark_and_errors(any_project: Project) -> None:
    project = any_project
    data = write_user_stats(project.root, n_users=10, rows=300)
    store = FeatureStore(project)
    store.apply([user_entity(), user_stats_view(ttl=None)])
    mid = T0 + timedelta(days=5)
    first = store.materialize_incremental(mid)
    second = store.materialize_incremental(T0 + timedelta(days=20))
    assert first.views[0].start.year == 1970 and second.views[0].start == mid
    assert "rows/s" in second.summary()
    again = store.materialize_incremental(T0 + timedelta(days=20))
    assert again.rows == 0
    latest = data.sort_values("ts").groupby("user_id").tail(1).set_index("user_id")
    got = store.get_online_features(["user_stats:clicks"], {"user_id": latest.index.tolist()})
    assert got.to_dict()["clicks"] == latest["clicks"].tolist()
    assert (
        store.describe("user_stats")["versions"][0]["freshness"]["rows"] == first.rows + second.rows
    )
    with pytest.raises(FeatureStoreError, match="join key 'user_id'"):
        store.get_online_features(["user_stats:clicks"], [{"id": 1}])
    with pytest.raises(FeatureStoreError, match="integers or strings"):
        store.get_online_features(["user_stats:clicks"], [{"user_id": "x1"}, {"user_id": [1]}])


def test_vectors_lists_and_timestamps_round_trip(project: Project) -> None:
    import pandas as pd

    from flywheel.features import FeatureView, Field, ParquetSource, list_of, vector

    (project.root / "data").mkdir()
    pd.DataFrame(
        {
            "user_id": [1, 2],
            "ts": [T0, T0],
            "emb": [[0.5, 1.5, 2.5], [1.0, 2.0, 3.0]],
            "tags": [["a", "b"], []],
            "seen": [T0 - timedelta(hours=1), None],
            "ok": [True, False],
        }
    ).to_parquet(project.root / "data" / "emb.parquet", index=False)
    fv = FeatureView(
        "emb",
        ["user"],
        ParquetSource("data/emb.parquet", "ts"),
        [
            Field("emb", vector(3)),
            Field("tags", list_of("string")),
            Field("seen", "timestamp"),
            Field("ok", "bool"),
        ],
    )
    store = FeatureStore(project)
    store.apply([user_entity(), fv])
    store.materialize(T0 - timedelta(days=1), T0 + timedelta(days=1))
    d = store.get_online_features(
        ["emb:emb", "emb:tags", "emb:seen", "emb:ok"], {"user_id": [1, 2]}
    ).to_dict()
    assert d["emb"] == [[0.5, 1.5, 2.5], [1.0, 2.0, 3.0]]
    assert d["tags"] == [["a", "b"], []]
    assert d["seen"] == [T0 - timedelta(hours=1), None]
    assert d["ok"] == [True, False]
    assert orjson.dumps(d["tags"])
