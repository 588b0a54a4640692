"""`POST /agent/ask` validates its body strictly: a non-boolean `allow_writes` is a 422."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.project import Project


@pytest.mark.parametrize("value", [0, 1, "true", "yes", None])
def test_allow_writes_must_be_a_json_boolean(project: Project, value: object) -> None:
    token = TokenStore(project.db).create("writer", "ask")[1]
    with TestClient(create_app(project, systems=["agent"])) as client:
        r = client.post(
            "/agent/ask",
            json={"question": "Which version of churn is in production?", "allow_writes": value},
            headers={"Authorization": f"Bearer {token}"},
        )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert "allow_writes" in error and "boolean" in error, error
