"""An endpoint's traffic over time, read back from the prediction log (GET .../history)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.project import Project
from flywheel.serving import Endpoint, EndpointStore, Route
from flywheel.serving._history import traffic_history
from flywheel.serving._prediction_log import PredictionLogger, PredictionRecord

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def logged(project: Project) -> Project:
    """v1 answers at 0..59 s (10 ms), v2 at 60..119 s (1..30 ms); batches of 3 rows each."""
    logger = PredictionLogger(project.config.offline_store_path, sample_rate=1.0)
    for i in range(120):
        version, latency = (1, 10.0) if i < 60 else (2, float(1 + (i - 60) % 30))
        x = np.ones((3, 2), dtype=np.float32)
        logger.log(
            PredictionRecord(
                request_id=f"r{i}",
                ts=T0 + timedelta(seconds=i),
                endpoint="shop",
                model="m",
                version=version,
                kind="primary",
                latency_ms=latency,
                inputs={"input": x},
                outputs={"score": x.sum(axis=1)},
            )
        )
    assert logger.flush() == 360
    EndpointStore(project.db).put(
        Endpoint(name="shop", model="m", routes=(Route(1, 100.0),)), kind="update", actor="t"
    )
    return project


def test_requests_and_latency_per_version_in_a_time_range(logged: Project) -> None:
    t0 = T0.timestamp()
    whole = traffic_history(logged, "shop", buckets=2)
    assert whole["versions"]["1"]["requests"][0] == 60  # requests, not batch rows
    assert sum(whole["versions"]["2"]["requests"]) == 60
    ranged = traffic_history(logged, "shop", since=t0 + 30, until=t0 + 89, buckets=2)
    assert ranged["times"] == pytest.approx([t0 + 59.5, t0 + 89])
    assert ranged["versions"]["1"]["requests"] == [30, 0]
    assert ranged["versions"]["2"]["requests"] == [0, 30]
    assert ranged["versions"]["1"]["p99_ms"] == [10.0, None]
    assert ranged["versions"]["2"]["p50_ms"][1] == pytest.approx(15.5)
    assert traffic_history(logged, "shop", since=t0 + 500)["versions"] == {}
    with TestClient(create_app(logged, systems=["serving"])) as client:
        r = client.get(
            "/serving/endpoints/shop/history",
            params={"since": t0 + 30, "until": t0 + 89, "buckets": 2},
        )
        assert r.status_code == 200 and r.json() == ranged
        bad = client.get("/serving/endpoints/shop/history", params={"since": 5, "until": 1})
        assert bad.status_code == 400 and "until" in bad.json()["error"]
        bad = client.get("/serving/endpoints/shop/history", params={"buckets": 0})
        assert bad.status_code == 422 and "buckets" in bad.json()["error"]
        assert client.get("/serving/endpoints/nope/history").status_code == 404


def test_cli_history(logged: Project) -> None:
    import json

    from typer.testing import CliRunner

    from flywheel.cli._serve import app

    t0 = T0.timestamp()
    config = str(logged.config.root / "flywheel.yaml")
    runner = CliRunner()
    args = ["history", "shop", "--since", str(t0 + 30), "--until", str(t0 + 89), "--buckets", "2"]
    out = runner.invoke(app, [*args, "--json", "-c", config])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == traffic_history(
        logged, "shop", since=t0 + 30, until=t0 + 89, buckets=2
    )
    text = runner.invoke(app, [*args, "-c", config]).stdout
    assert "v1:" in text and "30 requests  p99 10.0 ms" in text
    missing = runner.invoke(app, ["history", "nope", "-c", config])
    assert missing.exit_code != 0
