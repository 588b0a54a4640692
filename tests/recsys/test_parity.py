"""Parity: what the offline evaluator measures is what ``GET /recommendations`` serves.

On a seeded synthetic shop, at two sampled request times (cut-offs), the evaluator
(``evaluate_served``: its own scratch project ingested as of the cut-off, the blend tuned and
registered there - the learned blend of a view when it wins on validation -, every test user
replayed through the served ``Pipeline``) and a separately deployed app (ingest as of the same
time, the same ``train_pipeline``, the HTTP route) must return the same top-k for sampled
users, in both views.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.recsys import build_split, ingest, train_pipeline
from flywheel.recsys._replay import evaluate_served, replay_settings
from tests.conftest import make_project

# The served settings of the replay (no exploration, no two-tower or ranker registered).
CONFIG = {
    "content_method": "tfidf",
    "two_tower_model": None,
    "ranker_endpoint": None,
    "explore_experiment": None,
    "deadline_ms": 10_000,
}
TIMES = ("2011-10-17", "2011-11-21")
K = 20


@pytest.mark.parametrize("at", TIMES)
def test_evaluator_top_k_equals_the_served_page(
    tmp_path: Path, tiny_lines: pd.DataFrame, at: str
) -> None:
    end = pd.Timestamp(at) + pd.DateOffset(months=1)
    split = build_split(tiny_lines, at, end)
    measured = evaluate_served(tiny_lines, split, settings=replay_settings(), keep_pages=True)
    users = [int(u) for u in split.train.users[split.test_users]]
    sampled = [users[i] for i in np.random.default_rng(0).choice(len(users), 12, replace=False)]

    project = make_project(tmp_path / "proj", recsys=CONFIG)
    try:
        ingest(project, tiny_lines.loc[tiny_lines["InvoiceDate"] < pd.Timestamp(at)])
        served_params = train_pipeline(project, replay_settings())
        # The same procedure on the same data chose the same blend for both.
        assert measured.params["weights"] == {
            v: {n: w for n, w in ws.items() if w > 0} for v, ws in served_params.weights.items()
        }
        assert measured.params["learned"] == sorted(served_params.rankers)
        print(f"{at}: learned blend in {measured.params['learned']}")
        assert measured.params["diversity"] == served_params.diversity
        _, token = TokenStore(project.db).create("reader", "r")
        headers = {"Authorization": f"Bearer {token}"}
        with TestClient(create_app(project, systems=["recsys"])) as client:
            for view, flag in (("all", "false"), ("new-only", "true")):
                for user in sampled:
                    body = client.get(
                        f"/recommendations/{user}?k={K}&new_only={flag}", headers=headers
                    ).json()
                    got = [i["item_id"] for i in body["items"]]
                    assert body["model_versions"].get("pipeline") == "recs-pipeline/1"
                    assert body["fallbacks"] == []
                    assert got == measured.pages[view][user], f"{view} page of user {user} at {at}"
    finally:
        project.close()
    # Not a trivial equality: the pages differ between users and between the views.
    pages = measured.pages["all"]
    assert len({tuple(pages[u]) for u in sampled}) > len(sampled) // 2
    assert any(pages[u] != measured.pages["new-only"][u] for u in sampled)
    assert measured.metrics["all"].ndcg > 0
