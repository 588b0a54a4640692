"""What a request waits for: never a background rebuild, and the ranker it has time for
(issue #14).

``apply_pending`` rebuilds co-occurrence under ``OnlineState.update_lock`` once per background
interval; the EASE source once took that lock on every request to look up its fitted model, so
the candidates stage waited for the rebuild (0.5-1.5 s pages in make demo). No durations are
asserted: the request runs while the lock is held, so on the old code it cannot finish at all.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.project import Project
from flywheel.recsys import (
    RANKER_FEATURES,
    OnlineRecommender,
    Recommendation,
    RecsysSettings,
    ingest,
)
from tests.conftest import make_project
from tests.serving.conftest import FakeModel, FakeSource, Sig, Spec

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


RANKER_SIG = Sig(
    inputs=(Spec("features", "FP32", (-1, len(RANKER_FEATURES))),),
    outputs=(Spec("scores", "FP32", (-1,)),),
)
RANKER_DELAY_S = 0.4  # the served ranker's compute per call (at least)


def _reverse(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    rows = len(inputs["features"])
    return {"scores": np.arange(rows, 0, -1, dtype=np.float32)}


def test_the_ranker_call_with_time_for_its_batch_is_served(shop: Project) -> None:
    """An idle server, a ranker whose call takes RANKER_DELAY_S, and a ranker budget (1.4 s)
    several times that: every page is ranked. Admission once counted a call of more than 96
    rows as at least 4 batches of 32 (4 x 0.4 s > 1.4 s) and shed it: the page fell back to
    the blend (in make demo, ~200 rows: 7 batches)."""
    from flywheel.serving import server_for

    source = FakeSource()
    model = source.add(
        "recs-ranker", 1, FakeModel(_reverse, delay=RANKER_DELAY_S), signature=RANKER_SIG
    )
    source.set_stage("recs-ranker", 1, "production")
    server = server_for(shop, source)
    settings = RecsysSettings(**{**CONFIG, "ranker_endpoint": "recs-ranker"})  # type: ignore[arg-type]
    rec = OnlineRecommender(shop, settings, background=False)
    try:
        users = list(rec.state.user_index)[:3]
        rec.warm_up()  # loads the ranker and measures its batch time (>= RANKER_DELAY_S)
        model.batch_sizes.clear()
        for user in users:
            out = rec.recommend(user, 10, deadline_ms=4000)  # the ranker's share: 1.4 s
            assert out.fallbacks == [], out.fallbacks
            assert out.model_versions["ranker"] == "recs-ranker/1"
        # Each call was one batch, of more than 3 x max_batch_size rows (what the old estimate
        # counted as 4 batches or more).
        assert len(model.batch_sizes) == len(users)
        assert min(model.batch_sizes) > 3 * shop.config.serving.max_batch_size
    finally:
        rec.close()
        server.stop_blocking()
