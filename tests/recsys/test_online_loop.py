"""The full request path: cold start, new items, exploration slots and their bandit, filters,
diversity, and the model fallbacks (no two-tower index, no ranker)."""

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
from flywheel.experiments import Experiments
from flywheel.project import Project
from flywheel.recsys import (
    EXPLORE_ARMS,
    Event,
    NewItem,
    OnlineRecommender,
    RecsysSettings,
    ingest,
)
from tests.conftest import make_project
from tests.recsys.conftest import fallback_count

# Exploration on, no learned models (those have their own tests), TF-IDF text (fast). A long
# deadline: on a loaded machine a 50 ms budget would turn pages into deadline fallbacks.
CONFIG = {
    "content_method": "tfidf",
    "two_tower_model": None,
    "ranker_endpoint": None,
    "deadline_ms": 5000,
}
SETTINGS = RecsysSettings(**CONFIG)  # type: ignore[arg-type]


@pytest.fixture
def shop(tmp_path: Path, tiny_lines: pd.DataFrame) -> Iterator[Project]:
    proj = make_project(tmp_path / "proj", recsys=CONFIG)
    ingest(proj, tiny_lines)
    yield proj
    proj.close()


def _ids(body: dict[str, Any]) -> list[str]:
    return [i["item_id"] for i in body["items"]]


def test_a_new_item_is_shown_within_twenty_requests(
    http: tuple[TestClient, dict[str, str], dict[str, str]], shop: Project
) -> None:
    client, writer, reader = http
    items = pd.read_parquet(shop.root / ".flywheel/recsys/items.parquet")
    user = int(pd.read_parquet(shop.root / ".flywheel/recsys/users.parquet")["user_id"].iloc[3])
    desc = str(items["description"].iloc[0])
    new = {"item_id": "NEW0001", "description": f"{desc} DELUXE EDITION", "price": 4.5}
    r = client.post("/items", json={"items": [new]}, headers=writer)
    assert r.status_code == 200 and r.json()["accepted"] == 1
    seen_at = None
    for n in range(1, 21):
        body = client.get(f"/recommendations/{user}?k=20", headers=reader).json()
        assert len(body["items"]) == 20
        hit = [i for i in body["items"] if i["item_id"] == "NEW0001"]
        if hit:
            seen_at = n
            assert any(r.startswith("explore:") or r == "content" for r in hit[0]["reasons"])
            break
    assert seen_at is not None, "the new item was not shown in 20 requests"


def test_bad_items_are_422_and_nothing_is_added(
    http: tuple[TestClient, dict[str, str], dict[str, str]], shop: Project
) -> None:
    client, writer, reader = http
    good = {"item_id": "NEW0002", "description": "RED HEART MUG"}
    for bad, field in (
        ({"item_id": "bad id!", "description": "x"}, "item_id"),
        ({"item_id": "NEW0003", "description": ""}, "description"),
        ({"item_id": "NEW0003", "description": "MUG", "price": -1}, "price"),
        ({"item_id": "NEW0003", "description": "MUG", "colour": "red"}, "colour"),
    ):
        r = client.post("/items", json={"items": [good, bad]}, headers=writer)
        assert r.status_code == 422, bad
        assert field in r.json()["error"]
    r = client.post("/items", json={"items": [good]}, headers=reader)
    assert r.status_code == 403
    assert "NEW0002" not in client.app.state.recsys.get().state.item_index


def test_other_processes_follow_the_catalogue(shop: Project) -> None:
    a = OnlineRecommender(shop, SETTINGS, background=False)
    b = OnlineRecommender(shop, SETTINGS, background=False)
    try:
        a.add_items([NewItem("NEW0100", "BLUE SPOTTY TEA CUP", 2.0)])
        assert "NEW0100" in a.state.item_index
        assert "NEW0100" not in b.state.item_index
        assert b.follow_catalog() == 1
        assert "NEW0100" in b.state.item_index
        assert b.state.content_index is not None and "NEW0100" in b.state.content_index
        assert b.follow_catalog() == 0  # acknowledged: not applied twice
    finally:
        a.close()
        b.close()


def test_new_user_gets_trending_in_context_and_exploration(shop: Project) -> None:
    rec = OnlineRecommender(shop, SETTINGS, background=False)
    try:
        new_user = 10**9 + 11
        home = rec.recommend(new_user, 20)
        assert len(home.items) == 20
        cats = pd.read_parquet(shop.root / ".flywheel/recsys/items.parquet")["category"]
        target = str(cats.value_counts().index[1])
        browsing = rec.recommend(new_user, 20, category=target)
        assert [i["item_id"] for i in browsing.items] != [i["item_id"] for i in home.items]
        share_home = sum(i["category"] == target for i in home.items)
        share_ctx = sum(i["category"] == target for i in browsing.items)
        assert share_ctx > share_home
        reasons = {r for i in home.items + browsing.items for r in i["reasons"]}
        assert any(r.startswith("explore:") for r in reasons)
        # After their first events the new user gets session-based candidates.
        viewed = [i["item_id"] for i in browsing.items[:3]]
        rec.record_events([Event(new_user, i, "view") for i in viewed])
        after = rec.recommend(new_user, 20)
        assert any("session" in i["reasons"] or "content" in i["reasons"] for i in after.items)
    finally:
        rec.close()


def test_clicks_on_explored_items_reward_the_bandit(shop: Project) -> None:
    rec = OnlineRecommender(shop, SETTINGS, background=False)
    try:
        users = list(rec.state.user_index)[:30]
        for u in users:
            page = rec.recommend(u, 20)
            explored = [i for i in page.items if i["reasons"][0].startswith("explore:")]
            assert len(explored) <= len(SETTINGS.explore_slots)
            if explored and u % 2 == 0:
                rec.record_events([Event(u, explored[0]["item_id"], "click")])
        assert rec.ledger.flush(now=time.time() + 10**6) > 0
    finally:
        rec.close()
    with Experiments(shop) as exps:
        state = exps.bandit_state(SETTINGS.explore_experiment or "")
        assert state.arms == EXPLORE_ARMS
        assert state.pulls.sum() > 0  # rewards (1s and 0s) were folded into the bandit
        assert 0 < state.reward_sum.sum() < state.pulls.sum()


def test_filters_blocked_not_for_sale_and_already_bought(shop: Project) -> None:
    lines = pd.read_parquet(shop.root / ".flywheel/recsys/purchases.parquet")
    user = int(lines["CustomerID"].value_counts().index[0])
    bought = set(lines.loc[lines["CustomerID"] == user, "StockCode"].astype(str))
    probe = OnlineRecommender(shop, SETTINGS, background=False)
    try:
        first = probe.recommend(user, 20)
    finally:
        probe.close()
    blocked = first.items[0]["item_id"]
    rec = OnlineRecommender(shop, replace(SETTINGS, blocked_items=(blocked,)), background=False)
    try:
        rec.add_items([NewItem("POST", "POSTAGE"), NewItem("gift_0001_10", "GIFT VOUCHER")])
        for _ in range(5):
            page = [i["item_id"] for i in rec.recommend(user, 20).items]
            assert blocked not in page
            assert "POST" not in page and "gift_0001_10" not in page
        assert bought & {i["item_id"] for i in first.items}, "the test needs a repeat item"
        fresh = [i["item_id"] for i in rec.recommend(user, 20, new_only=True).items]
        assert len(fresh) == 20 and not bought & set(fresh)
    finally:
        rec.close()


def test_diversity_spreads_categories(shop: Project) -> None:
    user = next(iter(OnlineRecommender(shop, SETTINGS, background=False).state.user_index))
    n_cats = {}
    for diversity in (0.0, 0.7):
        rec = OnlineRecommender(
            shop,
            replace(SETTINGS, diversity=diversity, explore_experiment=None),
            background=False,
        )
        try:
            n_cats[diversity] = len({i["category"] for i in rec.recommend(user, 20).items})
        finally:
            rec.close()
    assert n_cats[0.7] > n_cats[0.0]


def test_no_two_tower_index_and_no_ranker_are_counted_fallbacks(shop: Project) -> None:
    settings = replace(SETTINGS, two_tower_model="never-trained", ranker_endpoint="never-served")
    plain = OnlineRecommender(shop, replace(SETTINGS, explore_experiment=None), background=False)
    rec = OnlineRecommender(shop, replace(settings, explore_experiment=None), background=False)
    try:
        user = next(iter(rec.state.user_index))
        idx, rnk = fallback_count("index_missing"), fallback_count("ranker_unavailable")
        out = rec.recommend(user, 20)
        assert {"index_missing", "ranker_unavailable"} <= set(out.fallbacks)
        assert (
            fallback_count("index_missing") == idx + 1
            and fallback_count("ranker_unavailable") == rnk + 1
        )
        assert out.model_versions == {}
        # Falling back means the retrieval order: the same page as with no models configured.
        assert [i["item_id"] for i in out.items] == [
            i["item_id"] for i in plain.recommend(user, 20).items
        ]
    finally:
        rec.close()
        plain.close()


def test_cli_recommend_event_and_add_item_against_a_server(shop: Project) -> None:
    import os
    import subprocess
    import sys

    from tests.serving.conftest import running_server

    _, writer = TokenStore(shop.db).create("writer", "cli")
    env = {**os.environ, "FLYWHEEL_TOKEN": writer}

    def cli(*args: str) -> tuple[int, str, str]:
        done = subprocess.run(
            [sys.executable, "-m", "flywheel.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        return done.returncode, " ".join(done.stdout.split()), done.stderr

    with running_server(create_app(shop, systems=["recsys"])) as hostport:
        url = f"http://{hostport}"
        user = str(
            next(iter(pd.read_parquet(shop.root / ".flywheel/recsys/users.parquet")["user_id"]))
        )
        code, out, err = cli("recs", "recommend", user, "--k", "5", "--url", url)
        assert code == 0, err
        assert "strategy" in out and "latency ms" in out
        code, out, err = cli(
            "recs", "add-item", "NEW0200", "--description", "PINK MUG", "--url", url
        )
        assert code == 0 and "added 1 item" in out, err
        code, out, err = cli("recs", "event", user, "NEW0200", "click", "--url", url)
        assert code == 0 and "accepted 1 event" in out, err
        code, out, err = cli("recs", "event", user, "NEW0200", "like", "--url", url)
        assert code == 1
        assert "event_type" in err and len(err.strip().splitlines()) == 1
