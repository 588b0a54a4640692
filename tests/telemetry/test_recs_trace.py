"""A recommendation request produces one trace with a span per stage."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.recsys import clean_transactions, generate_transactions, ingest
from flywheel.telemetry import TraceQuery, TraceStore, TracingSettings, configure_tracing
from tests.conftest import make_project
from tests.recsys.conftest import TINY_SHOP

# The rule-based path (no learned models, no exploration, TF-IDF text): fast and deterministic.
RECSYS = {
    "content_method": "tfidf",
    "two_tower_model": None,
    "ranker_endpoint": None,
    "explore_experiment": None,
    "deadline_ms": 5000,
}


def test_a_recommendation_request_is_one_trace_with_a_span_per_stage(tmp_path: Path) -> None:
    project = make_project(tmp_path / "shop", recsys=RECSYS)
    ingest(project, clean_transactions(generate_transactions(TINY_SHOP)))
    reader = TokenStore(project.db).create("reader", "r")[1]
    user = int(pd.read_parquet(project.root / ".flywheel/recsys/users.parquet")["user_id"].iloc[2])
    with TestClient(create_app(project, systems=["recsys"])) as client:
        tracing = configure_tracing(
            TracingSettings(sample_rate=1.0, synchronous=True, service_name="recs"), project.db
        )
        r = client.get(
            f"/recommendations/{user}?k=10", headers={"Authorization": f"Bearer {reader}"}
        )
        assert tracing is not None
        tracing.shutdown()
    assert r.status_code == 200, r.text
    body = r.json()
    store = TraceStore(project.db)
    (summary,) = store.search(TraceQuery(service="recs"))
    assert summary.root_name == "recs.request"
    _s, spans = store.get_trace(summary.trace_id)
    (root,) = [s for s in spans if s.parent_span_id is None]
    assert root.kind == 2  # SERVER
    stages = [s for s in spans if s.parent_span_id == root.span_id]
    names = [s.name for s in stages]
    # One span per stage (the names recsys published), in request order, inside the root.
    assert names == [
        "recs.experiment",
        "recs.features",
        "recs.candidates",
        "recs.blend",
        "recs.rank",
        "recs.rerank",
    ]
    assert body["items"]
    starts = [s.start_ns for s in stages]
    assert starts == sorted(starts)
    assert all(root.start_ns <= s.start_ns and s.end_ns <= root.end_ns for s in stages)
    # Candidate generation has one child span per source, named by flywheel.source.
    (candidates,) = [s for s in stages if s.name == "recs.candidates"]
    sources = [s for s in spans if s.parent_span_id == candidates.span_id]
    assert sources and all(s.name == "recs.source" for s in sources)
    assert all(s.attributes.get("flywheel.source") for s in sources)
    project.close()
