from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from flywheel.api import create_app
from flywheel.project import Project
from tests.conftest import make_project


def test_healthz_reports_every_store(project: Project) -> None:
    client = TestClient(create_app(project))
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert set(body["stores"]) == {
        "metadata",
        "artifacts",
        "online_store",
        "event_log",
        "offline_store",
    }
    assert all(s["ok"] for s in body["stores"].values())


def test_healthz_is_503_when_a_store_is_down(tmp_path: object) -> None:
    from pathlib import Path

    proj = make_project(Path(str(tmp_path)) / "p", online_store="redis://127.0.0.1:1/0")
    r = TestClient(create_app(proj)).get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "degraded"
    assert body["stores"]["online_store"]["ok"] is False
    assert body["stores"]["metadata"]["ok"] is True


def test_metrics_are_prometheus_text(project: Project) -> None:
    client = TestClient(create_app(project))
    client.get("/healthz")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    requests = families["flywheel_http_requests"]
    assert any(
        s.labels.get("route") == "/healthz" and s.labels.get("status") == "200"
        for s in requests.samples
    )


def test_docs_and_openapi(project: Project) -> None:
    client = TestClient(create_app(project))
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    assert "/healthz" in spec["paths"]


def test_unknown_route_is_json_404(project: Project) -> None:
    r = TestClient(create_app(project)).get("/no/such/route")
    assert r.status_code == 404
    assert r.json() == {"error": "Not Found"}


def test_body_over_limit_is_413(tmp_path: object) -> None:
    from pathlib import Path

    proj = make_project(Path(str(tmp_path)) / "p", server={"max_body_bytes": 2048})
    client = TestClient(create_app(proj))
    r = client.post("/healthz", content=b"x" * 5000)
    assert r.status_code == 413
    assert "limit is 2048" in r.json()["error"]
