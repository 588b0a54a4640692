"""The registry's HTTP API (/registry/...) and CLI (flywheel models ...)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sklearn.linear_model import LogisticRegression

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.cli._main import main
from flywheel.project import Project
from flywheel.registry import Registry


@pytest.fixture
def two_versions(project: Project) -> Registry:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    registry = Registry(project)
    for _ in range(2):
        registry.register_model(
            "m", model, flavor="sklearn", input_example=x[:3], export_onnx=False
        )
    return registry


def test_http_reads_and_writer_only_stage_changes(project: Project, two_versions: Registry) -> None:
    client = TestClient(create_app(project, systems=["registry"]))
    assert client.get("/registry/models").json()[0]["latest_version"] == 2
    assert [v["version"] for v in client.get("/registry/models/m").json()["versions"]] == [1, 2]
    page = client.get("/registry/models/m", params={"limit": 1, "offset": 1}).json()
    assert ([v["version"] for v in page["versions"]], page["total"]) == ([2], 2)
    newest = client.get("/registry/models/m", params={"limit": 1, "newest_first": True}).json()
    assert [v["version"] for v in newest["versions"]] == [2]
    bad = client.get("/registry/models/m", params={"limit": 0})
    assert bad.status_code == 422 and "limit" in bad.json()["error"]
    v1 = client.get("/registry/models/m/versions/1").json()
    assert v1["uri"] == "models:/m/1" and v1["signature"]["inputs"][0]["shape"] == [-1, 3]
    assert client.get("/registry/models/m/versions/9").status_code == 404
    assert client.get("/registry/models/m/versions/99999999999").status_code == 422
    assert client.get("/registry/models/nope").status_code == 404
    assert client.get("/registry/resolve", params={"uri": "bad"}).status_code == 400

    body = {"stage": "production", "reason": "ship"}
    assert client.post("/registry/models/m/versions/1/stage", json=body).status_code == 401
    _, reader = TokenStore(project.db).create("reader", "r")
    denied = client.post(
        "/registry/models/m/versions/1/stage",
        json=body,
        headers={"Authorization": f"Bearer {reader}"},
    )
    assert denied.status_code == 403
    _, writer = TokenStore(project.db).create("writer", "ci-bot")
    auth = {"Authorization": f"Bearer {writer}"}
    r = client.post("/registry/models/m/versions/1/stage", json=body, headers=auth)
    assert r.status_code == 200 and r.json()["audit"]["actor"] == "ci-bot"
    client.post("/registry/models/m/versions/2/stage", json=body, headers=auth)
    assert (
        client.get("/registry/resolve", params={"uri": "models:/m@production"}).json()["version"]
        == 2
    )
    r = client.post("/registry/models/m/rollback", json={"stage": "production"}, headers=auth)
    assert r.json()["audit"]["to_version"] == 1
    r = client.post("/registry/models/m/rollback", json={"stage": "production"}, headers=auth)
    assert r.status_code == 409 and "roll back" in r.json()["error"]
    r = client.post("/registry/models/m/versions/2/archive", json={"reason": "old"}, headers=auth)
    assert r.status_code == 200
    audit = client.get("/registry/audit", params={"name": "m"}).json()
    assert [(a["action"], a["to_version"]) for a in audit] == [
        ("set", 1),
        ("set", 2),
        ("rollback", 1),
        ("archive", 2),
    ]
    since = client.get("/registry/audit", params={"since_id": audit[-2]["id"]}).json()
    assert [a["id"] for a in since] == [audit[-1]["id"]]
    lineage = client.get("/registry/models/m/versions/1/lineage").json()
    assert lineage["root"] == {"kind": "model_version", "id": "m/1"}


def _cli(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main([*args, "--config", str(config)])
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_list_show_promote_rollback_archive(
    project: Project, two_versions: Registry, capsys: pytest.CaptureFixture[str]
) -> None:
    config = project.root / "flywheel.yaml"
    code, out, _ = _cli(capsys, config, "models", "list", "--json")
    assert code == 0 and json.loads(out)[0]["name"] == "m"
    code, out, _ = _cli(capsys, config, "models", "promote", "m", "1", "production", "-r", "ok")
    assert code == 0 and "version 1" in out
    _cli(capsys, config, "models", "promote", "m", "2", "production")
    code, out, _ = _cli(capsys, config, "models", "rollback", "m", "production")
    assert code == 0 and "-> version 1" in out
    code, out, _ = _cli(capsys, config, "models", "show", "m", "1", "--json")
    shown = json.loads(out)
    assert shown["stages"] == ["production"] and "lineage" in shown
    code, out, _ = _cli(capsys, config, "models", "show", "m", "1")
    assert code == 0 and "models:/m/1" in out and "lineage" in out
    code, out, _ = _cli(capsys, config, "models", "archive", "m", "2")
    assert code == 0 and "archived" in out
    code, out, _ = _cli(capsys, config, "models", "audit", "m", "--json")
    assert [e["action"] for e in json.loads(out)] == ["set", "set", "rollback", "archive"]
    code, _, err = _cli(capsys, config, "models", "promote", "m", "2", "production")
    assert code == 1 and err.startswith("error: ") and "archived" in err
    code, _, err = _cli(capsys, config, "models", "show", "nope")
    assert code == 1 and "not registered" in err


def test_model_files_register_over_http_and_cli(
    project: Project, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    booster = lgb.train(
        {"objective": "regression", "verbose": -1}, lgb.Dataset(x, x[:, 0]), num_boost_round=5
    )
    path = tmp_path / "model.txt"
    booster.save_model(str(path))
    client = TestClient(create_app(project, systems=["registry"]))
    _, writer = TokenStore(project.db).create("writer", "uploader")
    auth = {"Authorization": f"Bearer {writer}", "Content-Type": "application/octet-stream"}
    url = "/registry/models/gbm/versions"
    r = client.post(url, params={"flavor": "lightgbm"}, content=path.read_bytes(), headers=auth)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["created_by"] == "uploader"
    loaded = Registry(project).load("models:/gbm/1")
    np.testing.assert_allclose(loaded.predict(x[:7])["output"], booster.predict(x[:7]))
    bad = client.post(url, params={"flavor": "onnx"}, content=b"not a model", headers=auth)
    assert bad.status_code == 400 and "gbm" in bad.json()["error"]
    no_auth = client.post(url, params={"flavor": "onnx"}, content=b"x")
    assert no_auth.status_code == 401

    config = project.root / "flywheel.yaml"
    code, out, _ = _cli(
        capsys, config, "models", "register", "gbm", str(path), "--flavor", "lightgbm"
    )
    assert code == 0 and "models:/gbm/2" in out
    code, _, err = _cli(capsys, config, "models", "register", "gbm", str(path), "--flavor", "torch")
    assert code == 1 and "onnx, lightgbm, llm or scripted-chat" in err
