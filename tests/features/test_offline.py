"""Point-in-time joins against a brute-force pandas reference."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.errors import ConflictError
from flywheel.features import (
    Entity,
    FeatureService,
    FeatureStore,
    FeatureStoreError,
    FeatureView,
    Field,
    ParquetSource,
    _offline,
)
from flywheel.lineage import Node, upstream
from flywheel.project import Project
from tests.features.conftest import T0, user_entity, user_stats_view, write_user_stats

minutes = st.integers(min_value=0, max_value=40)
feature_row = st.tuples(st.integers(0, 2), minutes, st.integers(0, 1))  # user, minute, file
entity_row = st.tuples(st.integers(0, 3), minutes)  # user 3 never has data


def brute_force(
    rows: list[tuple[int, int, int]], entity_rows: list[tuple[int, int]], ttl: int | None
) -> list[int | None]:
    """For each entity row: the id of the row to use, by the definition, or None."""
    out: list[int | None] = []
    for user, t in entity_rows:
        best: tuple[int, int, int] | None = None  # (minute, file, position) -> id
        best_id = None
        for rid, (u, m, f) in enumerate(rows):
            if u != user or m > t:
                continue
            pos = (m, f, rid)
            if best is None or pos > best:
                best, best_id = pos, rid
        if best is not None and ttl is not None and best[0] < t - ttl:
            best_id = None
        out.append(best_id)
    return out


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=st.lists(feature_row, max_size=25),
    entity_rows=st.lists(entity_row, min_size=1, max_size=12),
    ttl=st.one_of(st.none(), st.integers(0, 15)),
)
def test_point_in_time_join_matches_brute_force(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, int, int]],
    entity_rows: list[tuple[int, int]],
    ttl: int | None,
) -> None:
    from tests.conftest import make_project

    root = tmp_path_factory.mktemp("pit")
    project = make_project(root)
    folder = root / "data" / "events"
    folder.mkdir(parents=True)
    # Two files: file 1 is "late data" written after file 0, possibly with older event times.
    for f in (0, 1):
        part = [(rid, r) for rid, r in enumerate(rows) if r[2] == f]
        pd.DataFrame(
            {
                "user_id": pd.Series([r[0] for _, r in part], dtype="int64"),
                "ts": pd.Series(
                    [T0 + timedelta(minutes=r[1]) for _, r in part], dtype="datetime64[us, UTC]"
                ),
                "row_id": pd.Series([rid for rid, _ in part], dtype="int64"),
            }
        ).to_parquet(folder / f"part-{f}.parquet", index=False)
    store = FeatureStore(project)
    view = FeatureView(
        "v",
        ["user"],
        ParquetSource("data/events", timestamp_field="ts"),
        [Field("row_id", "int64")],
        ttl=timedelta(minutes=ttl) if ttl is not None else None,
    )
    store.apply([user_entity(), view])
    entity_df = pd.DataFrame(
        {
            "user_id": [u for u, _ in entity_rows],
            "event_timestamp": [T0 + timedelta(minutes=m) for _, m in entity_rows],
            "label": range(len(entity_rows)),
        }
    )
    expected = brute_force(rows, entity_rows, ttl)
    try:
        for strategy in ("auto", "hash", "asof"):  # both join plans, and the one picked
            _offline.JOIN_STRATEGY = strategy
            got = store.get_historical_features(entity_df, ["v:row_id"])
            assert list(got["label"]) == list(range(len(entity_rows)))
            assert list(got["user_id"]) == [u for u, _ in entity_rows]
            actual = [None if pd.isna(x) else int(x) for x in got["row_id"]]
            assert actual == expected, strategy
    finally:
        _offline.JOIN_STRATEGY = "auto"
        project.close()


created_row = st.tuples(
    st.integers(0, 2),
    st.integers(0, 12),
    st.integers(0, 1),
    st.one_of(st.none(), st.integers(0, 3)),
)  # user, minute (few values: many ties), file, created minute (None: no created time)


def brute_force_created(
    rows: list[tuple[int, int, int, int | None]],
    entity_rows: list[tuple[int, int]],
    ttl: int | None,
) -> list[int | None]:
    """The definition with a ``created_timestamp_field``, written independently of the SQL: at
    equal event time the greatest created time wins (no created time loses to any), then the
    later file, then the later row of the file."""
    out: list[int | None] = []
    for user, t in entity_rows:
        candidates = [
            ((m, c is not None, c if c is not None else 0, f, rid), rid)
            for rid, (u, m, f, c) in enumerate(rows)
            if u == user and m <= t
        ]
        if not candidates:
            out.append(None)
            continue
        key, rid = max(candidates)
        out.append(None if ttl is not None and key[0] < t - ttl else rid)
    return out


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    rows=st.lists(created_row, max_size=25),
    entity_rows=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 14)), min_size=1, max_size=10),
    ttl=st.one_of(st.none(), st.integers(0, 6)),
)
def test_point_in_time_join_with_created_timestamp_matches_brute_force(
    tmp_path_factory: pytest.TempPathFactory,
    rows: list[tuple[int, int, int, int | None]],
    entity_rows: list[tuple[int, int]],
    ttl: int | None,
) -> None:
    """Issue #17 item 11: the ``created_timestamp_field`` tie-break against the reference."""
    from tests.conftest import make_project

    root = tmp_path_factory.mktemp("pitc")
    project = make_project(root)
    folder = root / "data" / "events"
    folder.mkdir(parents=True)
    for f in (0, 1):
        part = [(rid, r) for rid, r in enumerate(rows) if r[2] == f]
        pd.DataFrame(
            {
                "user_id": pd.Series([r[0] for _, r in part], dtype="int64"),
                "ts": pd.Series(
                    [T0 + timedelta(minutes=r[1]) for _, r in part], dtype="datetime64[us, UTC]"
                ),
                "created": pd.Series(
                    [None if r[3] is None else T0 + timedelta(minutes=r[3]) for _, r in part],
                    dtype="datetime64[us, UTC]",
                ),
                "row_id": pd.Series([rid for rid, _ in part], dtype="int64"),
            }
        ).to_parquet(folder / f"part-{f}.parquet", index=False)
    store = FeatureStore(project)
    view = FeatureView(
        "v",
        ["user"],
        ParquetSource("data/events", timestamp_field="ts", created_timestamp_field="created"),
        [Field("row_id", "int64")],
        ttl=timedelta(minutes=ttl) if ttl is not None else None,
    )
    store.apply([user_entity(), view])
    entity_df = pd.DataFrame(
        {
            "user_id": [u for u, _ in entity_rows],
            "event_timestamp": [T0 + timedelta(minutes=m) for _, m in entity_rows],
        }
    )
    expected = brute_force_created(rows, entity_rows, ttl)
    try:
        for strategy in ("auto", "hash", "asof"):
            _offline.JOIN_STRATEGY = strategy
            got = store.get_historical_features(entity_df, ["v:row_id"])
            actual = [None if pd.isna(x) else int(x) for x in got["row_id"]]
            assert actual == expected, strategy
    finally:
        _offline.JOIN_STRATEGY = "auto"
        project.close()


def test_created_timestamp_breaks_ties_and_several_views(project: Project) -> None:
    root = project.root
    (root / "data").mkdir()
    pd.DataFrame(
        {
            "user_id": [1, 1, 2],
            "ts": [T0, T0, T0],
            "created": [T0 + timedelta(seconds=5), T0 + timedelta(seconds=1), T0],
            "score": [0.5, 0.9, 0.1],
        }
    ).to_parquet(root / "data" / "scores.parquet", index=False)
    write_user_stats(root)
    store = FeatureStore(project)
    scores = FeatureView(
        "scores",
        ["user"],
        ParquetSource("data/scores.parquet", "ts", created_timestamp_field="created"),
        [Field("score", "float64")],
    )
    store.apply([user_entity(), scores, user_stats_view()])
    entity_df = pd.DataFrame(
        {"user_id": [1, 2, 99], "event_timestamp": [T0 + timedelta(days=3)] * 3}
    )
    try:
        for strategy in ("hash", "asof"):
            _offline.JOIN_STRATEGY = strategy
            got = store.get_historical_features(
                entity_df, ["scores:score", "user_stats:clicks"], full_feature_names=True
            )
            assert list(got.columns) == [
                "user_id",
                "event_timestamp",
                "scores__score",
                "user_stats__clicks",
            ]
            assert got["scores__score"].tolist()[:2] == [0.5, 0.1]
            assert pd.isna(got["scores__score"].iloc[2])
            assert len(got) == 3
    finally:
        _offline.JOIN_STRATEGY = "auto"


def test_entity_columns_come_back_as_given_and_the_join_plan_follows_the_data(
    project: Project,
) -> None:
    """Input columns keep dtype, index order and values; keys with many rows on both sides
    (a hash join would pair every row with every row) get the ASOF join, sparse ones the hash."""
    root = project.root
    (root / "data").mkdir()
    n = 400
    pd.DataFrame(
        {
            "user_id": [i % 2 for i in range(n)],  # two keys, 200 rows each
            "ts": [T0 + timedelta(minutes=i) for i in range(n)],
            "x": range(n),
        }
    ).to_parquet(root / "data" / "dense.parquet", index=False)
    store = FeatureStore(project)
    dense = FeatureView(
        "dense", ["user"], ParquetSource("data/dense.parquet", "ts"), [Field("x", "int64")]
    )
    store.apply([user_entity(), dense])
    entity_df = pd.DataFrame(
        {
            # Key 2 has no rows; a missing key gets nulls.
            "user_id": pd.array([None if i == 59 else i % 3 for i in range(60)], dtype="Int64"),
            "event_timestamp": [T0 + timedelta(minutes=7 * i + 3) for i in range(60)],
            "label": pd.Categorical(["a", "b"] * 30),
            "weight": [0.5] * 60,
        },
        index=range(100, 40, -1),
    )
    expected = [
        None if pd.isna(u) or u == 2 else max(m for m in range(n) if m % 2 == u and m <= 7 * i + 3)
        for i, u in enumerate(entity_df["user_id"])
    ]
    try:
        for strategy in ("auto", "hash"):
            _offline.JOIN_STRATEGY = strategy
            got = store.get_historical_features(entity_df, ["dense:x"])
            assert list(got.columns) == ["user_id", "event_timestamp", "label", "weight", "x"]
            assert got["label"].dtype == "category"
            assert list(got["label"]) == list(entity_df["label"])
            assert list(got["event_timestamp"]) == list(entity_df["event_timestamp"])
            assert [None if pd.isna(x) else int(x) for x in got["x"]] == expected
    finally:
        _offline.JOIN_STRATEGY = "auto"
    con = _offline.shared_cursor()
    try:
        con.register("entity_df", _offline.normalise_entity_df(entity_df, ["user_id"]))
        view = store._queries(store.definitions.resolve(["dense:x"]), False)[0][0]
        # 40 entity rows of keys 0/1 x 200 source rows each = 8,000 pairs > 4 x (400 + 60).
        assert not _offline._use_hash_join(con, view, None, len(entity_df))
        # 20 rows, one of a key with data: 200 pairs.
        sparse = pd.DataFrame({"user_id": [0] + [2] * 19, "event_timestamp": [T0] * 20})
        con.register("entity_df", _offline.normalise_entity_df(sparse, ["user_id"]))
        assert _offline._use_hash_join(con, view, None, len(sparse))
    finally:
        con.close()


def test_training_dataset_saved_catalogued_and_in_lineage(any_project: Project) -> None:
    project = any_project
    write_user_stats(project.root)
    store = FeatureStore(project)
    fv = user_stats_view()
    svc = FeatureService("ranker", [fv])
    store.apply([user_entity(), fv, svc])
    entity_df = pd.DataFrame(
        {"user_id": [1, 2, 3], "event_timestamp": [T0 + timedelta(days=5)] * 3, "y": [1, 0, 1]}
    )
    ds = store.create_training_dataset("train_v1", entity_df, svc)
    again = store.get_training_dataset("train_v1")
    assert again.row_count == 3 == ds.row_count
    assert again.files[0].is_file()
    assert again.features == [
        "user_stats@v1:clicks",
        "user_stats@v1:spend",
        "user_stats@v1:country",
    ]
    assert again.stats["clicks"]["count"] + again.stats["clicks"]["nulls"] == 3
    assert "read_parquet" in again.query and "JOIN" in again.query
    pd.testing.assert_frame_equal(
        again.to_df(), store.get_historical_features(entity_df, svc), check_dtype=False
    )
    up = upstream(project.db, Node("training_dataset", "train_v1"))
    assert {
        Node("feature_service", "ranker"),
        Node("data_source", "data/user_stats.parquet"),
    } <= up.nodes
    with pytest.raises(ConflictError, match="exists"):
        store.create_training_dataset("train_v1", entity_df, svc)


def test_bad_entity_df_is_a_clear_error(project: Project) -> None:
    write_user_stats(project.root)
    store = FeatureStore(project)
    store.apply([Entity("user", "user_id"), user_stats_view()])
    with pytest.raises(FeatureStoreError, match="event_timestamp"):
        store.get_historical_features(pd.DataFrame({"user_id": [1]}), ["user_stats:clicks"])
    with pytest.raises(FeatureStoreError, match="no feature 'nope'"):
        store.get_historical_features(
            pd.DataFrame({"user_id": [1], "event_timestamp": [T0]}), ["user_stats:nope"]
        )


def test_missing_source_gives_nulls(project: Project, tmp_path: Path) -> None:
    store = FeatureStore(project)
    store.apply([user_entity(), user_stats_view(path="data/nothing_yet")])
    got = store.get_historical_features(
        pd.DataFrame({"user_id": [1], "event_timestamp": [T0]}), ["user_stats:clicks"]
    )
    assert len(got) == 1 and pd.isna(got["clicks"].iloc[0])


def test_very_wide_time_range_uses_coarser_packing(project: Project) -> None:
    """Event times spanning millennia do not fit µs in 63 bits: packing falls back to seconds."""
    import numpy as np

    root = project.root
    (root / "data").mkdir()
    times = np.array(
        ["1500-01-01", "2020-05-05", "2020-05-05", "200000-01-01"], dtype="datetime64[us]"
    )
    pd.DataFrame({"user_id": [1, 1, 1, 1], "ts": times, "v": [1, 2, 3, 4]}).to_parquet(
        root / "data" / "wide.parquet", index=False
    )
    store = FeatureStore(project)
    view = FeatureView(
        "wide", ["user"], ParquetSource("data/wide.parquet", "ts"), [Field("v", "int64")]
    )
    store.apply([user_entity(), view])
    when = np.array(
        ["1400-01-01", "1500-01-01", "2020-05-05T00:00:00.5", "199999-12-31", "250000-01-01"],
        dtype="datetime64[us]",
    )
    entity_df = pd.DataFrame({"user_id": [1] * 5, "event_timestamp": when})
    got = store.get_historical_features(entity_df, ["wide:v"])
    values = [None if pd.isna(x) else int(x) for x in got["v"]]
    assert values == [None, 1, 3, 3, 4]
    from flywheel.features._offline import _packing, connect

    con = connect()
    v = store._queries(store.definitions.resolve(["wide:v"]), False)[0][0]
    packing = _packing(con, v)
    assert packing is not None and packing.unit_us == 1_000_000
