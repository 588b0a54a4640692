"""Prediction logging to Parquet and drift detection (PSI, chi-square, KS) with alerts."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from flywheel.project import Project
from flywheel.serving import EndpointStore, alert, drift_report
from flywheel.serving._drift import (
    OTHER,
    DriftThresholds,
    categorical_histogram,
    feature_drift,
    numeric_histogram,
    parse_window,
    psi,
)
from flywheel.serving._prediction_log import PredictionLogger, PredictionRecord

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


def test_histograms_share_bins_and_count_every_value() -> None:
    rng = np.random.default_rng(2)
    ref, cur = rng.normal(0.0, 1.0, 4000), rng.normal(1.5, 1.0, 1000)
    cur[:3] = [np.inf, np.nan, 50.0]  # non-finite values are left out; outliers go to an end bin
    h = numeric_histogram(ref, cur, bins=10)
    edges = np.asarray(h["edges"])
    assert h["kind"] == "numeric" and edges.size == 11 and np.all(np.diff(edges) > 0)
    assert sum(h["reference"]) == 4000 and sum(h["current"]) == 998
    assert h["current"][-1] >= 1  # 50.0 lands in the last bin
    centers = (edges[:-1] + edges[1:]) / 2
    mean_ref = np.average(centers, weights=h["reference"])
    mean_cur = np.average(centers, weights=h["current"])
    assert mean_cur - mean_ref == pytest.approx(1.5, abs=0.25)  # the shift shows in the bins
    flat = numeric_histogram(np.full(50, 3.0), np.full(40, 3.0))
    assert flat["edges"] == [2.5, 3.5] and flat["reference"] == [50] and flat["current"] == [40]

    cats = categorical_histogram(
        np.array(["b", "a", "a", "c"]), np.array(["a", "d", "d", "d"]), top=3
    )
    # The three most frequent of both samples (ties by name), the rest as "(other)".
    assert cats == {
        "kind": "categorical",
        "categories": ["a", "b", "d", OTHER],
        "reference": [2, 1, 0, 1],
        "current": [1, 0, 3, 0],
    }


def test_drift_report_and_http_api_carry_histograms(logged: Project) -> None:
    from fastapi.testclient import TestClient

    from flywheel.api import create_app

    report = drift_report(logged, "shifted", window="1h").to_dict()
    by_name = {f["feature"]: f for f in report["features"]}
    country = by_name["country"]["histogram"]
    assert country["categories"] == ["de", "fr", "uk", "us"]
    assert sum(country["reference"]) == 600 and sum(country["current"]) == 600
    us = country["categories"].index("us")
    assert country["current"][us] > 2 * country["reference"][us]  # p(us) 0.25 -> 0.7
    numeric = by_name["input_0"]["histogram"]
    assert len(numeric["edges"]) == len(numeric["reference"]) + 1 == len(numeric["current"]) + 1
    assert sum(numeric["reference"]) == 600 and sum(numeric["current"]) == 600
    with TestClient(create_app(logged, systems=["serving"])) as client:
        r = client.get("/serving/endpoints/shifted/drift", params={"window": "1h"})
    assert r.status_code == 200
    served = {f["feature"]: f["histogram"] for f in r.json()["features"]}
    assert served["country"] == country and served["input_0"] == numeric
    assert set(served) == set(by_name)


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


# -- like with like (issue #17 item 8) -----------------------------------------------------------


def test_missing_values_are_a_bin_of_their_own() -> None:
    rng = np.random.default_rng(3)

    def sample(n: int, p_missing: float) -> np.ndarray:
        x = rng.normal(size=n)
        x[rng.random(n) < p_missing] = np.nan
        return x

    t = DriftThresholds()
    same = feature_drift("x", sample(4000, 0.7), sample(4000, 0.7), t)
    assert not same.drifted and same.psi is not None and same.psi < 0.05
    # Only the share of missing values moved: dropping NaN on both sides would hide it.
    moved = feature_drift("x", sample(4000, 0.7), sample(4000, 0.1), t)
    assert moved.drifted and moved.psi is not None and moved.psi > 1.0
    assert moved.histogram is not None and moved.histogram["missing"][0] > 2000


def _ranker_rows(rng: np.random.Generator, n: int) -> Any:
    """Raw ranker inputs as a ranker dataset holds them: NaN where an input is missing (67-75%
    for the generator columns, as in the demo)."""
    import pandas as pd

    from flywheel.recsys import RANKER_FEATURES

    cols: dict[str, np.ndarray] = {}
    for j, name in enumerate(RANKER_FEATURES):
        x = rng.gamma(2.0, 1.0 + j % 5, size=n)
        missing = 0.67 + 0.08 * ((j * 7) % 10) / 10 if j % 3 == 0 else 0.05
        x[rng.random(n) < missing] = np.nan
        cols[name] = x
    return pd.DataFrame(cols)


def test_no_drift_when_training_and_live_share_a_distribution_through_the_ranker(
    fast_project: Project,
) -> None:
    """The recommender's ranker path (``flywheel.recsys``: ``ranker_matrix`` fills missing
    inputs, ``RankerClient`` scores through serving, which logs the filled matrix) against the
    training dataset the registry recorded: same distribution, so no drift. Compared raw (the
    old reference), the same data raised a false alarm on most features."""
    from sklearn.linear_model import LinearRegression

    from flywheel.recsys import (
        RANKER_FEATURES,
        RankerClient,
        ranker_matrix,
        ranker_missing_values,
    )
    from flywheel.registry import Registry
    from flywheel.serving import server_for
    from flywheel.serving._drift import compare

    project = fast_project
    name = "ranker"
    rng = np.random.default_rng(11)
    derived = ("price_ratio", "buyers_7d_30d")  # computed by ranker_matrix, not stored
    train = _ranker_rows(rng, 3000).drop(columns=list(derived))
    path = project.root / "ranker-train.parquet"
    train.to_parquet(path)
    x_train = ranker_matrix(train)
    model = LinearRegression().fit(x_train, x_train[:, :3].sum(axis=1))
    registry = Registry(project)
    mv = registry.register_model(
        name,
        model,
        flavor="sklearn",
        signature={
            "inputs": [
                {"name": "features", "datatype": "FP32", "shape": [-1, len(RANKER_FEATURES)]}
            ],
            "outputs": [{"name": "variable", "datatype": "FP32", "shape": [-1, 1]}],
        },
        input_example={"features": x_train[:4]},
        config={
            "feature_names": list(RANKER_FEATURES),
            "missing_values": ranker_missing_values(),
            "training_dataset_files": [str(path)],
        },
        export_onnx=False,
    )
    registry.set_stage(name, mv.version, "production")
    live = _ranker_rows(rng, 600).drop(columns=list(derived))
    client = RankerClient(project, endpoint=name)
    try:
        for user, start in enumerate(range(0, 600, 30)):
            scores, served = client.score(
                ranker_matrix(live.iloc[start : start + 30]), user_id=user, timeout_s=30
            )
            assert len(scores) == 30 and served == f"{name}/{mv.version}"
        deadline = time.monotonic() + 20
        while True:
            report = drift_report(project, name, window="1h", now=datetime.now(UTC))
            if report.current_rows >= 600 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        server_for(project).stop_blocking()
    assert report.current_rows == 600
    assert report.reference.startswith("training dataset") and report.reference_rows == 3000
    assert report.verdict == "no_drift", report.drifted
    assert len(report.features) >= len(RANKER_FEATURES) - len(derived)
    # The old comparison (raw reference with NaN dropped vs the filled live matrix): false alarm.
    import pandas as pd

    from flywheel.serving._drift import _read_logged

    logged = _read_logged(
        project.config.offline_store_path / "serving_predictions", name, None, None
    )
    raw = [f for f in compare(train, logged, DriftThresholds()) if f.drifted]
    assert len(raw) > len(RANKER_FEATURES) // 4, len(raw)
    assert isinstance(logged, pd.DataFrame)


def test_reports_are_cached_per_window_until_a_log_file_is_written(
    logged: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dashboard polls every 15 s: a second report reads nothing again; a new prediction-log
    file makes the next one fresh."""
    from flywheel.serving import _drift

    reads: list[str] = []
    real = _drift._read_logged

    def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(_drift, "_read_logged", counting)
    first = drift_report(logged, "steady", window="1h")
    assert drift_report(logged, "steady", window="1h") is first
    n = len(reads)
    assert n >= 1
    rng = np.random.default_rng(5)
    logger = PredictionLogger(logged.config.offline_store_path, sample_rate=1.0)
    _log(logger, "steady", rng, shift=0.0, p_country=[0.25] * 4, at=datetime.now(UTC), requests=3)
    logger.flush()
    again = drift_report(logged, "steady", window="1h")
    assert len(reads) > n and again.current_rows > first.current_rows


def test_two_projects_in_one_process_share_no_cache_entries(
    logged: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache is the project's own: a second Project over the same folders (the case a
    module-level cache would answer from the first one's entries) reads the logs itself."""
    from flywheel.serving import _drift

    reads: list[str] = []
    real = _drift._read_logged

    def counting(*args: Any, **kwargs: Any) -> Any:
        reads.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(_drift, "_read_logged", counting)
    other = Project(logged.config)
    try:
        first = drift_report(logged, "steady", window="1h")
        assert drift_report(logged, "steady", window="1h") is first
        n = len(reads)
        second = drift_report(other, "steady", window="1h")
        assert second is not first and len(reads) > n  # a shared cache would answer `first`
        same = ("current_rows", "reference_rows", "features")  # the label carries the time
        assert {k: second.to_dict()[k] for k in same} == {k: first.to_dict()[k] for k in same}
        assert drift_report(other, "steady", window="1h") is second  # and other caches its own
        assert _drift.drift_cache(other) is not _drift.drift_cache(logged)
        assert len(_drift.drift_cache(logged)) == len(_drift.drift_cache(other)) == 1
    finally:
        other.close()
