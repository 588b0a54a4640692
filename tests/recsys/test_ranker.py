"""The ranking stage: point-in-time history in the feature store, the ranker's training dataset,
train/serve feature parity, the scheduled LightGBM job and serving it in process.

Small synthetic shops; every expected value is recomputed here by brute force from the lines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from flywheel.features import FeatureStore
from flywheel.project import Project
from flywheel.recsys import (
    RANKER_FEATURES,
    HistoryIndex,
    RankerClient,
    RankerConfig,
    RankerUnavailable,
    RecsysError,
    SyntheticConfig,
    build_train_data,
    clean_transactions,
    fit_ranker,
    generate_transactions,
    ingest,
    ranker_features,
    read_item_features,
    read_user_features,
    write_ranker_dataset,
)
from flywheel.recsys._ingest import load_items, load_purchases, snapshot_times
from flywheel.recsys._ranker import (
    ITEM_FEATURE_REFS,
    USER_FEATURE_REFS,
    build_ranker_frame,
    ranker_matrix,
    union_rows,
)
from tests.conftest import make_project

SHOP = SyntheticConfig(n_users=500, n_items=150, n_categories=6, seed=5)
CONFIG = RankerConfig(cutoffs=2, n_estimators=60, early_stopping_rounds=10)


@pytest.fixture(scope="module")
def lines() -> pd.DataFrame:
    return clean_transactions(generate_transactions(SHOP))


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, lines: pd.DataFrame) -> Iterator[Project]:
    """One project with the shop ingested (weekly snapshots) for the whole module."""
    proj = make_project(tmp_path_factory.mktemp("ranker") / "proj")
    ingest(proj, lines)
    yield proj
    proj.close()


@pytest.fixture(scope="module")
def dataset(shop: Project) -> pd.DataFrame:
    name = write_ranker_dataset(shop, config=CONFIG, name="ranker-test")
    fs = FeatureStore(shop)
    try:
        return fs.get_training_dataset(name).to_df()
    finally:
        fs.close()


def _rfm(lines: pd.DataFrame, user: int, at: pd.Timestamp) -> tuple[float, int, float] | None:
    mine = lines.loc[(lines["CustomerID"] == user) & (lines["InvoiceDate"] < at)]
    if mine.empty:
        return None
    recency = (at - mine["InvoiceDate"].max()) / pd.Timedelta(days=1)
    spend = float((mine["Quantity"] * mine["UnitPrice"]).sum())
    return float(recency), int(mine["InvoiceNo"].nunique()), spend


def _buyers(lines: pd.DataFrame, item: str, at: pd.Timestamp, days: int | None) -> int:
    part = lines.loc[(lines["StockCode"].astype(str) == item) & (lines["InvoiceDate"] < at)]
    if days is not None:
        part = part.loc[part["InvoiceDate"] >= at - pd.Timedelta(days=days)]
    return int(part["CustomerID"].nunique())


def _naive(ts: pd.Series | pd.Timestamp) -> pd.Timestamp:
    return pd.Timestamp(ts).tz_convert("UTC").tz_localize(None)


def test_ingest_keeps_weekly_point_in_time_history(shop: Project, lines: pd.DataFrame) -> None:
    end = lines["InvoiceDate"].max() + pd.Timedelta(seconds=1)
    grid = snapshot_times(lines["InvoiceDate"].min(), end)
    assert len(grid) > 50 and (grid[:-1].day_of_week == 0).all() and grid[-1] == end
    rng = np.random.default_rng(0)
    users = rng.choice(lines["CustomerID"].unique(), 6, replace=False)
    items = rng.choice(lines["StockCode"].astype(str).unique(), 6, replace=False)
    # Query times on snapshots, between snapshots and before anyone bought anything.
    times = [grid[3], grid[10] + pd.Timedelta(hours=50), grid[30], grid[-2], end, grid[0]]
    times.append(pd.Timestamp(lines["InvoiceDate"].min()) - pd.Timedelta(days=1))
    fs = FeatureStore(shop)
    try:
        entity = pd.DataFrame(
            [(int(u), str(i), t) for u in users for i in items for t in times],
            columns=["user_id", "item_id", "event_timestamp"],
        )
        entity["event_timestamp"] = pd.to_datetime(entity["event_timestamp"]).dt.tz_localize("UTC")
        got = fs.get_historical_features(entity, [*USER_FEATURE_REFS, *ITEM_FEATURE_REFS[1:]])
        for row in got.itertuples(index=False):
            t = _naive(row.event_timestamp)
            snap = grid[grid <= t]
            if not len(snap):
                assert pd.isna(row.frequency) and pd.isna(row.buyers_all)
                continue
            at = pd.Timestamp(snap[-1])  # what was known at t: the newest snapshot
            want = _rfm(lines, row.user_id, at)
            if want is None:
                assert pd.isna(row.frequency)
            else:
                assert (row.recency_days, row.frequency) == (pytest.approx(want[0]), want[1])
                assert row.monetary == pytest.approx(want[2])
            if _buyers(lines, row.item_id, at, None) == 0:
                assert pd.isna(row.buyers_all)
            else:
                assert row.buyers_7d == _buyers(lines, row.item_id, at, 7)
                assert row.buyers_30d == _buyers(lines, row.item_id, at, 30)
                assert row.buyers_all == _buyers(lines, row.item_id, at, None)
        # Online: the end snapshot; the item table stays one row per item.
        online = fs.get_online_features(
            list(USER_FEATURE_REFS), {"user_id": [int(u) for u in users]}
        ).to_dict()
        for u, freq in zip(users, online["frequency"], strict=True):
            want = _rfm(lines, int(u), end)
            assert want is not None and freq == want[1]
    finally:
        fs.close()
    catalogue = load_items(shop)
    assert catalogue["item_id"].is_unique
    assert len(catalogue) == lines["StockCode"].nunique()


def test_ranker_dataset_is_point_in_time(dataset: pd.DataFrame, lines: pd.DataFrame) -> None:
    assert set(dataset["split"]) == {"train", "valid"}
    cuts = sorted(dataset["event_timestamp"].unique())
    assert len(cuts) == CONFIG.cutoffs + 1
    window = pd.Timedelta(days=CONFIG.window_days)
    valid = _naive(cuts[-1])
    train_cuts = [_naive(c) for c in cuts[:-1]]
    assert all(c + window <= valid for c in train_cuts)  # no training label reaches validation
    assert (dataset.groupby("query")["label"].max() == 1).all()
    rng = np.random.default_rng(1)
    sample = dataset.iloc[rng.choice(len(dataset), 60, replace=False)]
    stock = lines["StockCode"].astype(str)
    for row in sample.itertuples(index=False):
        c = _naive(row.event_timestamp)
        assert c.day_of_week == 0 and c.hour == 0  # on a weekly snapshot: exact values
        want = _rfm(lines, row.user_id, c)
        assert want is not None  # queries are users with a history before the cut-off
        assert row.recency_days == pytest.approx(want[0]) and row.frequency == want[1]
        assert row.buyers_30d == _buyers(lines, row.item_id, c, 30)
        assert row.buyers_all == _buyers(lines, row.item_id, c, None) >= 1
        pair = lines.loc[(lines["CustomerID"] == row.user_id) & (stock == row.item_id)]
        before = pair.loc[pair["InvoiceDate"] < c]
        assert row.repeat_count == before["InvoiceNo"].nunique()
        if len(before):
            last = (c - before["InvoiceDate"].max()) / pd.Timedelta(days=1)
            assert row.days_since_item == pytest.approx(last)
        else:
            assert np.isnan(row.days_since_item)
        bought_next = ((pair["InvoiceDate"] >= c) & (pair["InvoiceDate"] < c + window)).any()
        assert row.label == int(bought_next)


def test_features_never_read_after_the_cut_off(lines: pd.DataFrame) -> None:
    """Scrambling every purchase from the cut-off on changes the labels, not one feature."""
    cut = pd.Timestamp("2011-10-03")
    scrambled = lines.copy()
    later = (scrambled["InvoiceDate"] >= cut).to_numpy()
    codes = scrambled["StockCode"].astype(str).to_numpy().copy()
    codes[later] = np.random.default_rng(0).permutation(codes[later])
    scrambled["StockCode"] = codes
    catalogue = load_items_like(lines)
    users = {cut: np.sort(lines.loc[lines["InvoiceDate"] < cut, "CustomerID"].unique())[:80]}
    kw = {"catalogue": catalogue, "labelled_only": False, "users": users}
    a, _ = build_ranker_frame(lines, [cut], CONFIG, **kw)  # type: ignore[arg-type]
    b, _ = build_ranker_frame(scrambled, [cut], CONFIG, **kw)  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(a.drop(columns="label"), b.drop(columns="label"))
    assert not a["label"].equals(b["label"])


def load_items_like(lines: pd.DataFrame) -> pd.DataFrame:
    from flywheel.recsys._ranker import _item_frame

    return _item_frame(lines)


def test_train_and_serve_build_the_same_feature_rows(shop: Project) -> None:
    """The dataset row of a (user, item) at the end of the data equals the row the online path
    builds from the online store and the in-memory history."""
    purchases = load_purchases(shop)
    catalogue = load_items(shop)
    end = purchases["InvoiceDate"].max() + pd.Timedelta(seconds=1)
    users = np.sort(purchases["CustomerID"].unique())[:25]
    offline, fitted = build_ranker_frame(
        purchases, [end], CONFIG, catalogue=catalogue, labelled_only=False, users={end: users}
    )
    fs = FeatureStore(shop)
    try:
        pit = fs.get_historical_features(
            offline[["user_id", "item_id", "event_timestamp"]],
            [*USER_FEATURE_REFS, *ITEM_FEATURE_REFS],
        )
        for c in pit.columns:
            if c not in offline.columns:
                offline[c] = pit[c].to_numpy()
        offline_x = ranker_matrix(offline)

        # The online side: what a recommender process holds, and the online store.
        train = build_train_data(purchases, end)
        by_id = catalogue.set_index("item_id")
        cats = by_id["category"].reindex(train.items).to_numpy(dtype=object)
        index = HistoryIndex(train, cats, by_id["price"].reindex(train.items).to_numpy())
        gens = fitted[pd.Timestamp(end)]
        rows_done = 0
        for uid in users:
            u_row = int(np.searchsorted(train.users, uid))
            cands = gens.candidates(np.asarray([u_row]), CONFIG.per_generator)[0]
            rows = union_rows(cands)
            ids = [str(train.items[r]) for r in rows]
            online_x = ranker_features(
                read_user_features(fs, int(uid)),
                cands,
                rows,
                items=read_item_features(fs, ids),
                history=index.history(u_row),
                categories=cats,
            )
            mine = offline.loc[offline["user_id"] == uid]
            assert mine["item_id"].tolist() == ids
            np.testing.assert_array_equal(online_x, offline_x[mine.index.to_numpy()])
            rows_done += len(rows)
        assert rows_done > 100
        assert online_x.dtype == np.float32 and online_x.shape[1] == len(RANKER_FEATURES)
        assert np.isfinite(offline_x).all()  # missing values are sentinels, never NaN
    finally:
        fs.close()


def test_fitted_ranker_beats_retrieval_order_on_validation(dataset: pd.DataFrame) -> None:
    fitted = fit_ranker(dataset, CONFIG)
    valid = dataset.loc[dataset["split"] == "valid"].sort_values("query", kind="stable")
    scores = fitted.predict(ranker_matrix(valid))
    assert fitted.valid_queries == valid["query"].nunique() and 1 <= fitted.best_iteration <= 60

    def ndcg(order_by: np.ndarray) -> float:
        out = []
        for _, g in valid.assign(s=order_by).groupby("query"):
            labels = g.sort_values("s", ascending=False, kind="stable")["label"].to_numpy()[:20]
            disc = 1 / np.log2(np.arange(2, len(labels) + 2))
            ideal = np.sort(g["label"].to_numpy())[::-1][:20]
            out.append((labels * disc).sum() / (ideal * disc[: len(ideal)]).sum())
        return float(np.mean(out))

    assert ndcg(scores) == pytest.approx(fitted.valid_ndcg, abs=0.02)
    # Better than any single retrieval signal on its own.
    for col in ("repeat_norm", "co-occurrence_norm", "trending_norm", "content_norm"):
        assert ndcg(scores) > ndcg(valid[col].to_numpy()), col


def test_ranker_unavailable_when_nothing_is_served(project: Project) -> None:
    from flywheel.serving import server_for

    client = RankerClient(project)
    x = np.zeros((3, len(RANKER_FEATURES)), dtype=np.float32)
    try:
        with pytest.raises(RankerUnavailable, match="recs-ranker"):
            client.score(x, user_id=1, timeout_s=5.0)
        with pytest.raises(RecsysError, match="features must be"):
            client.score(x[:, :5], user_id=1, timeout_s=5.0)
    finally:
        server_for(project).stop_blocking()


def test_bad_ranker_settings_are_named(shop: Project) -> None:
    with pytest.raises(RecsysError, match="per_generator"):
        RankerConfig(per_generator=0)
    with pytest.raises(RecsysError, match="unknown settings"):
        RankerConfig.from_dict({"windows": 3})
    with pytest.raises(RecsysError, match="end"):
        write_ranker_dataset(shop, end="not-a-date")
    with pytest.raises(RecsysError, match="cut-off"):
        write_ranker_dataset(shop, config=RankerConfig(cutoffs=40))


@pytest.mark.integration
def test_scheduled_training_registers_and_serves_the_ranker(
    shop: Project, dataset: pd.DataFrame, capsys: pytest.CaptureFixture[str]
) -> None:
    """`flywheel recs train-ranker --wait`: dataset, a real 1-process job, registration; then
    the version is served in process with the same scores as LightGBM on its artifact."""
    import lightgbm as lgb
    from prometheus_client import REGISTRY

    from flywheel.cli import main
    from flywheel.lineage import Node, upstream
    from flywheel.registry import Registry
    from flywheel.serving import server_for

    args = ["recs", "train-ranker", "--cutoffs", "2", "--wait"]
    code = 0
    try:
        main([*args, "--config", str(shop.root / "flywheel.yaml")])
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "registered models:/recs-ranker/1" in out, out
    reg = Registry(shop)
    mv = reg.get_version("recs-ranker", 1)
    assert mv.flavor == "lightgbm"
    spec = mv.signature.inputs[0]
    width = len(RANKER_FEATURES)
    assert (spec.name, spec.datatype, spec.shape) == ("features", "FP32", (-1, width))
    assert list(mv.signature.output_names) == ["scores"]
    assert "valid_ndcg_at_20" in mv.metrics and mv.training_dataset
    graph = upstream(shop.db, Node("model_version", "recs-ranker/1"))
    kinds = {(e.src.kind, e.dst.kind) for e in graph.edges}
    assert ("training_dataset", "run") in kinds and ("run", "model_version") in kinds
    assert ("feature_view", "training_dataset") in kinds

    client = RankerClient(shop)
    x = ranker_matrix(dataset.head(40))
    server = server_for(shop)
    try:
        with pytest.raises(RankerUnavailable):  # registered but not in production yet
            client.score(x, user_id=7, timeout_s=30.0)
        reg.set_stage("recs-ranker", 1, "production", reason="test")
        scores, version = client.score(x, user_id=7, timeout_s=30.0)
        assert version == "recs-ranker/1"
        manifest = json.loads(reg.artifacts.get_bytes(mv.artifact_sha256))
        text = reg.artifacts.get_bytes(manifest["files"]["model.txt"]).decode()
        expected = lgb.Booster(model_str=text).predict(x)
        np.testing.assert_allclose(scores, expected, rtol=1e-12)
        labels = {"endpoint": "recs-ranker", "model": "recs-ranker", "version": "1", "code": "200"}
        assert (REGISTRY.get_sample_value("flywheel_serving_requests_total", labels) or 0) >= 1
    finally:
        server.stop_blocking()
