"""What the dashboard's own API (/ui/api/*) answers is reachable from the CLI too:
`flywheel tokens whoami` (GET /ui/api/whoami) and `flywheel ui actions` (GET /ui/api/actions)."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.cli._main import app
from flywheel.project import Project


def test_whoami_and_the_action_log_from_the_cli_match_the_http_api(project: Project) -> None:
    _, writer = TokenStore(project.db).create("writer", "ana")
    _, revoked_token = TokenStore(project.db).create("reader", "old")
    TokenStore(project.db).revoke(revoked_token.split("_")[1])
    auth = {"Authorization": f"Bearer {writer}"}
    client = TestClient(create_app(project, systems=["ui", "experiments"]))
    for reason in ("first try", "second try"):
        r = client.post(
            "/ui/api/actions",
            headers=auth,
            json={
                "action": "experiment.stop",
                "target": "experiment:none",
                "reason": reason,
                "method": "POST",
                "path": "/experiments/none/stop",
                "body": {},
            },
        )
        assert r.status_code == 404  # refused by the system, and audited
    config = str(project.root / "flywheel.yaml")
    runner = CliRunner()

    out = runner.invoke(app, ["tokens", "whoami", writer, "-c", config])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == client.get("/ui/api/whoami", headers=auth).json()
    assert json.loads(out.stdout) == {"name": "ana", "role": "writer"}
    bad = runner.invoke(app, ["tokens", "whoami", revoked_token, "-c", config])
    assert bad.exit_code != 0 and "unknown or revoked" in str(bad.exception)

    out = runner.invoke(
        app, ["ui", "actions", "--target", "experiment:none", "--json", "-c", config]
    )
    assert out.exit_code == 0, out.output
    rows = json.loads(out.stdout)
    assert rows == client.get("/ui/api/actions", params={"target": "experiment:none"}).json()
    assert [(a["reason"], a["status"], a["actor"]) for a in rows] == [
        ("second try", 404, "ana"),
        ("first try", 404, "ana"),
    ]
    table = runner.invoke(app, ["ui", "actions", "-c", config])
    assert "second try" in table.stdout and "404" in table.stdout
    none = runner.invoke(app, ["ui", "actions", "--target", "endpoint:x", "-c", config])
    assert "no dashboard actions" in none.stdout
