from __future__ import annotations

import pytest
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


# -- auth on every route (issue #17 items 1-3) ---------------------------------------------------

HEALTH_PROBES = {"/healthz", "/v2/health/live", "/v2/health/ready"}


def _fill(path: str) -> str:
    import re

    return re.sub(r"\{(\w+)(:\w+)?\}", lambda m: "1" if m.group(1) == "version" else "x", path)


def _required_app(tmp_path: object, **server: object) -> tuple[TestClient, str]:
    from pathlib import Path

    from flywheel.api import create_server_app
    from flywheel.auth import TokenStore

    proj = make_project(Path(str(tmp_path)) / "p", auth={"required": True}, server=server)
    _, reader = TokenStore(proj.db).create("reader")
    return TestClient(create_server_app(proj)), reader


def test_every_documented_route_needs_a_token_when_auth_is_required(tmp_path: object) -> None:
    """Every operation in the OpenAPI document (V2 inference included, on the fast path that
    ``flywheel up`` serves) answers 401 without a token when ``auth.required``; only the health
    probes stay open."""
    client, reader = _required_app(tmp_path)
    spec = client.get("/openapi.json").json()
    assert "/v2/models/{name}/infer" in spec["paths"]
    checked = 0
    for path, item in spec["paths"].items():
        for method in item:
            url = _fill(path)
            r = client.request(method.upper(), url)
            if path in HEALTH_PROBES:
                assert r.status_code != 401, url
                continue
            assert r.status_code == 401, (method, url, r.status_code, r.text)
            error = r.json()["error"]  # /v1 answers in OpenAI's shape: {"message": ...}
            assert "Bearer" in (error["message"] if isinstance(error, dict) else error)
            checked += 1
    assert checked > 40
    # V2 routes outside the document too: server metadata, with and without a token.
    assert client.get("/v2").status_code == 401
    assert client.get("/v2", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    ok = {"Authorization": f"Bearer {reader}"}
    assert client.post("/v2/models/nope/infer", json={"inputs": []}, headers=ok).status_code != 401
    assert client.get("/v2/models/nope", headers=ok).status_code == 404
    for probe in ("/healthz", "/v2/health/live"):
        assert client.get(probe).status_code == 200


def test_metrics_follow_auth_unless_public(tmp_path: object) -> None:
    from pathlib import Path

    client, reader = _required_app(Path(str(tmp_path)) / "a")
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {reader}"}).status_code == 200
    public, _ = _required_app(Path(str(tmp_path)) / "b", public_metrics=True)
    assert public.get("/metrics").status_code == 200


def test_malformed_authorization_is_401_even_on_open_reads(project: Project) -> None:
    from flywheel.api import create_server_app

    client = TestClient(create_server_app(project))
    # Open on loopback without a header...
    assert client.get("/registry/models").status_code == 200
    assert client.get("/v2/models/nope").status_code == 404
    for header in ("Basic dXNlcjpwdw==", "garbage", "Bearer", "Bearer a b"):
        for method, url in (
            ("GET", "/registry/models"),
            ("GET", "/v2/models/nope"),
            ("POST", "/v2/models/nope/infer"),
            ("GET", "/v2"),
        ):
            r = client.request(method, url, headers={"Authorization": header})
            assert r.status_code == 401, (header, url)
            assert "'Bearer <token>'" in r.json()["error"]
            assert r.headers["www-authenticate"] == "Bearer"


def test_openapi_describes_auth_as_it_behaves(project: Project) -> None:
    spec = TestClient(create_app(project)).get("/openapi.json").json()
    paths = spec["paths"]
    read = paths["/registry/models"]["get"]
    assert {} in read["security"] and "401" in read["responses"]
    write = paths["/serving/endpoints/{name}"]["put"]
    assert write["security"] == [{"bearer": []}]
    assert {"401", "403"} <= set(write["responses"])
    infer = paths["/v2/models/{name}/infer"]["post"]
    assert {"401", "429"} <= set(infer["responses"]) and {} in infer["security"]
    assert "/v2/models/{name}/versions/{version}/infer" in paths
    assert set(spec["components"]["securitySchemes"]) == {"bearer"}


def test_405_lists_every_method_of_the_path(project: Project) -> None:
    r = TestClient(create_app(project)).request("PATCH", "/serving/endpoints/x")
    assert r.status_code == 405
    assert set(r.headers["allow"].split(", ")) == {"GET", "PUT", "DELETE"}


# -- create_app_from_env: the one factory of every `serve` command ---------------------------


def _paths(app: object) -> set[str]:
    from fastapi import FastAPI

    inner = app if isinstance(app, FastAPI) else app.app  # type: ignore[attr-defined]
    return set(inner.openapi()["paths"])


def test_create_app_from_env_mounts_the_systems_asked_for(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flywheel.api import SYSTEMS_ENV_VAR, create_app_from_env
    from flywheel.config import CONFIG_ENV_VAR

    monkeypatch.setenv(CONFIG_ENV_VAR, str(project.config.root / "flywheel.yaml"))
    monkeypatch.setenv(SYSTEMS_ENV_VAR, "features")
    features_only = create_app_from_env()
    paths = _paths(features_only)
    assert "/features/catalog" in paths and "/healthz" in paths
    assert not any(p.startswith(("/v2", "/serving", "/recommendations")) for p in paths)

    serving = create_app_from_env(["serving"])  # an argument wins over the variable
    assert type(serving).__name__ == "InferenceFastPath", "serving gets the V2 fast path"
    assert any(p.startswith("/serving") for p in _paths(serving))
    assert "/features/catalog" not in _paths(serving)

    monkeypatch.delenv(SYSTEMS_ENV_VAR)
    everything = _paths(create_app_from_env())
    assert {"/features/catalog", "/healthz"} <= everything
    assert any(p.startswith("/serving") for p in everything)

    monkeypatch.setenv(SYSTEMS_ENV_VAR, "features,nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        create_app_from_env()


@pytest.mark.integration
def test_every_place_that_opens_a_redis_store_takes_its_url_options(
    tmp_path: object, redis_url: str, redis_prefix: str
) -> None:
    """Issue #17 item 6: `?prefix=` (and redis-py's own options beside it) work for /healthz,
    the online store and the event log alike."""
    from pathlib import Path

    import redis

    from flywheel.events import open_event_log
    from flywheel.features._online import open_online_store

    url = f"{redis_url}?prefix={redis_prefix}&socket_timeout=5"
    proj = make_project(Path(str(tmp_path)) / "p", online_store=url, event_log=url)
    r = TestClient(create_app(proj)).get("/healthz")
    assert r.status_code == 200, r.json()
    assert r.json()["stores"]["online_store"]["ok"] and r.json()["stores"]["event_log"]["ok"]
    log = open_event_log(url)
    online = open_online_store(url)
    try:
        log.append("s", [b"x"])
        online.write("t", [("k", 1, b"[1]")])
    finally:
        log.close()
        online.close()
    raw = redis.Redis.from_url(redis_url)
    keys = {k.decode() for k in raw.scan_iter(match=f"{redis_prefix}*")}
    raw.close()
    assert any(k.startswith(f"{redis_prefix}stream:") for k in keys), keys
    assert any(k.startswith(f"{redis_prefix}t:") for k in keys), keys


def test_every_write_needs_a_token_before_anything_else(project: Project) -> None:
    """Writes answer 401 without a token even from 127.0.0.1 and whatever state the system is
    in (recsys' POST /events answered 404 'nothing ingested' first), and every operation that
    takes input documents the 400 it can answer."""
    from flywheel.api import create_server_app

    client = TestClient(create_server_app(project))
    spec = client.get("/openapi.json").json()
    writes = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if op.get("parameters") or op.get("requestBody"):
                assert "400" in op["responses"], (method, path)
            if op.get("security") != [{"bearer": []}]:
                continue
            r = client.request(method.upper(), _fill(path), json={})
            assert r.status_code == 401, (method, path, r.status_code, r.text)
            writes += 1
    assert writes > 15


def test_trace_duration_filters_beyond_int64_are_a_422(project: Project) -> None:
    r = TestClient(create_app(project)).get("/traces", params={"min_duration_ms": 7.1e13})
    assert r.status_code == 422, r.text
