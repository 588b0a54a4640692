from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.auth import Principal, Role, TokenStore, require_admin, require_reader, require_writer
from flywheel.errors import FlywheelError, NotFoundError
from flywheel.project import Project
from tests.conftest import make_project


def app_with_routes(project: Project) -> FastAPI:
    app = create_app(project, systems=[])

    @app.get("/read")
    def read(p: Principal = Depends(require_reader)) -> dict[str, str]:
        return {"who": p.name, "role": p.role.name}

    @app.post("/write")
    def write(p: Principal = Depends(require_writer)) -> dict[str, str]:
        return {"who": p.name}

    @app.post("/admin")
    def admin(p: Principal = Depends(require_admin)) -> dict[str, str]:
        return {"who": p.name}

    return app


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_tokens_are_hashed_and_verified(any_project: Project) -> None:
    store = TokenStore(any_project.db)
    info, token = store.create("writer", "ci")
    assert token.startswith(f"fw_{info.id}_")
    with any_project.db.read() as conn:
        stored = conn.exec_driver_sql("SELECT secret_sha256 FROM auth_tokens").scalar()
    assert token.split("_", 2)[2] not in stored
    principal = store.verify(token)
    assert principal is not None and principal.role is Role.writer
    assert store.verify(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert store.verify("not-a-token") is None
    store.revoke(info.id)
    assert TokenStore(any_project.db).verify(token) is None
    with pytest.raises(NotFoundError):
        store.revoke(info.id)


def test_unknown_role_is_refused(project: Project) -> None:
    with pytest.raises(FlywheelError, match="role 'root' is not one of: reader, writer, admin"):
        TokenStore(project.db).create("root")


def test_roles_on_http(project: Project) -> None:
    store = TokenStore(project.db)
    _, reader = store.create("reader", "r")
    _, writer = store.create("writer", "w")
    _, admin = store.create("admin", "a")
    client = TestClient(app_with_routes(project))

    # Reads are open on loopback (TestClient counts as local) when auth is not required.
    assert client.get("/read").json() == {"who": "anonymous", "role": "reader"}
    # Writes need a token: none -> 401, reader -> 403, writer/admin -> 200.
    r = client.post("/write")
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "needs a writer token" in r.json()["error"]
    r = client.post("/write", headers=bearer(reader))
    assert r.status_code == 403
    assert "has role reader" in r.json()["error"]
    assert client.post("/write", headers=bearer(writer)).json() == {"who": "w"}
    assert client.post("/write", headers=bearer(admin)).status_code == 200
    assert client.post("/admin", headers=bearer(writer)).status_code == 403
    assert client.post("/admin", headers=bearer(admin)).status_code == 200
    # A bad token is refused even where no token is needed.
    r = client.get("/read", headers=bearer("fw_nope_nope"))
    assert r.status_code == 401
    assert "unknown or revoked" in r.json()["error"]


def test_reads_need_a_token_when_required(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p", auth={"required": True})
    _, reader = TokenStore(project.db).create("reader")
    client = TestClient(app_with_routes(project))
    assert client.get("/read").status_code == 401
    assert client.get("/read", headers=bearer(reader)).status_code == 200


def test_reads_from_other_hosts_need_a_token(project: Project) -> None:
    client = TestClient(app_with_routes(project), client=("10.1.2.3", 5000))
    assert client.get("/read").status_code == 401
    _, reader = TokenStore(project.db).create("reader")
    assert client.get("/read", headers=bearer(reader)).status_code == 200
