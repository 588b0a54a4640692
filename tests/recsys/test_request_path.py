"""What a request waits for: never a background rebuild (issue #14).

``apply_pending`` rebuilds co-occurrence under ``OnlineState.update_lock`` once per background
interval; the EASE source once took that lock on every request to look up its fitted model, so
the candidates stage waited for the rebuild (0.5-1.5 s pages in make demo). No durations are
asserted: the request runs while the lock is held, so on the old code it cannot finish at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from flywheel.project import Project
from flywheel.recsys import OnlineRecommender, Recommendation, RecsysSettings, ingest
from tests.conftest import make_project

CONFIG = {
    "content_method": "tfidf",
    "two_tower_model": None,
    "ranker_endpoint": None,
    "deadline_ms": 5000,
    "explore_experiment": None,
}


@pytest.fixture
def shop(tmp_path: Path, tiny_lines: pd.DataFrame) -> Iterator[Project]:
    proj = make_project(tmp_path / "proj", recsys=CONFIG)
    ingest(proj, tiny_lines)
    yield proj
    proj.close()


def test_a_request_does_not_wait_for_a_co_occurrence_rebuild(shop: Project) -> None:
    rec = OnlineRecommender(shop, RecsysSettings(**CONFIG), background=False)  # type: ignore[arg-type]
    try:
        user = next(iter(rec.state.user_index))
        assert rec.state.ease(rec.pipeline.sources["ease"].lam) is not None  # fitted at start
        out: list[Recommendation] = []
        with rec.state.update_lock:  # what apply_pending holds while it rebuilds
            t = threading.Thread(target=lambda: out.append(rec.recommend(user, 10)), daemon=True)
            t.start()
            t.join(60)  # a guard against hanging the suite, not a latency bound
            finished = not t.is_alive()
        t.join()
        assert finished, "the request waited for the co-occurrence rebuild's lock"
        assert len(out[0].items) == 10
        assert any("ease" in item["reasons"] for item in out[0].items)
    finally:
        rec.close()
