"""The online slice: ingest into the feature store, GET /recommendations, POST /events."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.features import FeatureStore
from flywheel.project import Project
from flywheel.recsys import (
    EVENT_STREAM,
    Event,
    OnlineRecommender,
    OnlineState,
    RecsysSettings,
    clean_transactions,
    derive_categories,
    ingest,
)
from tests.conftest import make_project
from tests.recsys.conftest import fallback_count

# The rule-based path only: no learned models, no exploration slots, TF-IDF text (fast).
BASE_CONFIG = {
    "content_method": "tfidf",
    "two_tower_model": None,
    "ranker_endpoint": None,
    "explore_experiment": None,
    "deadline_ms": 5000,  # the deadline tests set their own; a loaded machine must not flake
}
BASE = RecsysSettings(**BASE_CONFIG)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_lines(tiny_raw: pd.DataFrame) -> pd.DataFrame:
    return clean_transactions(tiny_raw)


@pytest.fixture
def shop(tmp_path: Path, tiny_lines: pd.DataFrame) -> Iterator[Project]:
    """A SQLite project with the tiny synthetic shop ingested."""
    proj = make_project(tmp_path / "proj", recsys=BASE_CONFIG)
    ingest(proj, tiny_lines)
    yield proj
    proj.close()


def test_categories_are_head_nouns() -> None:
    cats = derive_categories(
        pd.Series(
            [
                "WHITE HANGING HEART T-LIGHT HOLDER",
                "RED T-LIGHT HOLDERS SMALL",
                "SET/4 BUTTERFLY MIRROR MAGNETS",
                "ALARM CLOCK BAKELIKE RED",
                "ALARM CLOCK BAKELIKE PINK",
                None,
            ]
        ),
        min_items=2,
    )
    assert cats.tolist() == ["HOLDER", "HOLDER", "OTHER", "BAKELIKE", "BAKELIKE", "OTHER"]


def test_categories_derive_the_head_noun_once_per_distinct_description(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import flywheel.recsys._ingest as ingest_module

    calls: list[str] = []
    head_noun = ingest_module._head_noun

    def counting(text: str) -> str:
        calls.append(text)
        return head_noun(text)

    monkeypatch.setattr(ingest_module, "_head_noun", counting)
    texts = ["RED T-LIGHT HOLDERS", "PINK T-LIGHT HOLDER", "ALARM CLOCK"] * 400
    cats = derive_categories(pd.Series(texts), min_items=2)
    assert len(calls) == 3
    assert cats.tolist() == ["HOLDER", "HOLDER", "CLOCK"] * 400


def test_ingest_materializes_the_batch_views(shop: Project, tiny_lines: pd.DataFrame) -> None:
    fs = FeatureStore(shop)
    try:
        user = int(tiny_lines["CustomerID"].iloc[0])
        got = fs.get_online_features(
            ["recs_user_rfm:frequency", "recs_user_rfm:monetary"], {"user_id": [user]}
        ).to_dict()
        mine = tiny_lines.loc[tiny_lines["CustomerID"] == user]
        assert got["frequency"] == [mine["InvoiceNo"].nunique()]
        assert got["monetary"][0] == pytest.approx((mine["Quantity"] * mine["UnitPrice"]).sum())
        item = str(tiny_lines["StockCode"].iloc[0])
        meta = fs.get_online_features(
            ["recs_item_metadata:category", "recs_item_popularity:buyers_all"],
            {"item_id": [item]},
        ).to_dict()
        assert meta["category"][0] and meta["buyers_all"][0] >= 1
        names = {e.name for e in fs.list_definitions()}
        assert {EVENT_STREAM, "recs_user_recent", "recs_item_trending"} <= names
    finally:
        fs.close()


def test_ingest_is_idempotent(shop: Project, tiny_lines: pd.DataFrame) -> None:
    again = ingest(shop, tiny_lines)
    assert again.items == tiny_lines["StockCode"].nunique()


@pytest.mark.integration
# The Redis online store closes only the calling thread's RESP connection; the one the feature
# read opened in the recommender's worker thread is reclaimed by the garbage collector.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_ingest_and_stream_on_redis(
    tmp_path: Path, tiny_lines: pd.DataFrame, redis_url: str, redis_prefix: str
) -> None:
    url = f"{redis_url}?prefix={redis_prefix}"
    proj = make_project(tmp_path / "redis", online_store=url, event_log=url)
    try:
        ingest(proj, tiny_lines)
        rec = OnlineRecommender(proj, BASE)
        user = int(tiny_lines["CustomerID"].iloc[0])
        items = rec.state.item_ids[:3]
        rec.record_events([Event(user, i, "view") for i in items])
        rec.store.processor().run(until_idle=True, block_ms=50)
        ctx = rec.read_features(user)
        assert ctx.known and ctx.rfm["frequency"] >= 1
        assert set(items) <= set(ctx.recent_items)
        assert sum(ctx.category_counts.values()) == 3
        assert rec.recommend(user).items
        rec.close()
    finally:
        proj.close()


def test_bad_events_are_422_and_nothing_is_written(
    http: tuple[TestClient, dict[str, str], dict[str, str]], shop: Project
) -> None:
    client, writer, _ = http
    good = {"user_id": 1, "item_id": "X1", "event_type": "view"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"events": [good, {**good, "event_type": "like"}]}, "events.1.event_type"),
        ({"events": [good, {**good, "user_id": "abc"}]}, "events.1.user_id"),
        ({"events": [{"user_id": 1, "event_type": "view"}]}, "events.0.item_id"),
        ({"events": [{**good, "item_id": ""}]}, "events.0.item_id"),
        ({"events": [{**good, "colour": "red"}]}, "events.0.colour"),
        ({"events": []}, "events"),
    ]
    for body, field in cases:
        r = client.post("/events", json=body, headers=writer)
        assert r.status_code == 422, body
        assert field in r.json()["error"], r.json()
    fs = FeatureStore(shop)
    try:
        assert fs.processor().run(until_idle=True, block_ms=20).events == 0
    finally:
        fs.close()


def test_events_need_a_writer(http: tuple[TestClient, dict[str, str], dict[str, str]]) -> None:
    client, _, reader = http
    body = {"events": [{"user_id": 1, "item_id": "X1", "event_type": "view"}]}
    assert client.post("/events", json=body, headers=reader).status_code == 403


def _share(items: list[dict[str, Any]], category: str) -> float:
    return sum(i["category"] == category for i in items) / max(len(items), 1)


def test_views_of_one_category_raise_its_share_at_once(
    http: tuple[TestClient, dict[str, str], dict[str, str]], shop: Project
) -> None:
    client, writer, reader = http
    user = int(pd.read_parquet(shop.root / ".flywheel/recsys/users.parquet")["user_id"].iloc[5])
    before = client.get(f"/recommendations/{user}?k=20", headers=reader).json()
    assert len(before["items"]) == 20
    # The category least present in the user's current top-20 (with items to offer).
    items = pd.read_parquet(shop.root / ".flywheel/recsys/items.parquet")
    counts = items["category"].value_counts()
    target = min(counts[counts >= 5].index, key=lambda c: (_share(before["items"], c), str(c)))
    viewed = items.loc[items["category"] == target, "item_id"].head(5).tolist()
    events = [{"user_id": user, "item_id": i, "event_type": "view"} for i in viewed]
    started = time.monotonic()
    r = client.post("/events", json={"events": events}, headers=writer)
    assert r.status_code == 200 and r.json()["accepted"] == 5
    after = client.get(f"/recommendations/{user}?k=20", headers=reader).json()
    elapsed = time.monotonic() - started
    assert _share(after["items"], target) > _share(before["items"], target)
    assert any("category" in i["reasons"] or "session" in i["reasons"] for i in after["items"])
    assert elapsed < 60  # reported, not a threshold: the very next request reflects the events

    # Another process sees it through the stream features alone (no in-memory session).
    fs = FeatureStore(shop)
    try:
        fs.processor().run(until_idle=True, block_ms=20)
        other = OnlineRecommender(shop, BASE, store=fs)
        seen = other.recommend(user, 20).items
        assert _share(seen, target) > _share(before["items"], target)
        other.close()
    finally:
        fs.close()


def test_new_user_gets_a_page_that_depends_on_context(
    http: tuple[TestClient, dict[str, str], dict[str, str]], shop: Project
) -> None:
    client, _, reader = http
    new_user = 10**9 + 7
    home = client.get(f"/recommendations/{new_user}", headers=reader).json()
    assert len(home["items"]) == 20
    assert home["model_versions"] == {}
    assert set(home["latency_ms"]) >= {"features", "candidates", "ranking", "total"}
    anchor = home["items"][0]["item_id"]
    product = client.get(
        f"/recommendations/{new_user}?surface=product&item_id={anchor}", headers=reader
    ).json()
    assert product["items"] and anchor not in [i["item_id"] for i in product["items"]]
    assert [i["item_id"] for i in product["items"]] != [i["item_id"] for i in home["items"]]
    r = client.get(f"/recommendations/{new_user}?surface=product", headers=reader)
    assert r.status_code == 400 and "item_id" in r.json()["error"]


def test_slow_features_fall_back_to_defaults(shop: Project) -> None:
    rec = OnlineRecommender(shop, replace(BASE, deadline_ms=40))
    try:
        user = next(iter(rec.state.user_index))

        def slow(user_id: int) -> Any:
            time.sleep(0.5)
            raise AssertionError("not reached in time")

        rec.read_features = slow  # type: ignore[method-assign]
        before = fallback_count("features_timeout")
        out = rec.recommend(user, 10)
        assert "features_timeout" in out.fallbacks
        assert len(out.items) == 10
        assert fallback_count("features_timeout") == before + 1
    finally:
        rec.close()


def test_feature_store_errors_fall_back_to_defaults(shop: Project) -> None:
    rec = OnlineRecommender(shop, BASE)
    try:

        def broken(user_id: int) -> Any:
            raise ConnectionError("online store unreachable")

        rec.read_features = broken  # type: ignore[method-assign]
        before = fallback_count("features_error")
        out = rec.recommend(next(iter(rec.state.user_index)), 10)
        assert out.fallbacks == ["features_error"] and len(out.items) == 10
        assert fallback_count("features_error") == before + 1
    finally:
        rec.close()


def test_missing_generators_fall_back_to_popularity(shop: Project) -> None:
    state = OnlineState.from_project(shop, content_method="tfidf")
    state.repeat = None
    state.cooc = None
    state.content_index = None
    state.ease = lambda lam: None  # type: ignore[method-assign]  # no EASE either
    state.trending._scores[:] = 0.0  # nothing trending either
    rec = OnlineRecommender(shop, BASE, state=state)
    try:
        before = fallback_count("generators_missing")
        out = rec.recommend(next(iter(state.user_index)), 10)
        assert "generators_missing" in out.fallbacks
        assert len(out.items) == 10 and all(i["reasons"] == ["popularity"] for i in out.items)
        assert fallback_count("generators_missing") == before + 1
    finally:
        rec.close()


def test_spent_deadline_serves_popularity(shop: Project) -> None:
    # The feature read may take the whole budget; when it does, nothing is left for retrieval.
    rec = OnlineRecommender(shop, replace(BASE, feature_budget=1.0))
    try:
        rec.read_features = lambda user_id: time.sleep(0.05)  # type: ignore[assignment,method-assign]
        out = rec.recommend(1, 5, deadline_ms=1)
        assert {"features_timeout", "deadline"} <= set(out.fallbacks)
        assert [i["reasons"] for i in out.items] == [["popularity"]] * 5
    finally:
        rec.close()


def test_experiment_variant_is_reported(shop: Project) -> None:
    from flywheel.experiments import EventStreamConsumer, Experiments

    exps = Experiments(shop)
    exps.create(
        {
            "name": "recs_strategy",
            "unit": "user_id",
            "variants": [
                {"name": "hybrid", "weight": 50},
                {"name": "popularity", "weight": 50},
            ],
            "metrics": [{"name": "conversion", "kind": "proportion", "event": "purchase"}],
        }
    )
    exps.close()
    rec = OnlineRecommender(shop, replace(BASE, experiment="recs_strategy"))
    try:
        # Previews (the dashboard's playground) enrol nobody: no variant, no exposure below.
        for u in range(40, 50):
            seen = rec.recommend(u, 5, preview=True)
            assert seen.preview and seen.variant is None and seen.strategy == BASE.strategy
        variants = {u: rec.recommend(u, 5).variant for u in range(40)}
        assert set(variants.values()) == {"hybrid", "popularity"}
        pop = next(u for u, v in variants.items() if v == "popularity")
        assert rec.recommend(pop, 5).strategy == "popularity"
        # The A/B loop: GET logged the exposures; purchases posted as events reach the
        # experiment through the recs_events stream (what `experiments.event_streams` consumes).
        buyers = list(range(0, 40, 4))
        rec.record_events([Event(u, rec.state.item_ids[0], "purchase") for u in buyers])
    finally:
        rec.close()
    exps = Experiments(shop)
    try:
        stats = EventStreamConsumer(exps, EVENT_STREAM).poll(block_ms=100)
        assert stats.stored == len(buyers)
        report = exps.report("recs_strategy").to_dict()
        per_variant = {v["name"]: v["exposures"] for v in report["variants"]}
        assert sum(per_variant.values()) == 40 + 1
        conversion = {v["variant"]: v for v in report["metrics"][0]["variants"]}
        for name in ("hybrid", "popularity"):
            bought = sum(1 for u in buyers if variants[u] == name)
            units = sum(1 for v in variants.values() if v == name)
            assert conversion[name]["mean"] == pytest.approx(bought / units)
    finally:
        exps.close()


def test_preview_is_served_like_a_request_and_says_so(
    http: tuple[TestClient, dict[str, str], dict[str, str]], shop: Project
) -> None:
    client, _, reader = http
    user = int(pd.read_parquet(shop.root / ".flywheel/recsys/users.parquet")["user_id"].iloc[2])
    plain = client.get(f"/recommendations/{user}?k=10", headers=reader).json()
    seen = client.get(f"/recommendations/{user}?k=10&preview=true", headers=reader).json()
    assert plain["preview"] is False and seen["preview"] is True
    assert [i["item_id"] for i in seen["items"]] == [i["item_id"] for i in plain["items"]]
    assert seen["strategy"] == plain["strategy"] and seen["fallbacks"] == plain["fallbacks"]


def test_nothing_ingested_is_404(project: Project) -> None:
    _, reader = TokenStore(project.db).create("reader", "r")
    with TestClient(create_app(project, systems=["recsys"])) as client:
        r = client.get("/recommendations/1", headers={"Authorization": f"Bearer {reader}"})
        assert r.status_code == 404 and "recs ingest" in r.json()["error"]


def test_purchases_update_co_occurrence_copy_on_write(shop: Project) -> None:
    rec = OnlineRecommender(shop, BASE, background=False)  # baskets applied at once
    try:
        st = rec.state
        a, b = st.item_ids[0], st.item_ids[1]
        ra, rb = st.item_index[a], st.item_index[b]
        old = st.cooc
        assert old is not None
        before = old.counts[ra, rb]
        rec.record_events([Event(7, a, "purchase"), Event(7, b, "purchase")])
        assert st.cooc is not old and old.counts[ra, rb] == before  # readers kept the old one
        assert st.cooc is not None and st.cooc.counts[ra, rb] == before + 1
        trend_before = st.trending._scores[ra]
        rec.record_events([Event(8, a, "view")])
        assert st.trending._scores[ra] == trend_before + 1
        # A retried batch (same event ids) is counted once, in the stream and in memory.
        retry = [Event(9, a, "view", event_id="e-1"), Event(9, b, "view", event_id="e-2")]
        rec.record_events(retry)
        rec.record_events(retry)
        assert st.trending._scores[ra] == trend_before + 2
        rec.store.processor().run(until_idle=True, block_ms=20)
        assert rec.read_features(9).recent_items == [b, a]  # most recent first, no repeats
    finally:
        rec.close()
