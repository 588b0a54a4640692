"""Fixtures: an ``Experiments`` client on SQLite and on the real Postgres."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flywheel.experiments import Experiments
from flywheel.project import Project


@pytest.fixture
def experiments(project: Project) -> Iterator[Experiments]:
    client = Experiments(project, refresh_seconds=0.2)
    yield client
    client.close()


@pytest.fixture
def any_experiments(any_project: Project) -> Iterator[Experiments]:
    client = Experiments(any_project, refresh_seconds=0.2)
    yield client
    client.close()


AB_SPEC: dict[str, object] = {
    "name": "checkout",
    "unit": "user_id",
    "variants": [{"name": "control", "weight": 50}, {"name": "green", "weight": 50}],
    "metrics": [
        {"name": "conversion", "kind": "proportion", "event": "purchase"},
        {"name": "ctr", "kind": "ratio", "event": "click", "denominator": "impression"},
    ],
    "guardrails": [
        {"name": "latency", "kind": "mean", "event": "latency_ms", "direction": "decrease"}
    ],
}


@pytest.fixture(params=["sqlite", "redis"])
def event_log_url(request: pytest.FixtureRequest, tmp_path: object) -> str:
    """An event log on embedded SQLite, then on the real Redis (own key prefix)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/events.db"
    request.applymarker(pytest.mark.integration)
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    return f"{url}?prefix={prefix}"
