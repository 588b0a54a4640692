"""Tracking's HTTP read API (/tracking/...) and CLI (flywheel runs ...)."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.cli._main import main
from flywheel.project import Project
from flywheel.tracking import Tracker


def _two_runs(project: Project) -> tuple[str, str]:
    tracker = Tracker(project)
    with tracker.start_run("exp", params={"lr": 0.1}) as a:
        for step in range(5):
            a.log_metric("train/loss", 1.0 - step / 10, step=step)
        a.log_dict({"ok": True}, "report.json")
    with tracker.start_run("exp", params={"lr": 0.2}) as b:
        b.log_metric("train/loss", 0.4)
    return a.id, b.id


def test_http_read_api(project: Project) -> None:
    a, b = _two_runs(project)
    client = TestClient(create_app(project, systems=["tracking"]))
    assert client.get("/tracking/experiments").json()[0] == {
        "name": "exp",
        "created_at": client.get("/tracking/experiments").json()[0]["created_at"],
        "runs": 2,
    }
    runs = client.get("/tracking/runs", params={"experiment": "exp"}).json()
    assert {r["id"] for r in runs} == {a, b}
    run = client.get(f"/tracking/runs/{a}").json()
    assert run["params"] == {"lr": "0.1"} and run["metrics"]["train/loss"]["count"] == 5
    history = client.get(f"/tracking/runs/{a}/metrics/train/loss").json()
    assert history["steps"] == [0, 1, 2, 3, 4] and history["values"][-1] == pytest.approx(0.6)
    assert client.get(f"/tracking/runs/{a}/artifacts/report.json").json() == {"ok": True}
    ordered = client.get("/tracking/runs", params={"order_by": "train/loss"}).json()
    assert [r["id"] for r in ordered] == [b, a]
    assert client.get("/tracking/runs", params={"status": "running"}).json() == []
    assert client.get("/tracking/runs", params={"status": "paused"}).status_code == 422
    compared = client.get("/tracking/compare", params={"run_ids": [a, b]}).json()
    assert compared["params"]["lr"] == ["0.1", "0.2"]
    assert client.get("/tracking/runs/nope").status_code == 404
    assert client.get(f"/tracking/runs/{a}/artifacts/missing").status_code == 404


def test_cli_list_show_compare(project: Project, capsys: pytest.CaptureFixture[str]) -> None:
    a, b = _two_runs(project)
    config = str(project.root / "flywheel.yaml")
    main(["runs", "list", "--experiment", "exp", "--json", "--config", config])
    assert {r["id"] for r in json.loads(capsys.readouterr().out)} == {a, b}
    main(["runs", "list", "--order-by=-train/loss", "--json", "--config", config])
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [a, b]
    main(["runs", "show", a, "--json", "--config", config])
    assert json.loads(capsys.readouterr().out)["metrics"]["train/loss"]["last"] == 0.6
    main(["runs", "show", a, "--config", config])
    assert "train/loss" in capsys.readouterr().out
    main(["runs", "compare", a, b, "--json", "--config", config])
    assert json.loads(capsys.readouterr().out)["metrics"]["train/loss"][1]["last"] == 0.4
    main(["runs", "compare", a, b, "--config", config])
    assert "param lr" in capsys.readouterr().out
    main(["runs", "metric", a, "train/loss", "--config", config])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "step,value,timestamp" and lines[1].startswith("0,1.0,") and len(lines) == 6
    stamps = [float(line.split(",")[2]) for line in lines[1:]]
    main(
        [
            "runs",
            "metric",
            a,
            "train/loss",
            "--since",
            repr((stamps[2] + stamps[3]) / 2),
            "--config",
            config,
        ]
    )
    assert [ln.split(",")[0] for ln in capsys.readouterr().out.splitlines()[1:]] == ["3", "4"]
    main(["runs", "list", "--experiment", "exp", "--json", "--offset", "1", "--config", config])
    assert [r["id"] for r in json.loads(capsys.readouterr().out)] == [a]  # newest first: b, a
    with pytest.raises(SystemExit) as exc:
        main(["runs", "show", "nope", "--config", config])
    assert exc.value.code == 1 and "does not exist" in capsys.readouterr().err


def test_runs_page_with_limit_offset_and_a_total(project: Project) -> None:
    tracker = Tracker(project)
    ids = []
    for i in range(5):
        with tracker.start_run("paged", params={"i": i}) as run:
            run.log_metric("score", float(i))
        ids.append(run.id)
    with tracker.start_run("other"):
        pass
    client = TestClient(create_app(project, systems=["tracking"]))
    by_score = {"experiment": "paged", "order_by": "-score"}
    first = client.get("/tracking/runs", params={**by_score, "limit": 2})
    second = client.get("/tracking/runs", params={**by_score, "limit": 2, "offset": 2})
    last = client.get("/tracking/runs", params={**by_score, "limit": 2, "offset": 4})
    pages = [[r["id"] for r in page.json()] for page in (first, second, last)]
    assert pages == [ids[4:2:-1], ids[2:0:-1], ids[:1]]  # every run once, in the order asked
    assert {p.headers["X-Total-Count"] for p in (first, second, last)} == {"5"}
    assert client.get("/tracking/runs").headers["X-Total-Count"] == "6"
    beyond = client.get("/tracking/runs", params={"offset": 100})
    assert beyond.json() == [] and beyond.headers["X-Total-Count"] == "6"
    bad = client.get("/tracking/runs", params={"offset": -1})
    assert bad.status_code == 422 and "offset" in bad.json()["error"]
    bad = client.get("/tracking/runs", params={"limit": 0})
    assert bad.status_code == 422 and "limit" in bad.json()["error"]


def test_metric_history_in_a_time_range_from_the_stored_timestamps(project: Project) -> None:
    with Tracker(project).start_run("timed") as run:
        for step, ts in enumerate((1000.0, 2000.0, 3000.0, 4000.0)):
            run.log_metric("loss", 1.0 / (step + 1), step=step, timestamp=ts)
    client = TestClient(create_app(project, systems=["tracking"]))
    url = f"/tracking/runs/{run.id}/metrics/loss"
    ranged = client.get(url, params={"since": 2000, "until": 3000}).json()
    assert ranged["steps"] == [1, 2] and ranged["timestamps"] == [2000.0, 3000.0]
    assert client.get(url, params={"since": 3500}).json()["steps"] == [3]
    assert client.get(url, params={"until": 1500}).json()["steps"] == [0]
    assert client.get(url, params={"since": 2000, "max_points": 2}).json()["steps"] == [1, 3]
    bad = client.get(url, params={"since": 3000, "until": 2000})
    assert bad.status_code == 400 and "until" in bad.json()["error"]
    bad = client.get(url, params={"since": "yesterday"})
    assert bad.status_code == 422 and "since" in bad.json()["error"]
