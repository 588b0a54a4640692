"""A golden test: ``recommend()`` on the seeded tiny shop, pinned (items, reasons, fallbacks).

A refactor that changes what users get fails here and shows the difference. When the change
is intended, regenerate with ``FLYWHEEL_UPDATE_GOLDEN=1`` and commit the new file with a
message saying why the pages changed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from flywheel.project import Project
from flywheel.recsys import (
    OnlineRecommender,
    RecsysSettings,
    clean_transactions,
    ingest,
    train_pipeline,
)
from tests.conftest import make_project

GOLDEN = Path(__file__).parent / "golden" / "recommend.json"
# The rule-based path: no learned models (they are trained elsewhere), no exploration (a
# bandit's random draw), TF-IDF text (deterministic), a deadline no loaded machine reaches.
CONFIG = {
    "content_method": "tfidf",
    "two_tower_model": None,
    "ranker_endpoint": None,
    "explore_experiment": None,
    "deadline_ms": 10_000,
}
REQUESTS: list[dict[str, Any]] = [
    {"k": 10},
    {"k": 10, "new_only": True},
    {"k": 8, "surface": "product", "item": 0},
    {"k": 8, "category": "first"},
]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory, tiny_raw: pd.DataFrame) -> Iterator[Project]:
    proj = make_project(Path(tmp_path_factory.mktemp("golden")) / "proj", recsys=CONFIG)
    ingest(proj, clean_transactions(tiny_raw))
    # The served blend: weights tuned on the shop's last month and registered (recs-pipeline).
    train_pipeline(proj, RecsysSettings(**CONFIG))  # type: ignore[arg-type]
    yield proj
    proj.close()


def _pages(shop: Project) -> list[dict[str, Any]]:
    users = pd.read_parquet(shop.root / ".flywheel/recsys/users.parquet")["user_id"]
    items = pd.read_parquet(shop.root / ".flywheel/recsys/items.parquet")
    sampled = [int(u) for u in users.iloc[[0, 7, 42, 99]]] + [10**9]  # the last one is new
    rec = OnlineRecommender(shop, RecsysSettings(**CONFIG), background=False)  # type: ignore[arg-type]
    out = []
    try:
        for user in sampled:
            for req in REQUESTS:
                kwargs: dict[str, Any] = {
                    k: v for k, v in req.items() if k in ("k", "surface", "new_only")
                }
                if "item" in req:
                    kwargs["item_id"] = str(items["item_id"].iloc[req["item"]])
                if "category" in req:
                    kwargs["category"] = str(items["category"].iloc[0])
                r = rec.recommend(user, **kwargs)
                out.append(
                    {
                        "user": user,
                        "request": {k: v for k, v in kwargs.items() if k != "k"} | {"k": req["k"]},
                        "items": [i["item_id"] for i in r.items],
                        "reasons": [i["reasons"] for i in r.items],
                        "fallbacks": r.fallbacks,
                        "strategy": r.strategy,
                        "model_versions": r.model_versions,
                    }
                )
    finally:
        rec.close()
    return out


def test_recommend_output_is_pinned(shop: Project) -> None:
    got = _pages(shop)
    if os.environ.get("FLYWHEEL_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(got, indent=1) + "\n", encoding="utf-8")
    want = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g == w, f"user {w['user']} {w['request']}: the page changed"
