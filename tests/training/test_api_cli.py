"""HTTP routes and CLI commands over a real project (no processes started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.cli._main import app as cli
from flywheel.project import Project
from flywheel.training import JobState, JobStore


@pytest.fixture
def client(project: Project) -> TestClient:
    return TestClient(create_app(project, systems=["training"]))


def writer(project: Project) -> dict[str, str]:
    _, token = TokenStore(project.db).create("writer", "t")
    return {"Authorization": f"Bearer {token}"}


SPEC = {"name": "api-job", "entrypoint": "pkg.train:main", "resources": {"procs_per_node": 1}}


def test_submit_list_show_cancel_over_http(project: Project, client: TestClient) -> None:
    assert client.post("/training/jobs", json={"spec": SPEC}).status_code == 401
    r = client.post("/training/jobs", json={"spec": SPEC}, headers=writer(project))
    assert r.status_code == 201, r.text
    job_id = r.json()["id"]
    assert r.json()["state"] == "queued"
    assert [j["id"] for j in client.get("/training/jobs").json()] == [job_id]
    assert client.get("/training/jobs", params={"state": "running"}).json() == []
    bad_state = client.get("/training/jobs", params={"state": "sleeping"})
    assert bad_state.status_code == 400 and "queued, admitted" in bad_state.json()["error"]
    detail = client.get(f"/training/jobs/{job_id}").json()
    assert detail["events"][0]["to"] == "queued" and detail["metrics"] == []
    r = client.post(f"/training/jobs/{job_id}/cancel", headers=writer(project))
    assert r.json()["state"] == "cancelled"
    assert (
        client.post(f"/training/jobs/{job_id}/cancel", headers=writer(project)).status_code == 409
    )
    assert client.get("/training/jobs/nope").status_code == 404
    inv = client.get("/training/inventory").json()
    assert inv["total_cpus"] >= 1 and inv["nodes"][0]["name"] == "local"


def test_jobs_page_with_limit_offset_and_a_total(project: Project, client: TestClient) -> None:
    auth = writer(project)
    ids = [
        client.post(
            "/training/jobs", json={"spec": {**SPEC, "name": f"j{i}"}}, headers=auth
        ).json()["id"]
        for i in range(5)
    ]
    client.post(f"/training/jobs/{ids[0]}/cancel", headers=auth)
    pages = [client.get("/training/jobs", params={"limit": 2, "offset": o}) for o in (0, 2, 4)]
    assert [[j["id"] for j in p.json()] for p in pages] == [ids[4:2:-1], ids[2:0:-1], ids[:1]]
    assert {p.headers["X-Total-Count"] for p in pages} == {"5"}
    queued = client.get("/training/jobs", params={"state": "queued", "limit": 1, "offset": 3})
    assert [j["id"] for j in queued.json()] == [ids[1]] and queued.headers["X-Total-Count"] == "4"
    bad = client.get("/training/jobs", params={"offset": "x"})
    assert bad.status_code == 422 and "offset" in bad.json()["error"]


def test_bad_specs_are_400_naming_the_key(project: Project, client: TestClient) -> None:
    bad = {**SPEC, "resources": {"procs_per_node": 1, "gpu": 2}}
    r = client.post("/training/jobs", json={"spec": bad}, headers=writer(project))
    assert r.status_code == 400
    assert "resources.gpu: unknown key; allowed keys are: nodes" in r.json()["error"]
    huge = {**SPEC, "resources": {"procs_per_node": 256}}
    r = client.post("/training/jobs", json={"spec": huge}, headers=writer(project))
    assert r.status_code == 400 and "can never run" in r.json()["error"]


def test_cli_submit_list_show_logs_cancel(project: Project, tmp_path: Path) -> None:
    cfg = str(project.root / "flywheel.yaml")
    job_file = tmp_path / "job.yaml"
    job_file.write_text(
        "name: cli-job\nentrypoint: train.py\nteam: vision\nhyperparameters: {lr: 0.1}\n"
    )
    runner = CliRunner()
    r = runner.invoke(cli, ["jobs", "submit", str(job_file), "--set", "lr=0.5", "-c", cfg])
    assert r.exit_code == 0, r.output
    (job,) = JobStore(project.db).list()
    assert job.spec.hyperparameters == {"lr": 0.5} and job.team == "vision"
    r = runner.invoke(cli, ["jobs", "list", "--json", "-c", cfg])
    assert f'"id": "{job.id}"' in r.output and '"state": "queued"' in r.output
    assert runner.invoke(cli, ["jobs", "list", "-c", cfg]).exit_code == 0
    r = runner.invoke(cli, ["jobs", "list", "--json", "--offset", "1", "-c", cfg])
    assert r.exit_code == 0 and json.loads(r.output) == []  # one job: page 2 is empty
    r = runner.invoke(cli, ["jobs", "show", job.id, "-c", cfg])
    assert "history:" in r.output and "submitted" in r.output
    r = runner.invoke(cli, ["jobs", "logs", job.id, "-c", cfg])
    assert r.exit_code == 0
    r = runner.invoke(cli, ["jobs", "cancel", job.id, "-c", cfg])
    assert "cancelled" in r.output
    assert JobStore(project.db).get(job.id).state is JobState.CANCELLED
    r = runner.invoke(cli, ["scheduler", "status", "-c", cfg])
    assert "running: 0, queued: 0" in r.output
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nentrypoint: train.py\npriority: urgent\n")
    r = runner.invoke(cli, ["jobs", "submit", str(bad), "-c", cfg])
    assert r.exit_code != 0 and "priority: must be an integer" in str(r.exception)
