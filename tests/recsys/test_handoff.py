"""Training -> registry -> serving hand-off of both models, as the request path sees it.

The two-tower (2-process DDP) and the LightGBM ranker are trained by real scheduled jobs on a
tiny synthetic shop; the recommender then retrieves with the registered two-tower and ranks
through the ranker served in-process by ``flywheel.serving``. Archiving the ranker's production
version makes the request path fall back to the retrieval order, counted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from prometheus_client import REGISTRY

from flywheel.project import Project
from flywheel.recsys import (
    NewItem,
    OnlineRecommender,
    RankerConfig,
    RecsysSettings,
    TwoTowerConfig,
    ingest,
    ranker_job_spec,
    two_tower_job_spec,
    write_ranker_dataset,
    write_two_tower_dataset,
)
from flywheel.recsys._ingest import build_tables
from flywheel.registry import Registry
from flywheel.training import JobState, NodeCapacity, Scheduler, TrainingService
from tests.conftest import make_project

pytestmark = pytest.mark.integration

TT = TwoTowerConfig(
    text="tfidf", dim=16, hidden=32, id_dim=16, text_proj=16, batch_size=128, epochs=1
)
RANKER = RankerConfig(cutoffs=2, n_estimators=40, early_stopping_rounds=10)


def _run(s: Scheduler, job_id: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not s.store.get(job_id).state.terminal:
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not finish in {timeout} s")
        s.tick()
        time.sleep(0.3)
    job = s.store.get(job_id)
    if job.state is not JobState.SUCCEEDED:
        logs = "\n".join(TrainingService(s.project).logs(job_id).values())
        raise AssertionError(f"{job_id}: {job.state} {job.reason}\n{logs[-3000:]}")


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_lines: pd.DataFrame
) -> Iterator[Project]:
    """A shop with both models trained by the scheduler and registered; the ranker promoted."""
    proj = make_project(
        Path(tmp_path_factory.mktemp("handoff")) / "proj",
        recsys={"content_method": "tfidf", "explore_experiment": None},
    )
    ingest(proj, tiny_lines)
    s = Scheduler(proj, inventory=[NodeCapacity("local", 2)])
    write_two_tower_dataset(proj, tiny_lines, build_tables(tiny_lines)["items"], config=TT)
    _run(s, s.store.submit(two_tower_job_spec(proj, config=TT, procs=2)).id)
    dataset = write_ranker_dataset(proj, config=RANKER)
    _run(s, s.store.submit(ranker_job_spec(proj, dataset=dataset, config=RANKER)).id)
    Registry(proj).set_stage("recs-ranker", 1, "production", reason="hand-off test")
    yield proj
    proj.close()


def _settings() -> RecsysSettings:
    return RecsysSettings(content_method="tfidf", explore_experiment=None, deadline_ms=5_000)


def test_both_models_are_used_and_reported(trained: Project) -> None:
    reg = Registry(trained)
    assert reg.get_version("recs-two-tower", 1).flavor == "pytorch"
    assert reg.get_version("recs-ranker", 1).flavor == "lightgbm"
    tt_version = max(v.version for v in reg.list_versions("recs-two-tower"))
    rec = OnlineRecommender(trained, _settings(), background=False)
    try:
        users = list(rec.state.user_index)[:10]
        pages = [rec.recommend(u, 20, deadline_ms=5_000) for u in users]
        for page in pages:
            assert page.fallbacks == []
            assert page.model_versions == {
                "two_tower": f"recs-two-tower/{tt_version}",
                "ranker": "recs-ranker/1",
            }
            assert len(page.items) == 20
        assert any("two-tower" in i["reasons"] for p in pages for i in p.items)
    finally:
        rec.close()
    # The ranker's predictions went through serving: its metrics carry the version.
    served = REGISTRY.get_sample_value(
        "flywheel_serving_requests_total",
        {"endpoint": "recs-ranker", "model": "recs-ranker", "version": "1", "code": "200"},
    )
    assert served is not None and served >= len(users)


def test_a_new_item_gets_a_two_tower_embedding_at_once(trained: Project) -> None:
    rec = OnlineRecommender(trained, _settings(), background=False)
    try:
        retriever = rec.models.retriever
        assert retriever is not None
        twin = rec.state.item_ids[0]
        desc = rec.state.descriptions[0]
        rec.add_items([NewItem("TT-NEW-1", desc, 3.0)])
        assert "TT-NEW-1" in retriever.index
        history = [twin] * 3
        ids, _ = retriever.search(retriever.embed_users([history]), 50)[0]
        assert "TT-NEW-1" in ids
    finally:
        rec.close()


def test_archived_ranker_falls_back_to_retrieval_order(trained: Project) -> None:
    rec = OnlineRecommender(trained, _settings(), background=False)
    try:
        user = next(iter(rec.state.user_index))
        assert "ranker" in rec.recommend(user, 20, deadline_ms=5_000).model_versions
        Registry(trained).archive("recs-ranker", 1, reason="hand-off test")
        deadline = time.monotonic() + 10
        while True:  # serving notices the stage change within its refresh interval
            page = rec.recommend(user, 20, deadline_ms=5_000)
            if "ranker_unavailable" in page.fallbacks or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert "ranker_unavailable" in page.fallbacks
        assert "ranker" not in page.model_versions
        assert "two_tower" in page.model_versions
    finally:
        rec.close()
