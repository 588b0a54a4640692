"""Prediction logging to Parquet and drift detection (PSI, chi-square, KS) with alerts."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from flywheel.project import Project
from flywheel.serving import EndpointStore, PredictionLogger, alert, drift_report, psi
from flywheel.serving._drift import DriftThresholds, feature_drift, parse_window
from flywheel.serving._prediction_log import PredictionRecord

COUNTRIES = np.array([b"de", b"fr", b"us", b"uk"], dtype=object)


def _log(
    logger: PredictionLogger,
    endpoint: str,
    rng: np.random.Generator,
    *,
    shift: float,
    p_country: list[float],
    at: datetime,
    requests: int = 60,
) -> None:
    for i in range(requests):
        x = rng.normal(shift, 1.0, size=(10, 3)).astype(np.float32)
        country = rng.choice(COUNTRIES, size=10, p=p_country)
        logger.log(
            PredictionRecord(
                request_id=f"r{i}",
                ts=at + timedelta(seconds=i),
                endpoint=endpoint,
                model="m",
                version=1,
                kind="primary",
                latency_ms=1.0,
                inputs={"input": x, "country": country},
                outputs={"score": x.sum(axis=1)},
                feature_names=None,
            )
        )


@pytest.fixture
def logged(project: Project) -> Project:
    rng = np.random.default_rng(0)
    logger = PredictionLogger(project.config.offline_store_path, sample_rate=1.0)
    now = datetime.now(UTC)
    uniform = [0.25, 0.25, 0.25, 0.25]
    for endpoint in ("steady", "shifted"):
        _log(logger, endpoint, rng, shift=0.0, p_country=uniform, at=now - timedelta(hours=3))
    _log(logger, "steady", rng, shift=0.0, p_country=uniform, at=now - timedelta(minutes=30))
    _log(
        logger,
        "shifted",
        rng,
        shift=0.6,
        p_country=[0.1, 0.1, 0.7, 0.1],
        at=now - timedelta(minutes=30),
    )
    assert logger.flush() == 4 * 60 * 10
    return project


def test_psi_and_feature_rules() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=5000), rng.normal(size=5000)
    assert psi(a, b) < 0.02
    assert psi(a, b + 1.0) > 0.2
    t = DriftThresholds()
    assert not feature_drift("x", a, b, t).drifted
    assert feature_drift("x", a, b + 0.5, t).drifted
    cats = rng.choice(["a", "b"], size=3000)
    assert not feature_drift("c", cats, rng.choice(["a", "b"], size=3000), t).drifted
    moved = feature_drift("c", cats, rng.choice(["a", "b"], size=3000, p=[0.8, 0.2]), t)
    assert moved.drifted and moved.kind == "categorical" and moved.chi2_statistic
    assert parse_window("90m") == timedelta(minutes=90)


def test_prediction_log_parquet_layout(logged: Project) -> None:
    import pandas as pd

    folder = logged.config.offline_store_path / "serving_predictions" / "endpoint=steady"
    frame = pd.concat(pd.read_parquet(f) for f in sorted(folder.glob("*.parquet")))
    assert len(frame) == 2 * 60 * 10
    assert {"request_id", "ts", "version", "latency_ms", "input_0", "input_2", "country"} <= set(
        frame
    )
    assert set(frame["country"]) == {"de", "fr", "us", "uk"}
    assert "pred_score" in frame
    assert not list(folder.glob(".*.tmp"))


def test_drift_detected_on_shifted_data_only(logged: Project) -> None:
    steady = drift_report(logged, "steady", window="1h")
    assert steady.current_rows == 600 and steady.reference_rows == 600
    assert "before" in steady.reference
    assert steady.verdict == "no_drift", steady.to_dict()
    shifted = drift_report(logged, "shifted", window="1h")
    assert shifted.verdict == "drift"
    assert {"input_0", "input_1", "input_2", "country", "pred_score"} <= set(shifted.drifted)
    country = next(f for f in shifted.features if f.feature == "country")
    assert country.kind == "categorical"
    assert drift_report(logged, "nobody", window="1h").verdict == "insufficient_data"


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers["Content-Length"])
            received.append(json.loads(self.rfile.read(length)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()


def test_alert_logs_event_and_calls_webhook(
    logged: Project, webhook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, received = webhook
    serving = logged.config.serving.model_copy(update={"drift_webhook": url})
    logged.config = logged.config.model_copy(update={"serving": serving})
    assert not alert(logged, drift_report(logged, "steady", window="1h"))
    assert alert(logged, drift_report(logged, "shifted", window="1h"))
    assert len(received) == 1 and received[0]["event"] == "flywheel.drift"
    assert received[0]["endpoint"] == "shifted" and "country" in received[0]["drifted_features"]
    events = EndpointStore(logged.db).events("shifted")
    assert [e.kind for e in events] == ["drift_alert"]


def test_cli_drift_report(logged: Project) -> None:
    from flywheel.cli._serve import app

    config = str(logged.config.root / "flywheel.yaml")
    result = CliRunner().invoke(
        app, ["drift", "shifted", "--window", "1h", "--json", "--no-notify", "-c", config]
    )
    assert result.exit_code == 0, result.output
    report = orjson.loads(result.output)
    assert report["verdict"] == "drift" and report["current_rows"] == 600
    text = CliRunner().invoke(app, ["drift", "steady", "-c", config, "--no-notify"])
    assert text.exit_code == 0 and "no_drift" in text.output
