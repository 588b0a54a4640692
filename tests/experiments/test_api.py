"""The HTTP routes under /experiments, through the real app (auth included)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.project import Project
from tests.experiments.conftest import AB_SPEC


@pytest.fixture
def http(project: Project) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    _, writer = TokenStore(project.db).create("writer", "w")
    _, reader = TokenStore(project.db).create("reader", "r")
    with TestClient(create_app(project, systems=["experiments"])) as client:
        yield client, {"Authorization": f"Bearer {writer}"}, {"Authorization": f"Bearer {reader}"}


def test_define_assign_report_stop_over_http(
    http: tuple[TestClient, dict[str, str], dict[str, str]],
) -> None:
    client, writer, reader = http
    r = client.post("/experiments", json=AB_SPEC, headers=reader)
    assert r.status_code == 403
    r = client.post("/experiments", json=AB_SPEC, headers=writer)
    assert r.status_code == 201, r.text
    assert client.post("/experiments", json=AB_SPEC, headers=writer).status_code == 409
    assert [e["name"] for e in client.get("/experiments", headers=reader).json()] == ["checkout"]
    variants = set()
    for i in range(40):
        r = client.post("/experiments/checkout/assign", json={"unit_id": f"u{i}"}, headers=writer)
        assert r.status_code == 200
        body = r.json()
        assert body["propensity"] == 0.5 and body["in_experiment"]
        variants.add(body["variant"])
    assert variants == {"control", "green"}
    events = [{"unit_id": f"u{i}", "event_type": "purchase", "ts": 4e9} for i in range(10)]
    r = client.post("/experiments/events", json={"events": events}, headers=writer)
    assert r.json() == {"received": 10, "inserted": 10}
    report = client.get("/experiments/checkout/report", headers=reader).json()
    assert report["units"] == 40 and report["metrics"][0]["name"] == "conversion"
    r = client.post(
        "/experiments/checkout/traffic", json={"weights": {"green": 150}}, headers=writer
    )
    assert r.status_code == 200 and r.json()["moved_share"] == pytest.approx(0.25)
    r = client.post("/experiments/checkout/stop", json={"winner": "green"}, headers=writer)
    assert r.json()["status"] == "stopped"
    assert client.post("/experiments/checkout/stop", headers=writer).status_code == 409


def test_bandit_over_http(http: tuple[TestClient, dict[str, str], dict[str, str]]) -> None:
    client, writer, reader = http
    spec = {"name": "ranker", "bandit": {"policy": "ucb1", "arms": ["a", "b"]}}
    assert client.post("/experiments", json=spec, headers=writer).status_code == 201
    decisions = [
        client.post("/experiments/ranker/assign", json={"unit_id": f"u{i}"}, headers=writer).json()
        for i in range(10)
    ]
    rewards = [
        {
            "unit_id": d["unit_id"],
            "decision_id": d["decision_id"],
            "reward": 1.0 if d["variant"] == "b" else 0.0,
        }
        for d in decisions
    ]
    r = client.post("/experiments/ranker/rewards", json={"rewards": rewards}, headers=writer)
    assert r.json()["inserted"] == 10
    state = client.get("/experiments/ranker/bandit", headers=reader).json()
    assert sum(state["state"]["pulls"]) == 10
    assert state["probabilities"]["b"] > state["probabilities"]["a"]
    r = client.post("/experiments/ranker/evaluate", json={"target": "arm:b"}, headers=reader)
    assert r.status_code == 200 and r.json()["decisions"] == 10


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("post", "/experiments", {"name": "x", "variants": ["a"]}, 400),
        ("post", "/experiments", {"name": "bad name!"}, 400),
        ("get", "/experiments/nope", None, 404),
        ("get", "/experiments/nope/report", None, 404),
        ("post", "/experiments/nope/assign", {"unit_id": "u"}, 404),
        (
            "post",
            "/experiments/events",
            {"events": [{"unit_id": "u", "event_type": "x", "value": 1e300}]},
            400,
        ),
        ("get", "/experiments?status=weird", None, 400),
    ],
)
def test_bad_requests_are_4xx_with_an_error_message(
    http: tuple[TestClient, dict[str, str], dict[str, str]],
    method: str,
    path: str,
    body: object,
    status: int,
) -> None:
    client, writer, _ = http
    r = getattr(client, method)(path, headers=writer, **({"json": body} if body else {}))
    assert r.status_code == status
    assert "error" in r.json()


def test_flywheel_up_consumes_configured_streams_and_updates_bandits(tmp_path: object) -> None:
    import json
    import time
    from pathlib import Path

    from flywheel.events import open_event_log
    from flywheel.experiments import Experiments
    from tests.conftest import make_project

    project = make_project(Path(str(tmp_path)) / "p", experiments={"event_streams": ["clicks"]})
    ex = Experiments(project)
    ex.create({"name": "bandit", "bandit": {"policy": "thompson", "arms": ["a", "b"]}})
    decision = ex.assign("bandit", "u1")
    ex.close()
    log = open_event_log(project.config.event_log_url, namespace=project.config.project)
    event = {
        "user_id": "u1",
        "event_type": "reward",
        "value": 1.0,
        "experiment": "bandit",
        "decision_id": decision.decision_id,
    }
    log.append("clicks", [json.dumps(event).encode()])
    with TestClient(create_app(project, systems=["experiments"])):
        deadline = time.time() + 10
        while time.time() < deadline and log.lag("clicks", "flywheel-experiments"):
            time.sleep(0.1)
        time.sleep(0.2)
    log.close()
    with Experiments(project) as check:
        assert check.bandit_state("bandit").pulls.sum() == 1
    project.close()
