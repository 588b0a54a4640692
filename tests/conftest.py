"""Shared fixtures: temporary projects and real Postgres/Redis connections.

``postgres_url`` gives each test its own schema in the ``test`` database; ``redis_url`` gives
each test its own key prefix (``redis_prefix``) and deletes its keys afterwards. When a service
cannot be reached the test is skipped with the reason, unless FLYWHEEL_REQUIRE_SERVICES=1 (CI),
where it fails.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from flywheel.config import DEFAULT_CONFIG_TEXT, load_config
from flywheel.project import Project

POSTGRES_ADMIN_URL = os.environ.get(
    "FLYWHEEL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_TEST_URL = os.environ.get("FLYWHEEL_TEST_REDIS", "redis://127.0.0.1:6379/0")


def services_required() -> bool:
    return os.environ.get("FLYWHEEL_REQUIRE_SERVICES") == "1"


def _unavailable(what: str, reason: str) -> None:
    message = f"{what} is not reachable ({reason})"
    if services_required():
        pytest.fail(f"{message}; FLYWHEEL_REQUIRE_SERVICES=1 makes this a failure")
    pytest.skip(message)


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A SQLAlchemy URL whose connections use a fresh schema, dropped after the test."""
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = sa.create_engine(POSTGRES_ADMIN_URL, connect_args={"connect_timeout": 3})
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        _unavailable(f"PostgreSQL at {POSTGRES_ADMIN_URL}", str(exc).splitlines()[0])
    sep = "&" if "?" in POSTGRES_ADMIN_URL else "?"
    yield f"{POSTGRES_ADMIN_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix unique to the test."""
    return f"fwtest:{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def redis_url(redis_prefix: str) -> Iterator[str]:
    """The Redis URL; every key under ``redis_prefix`` is deleted after the test."""
    import redis

    client = redis.Redis.from_url(REDIS_TEST_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        _unavailable(f"Redis at {REDIS_TEST_URL}", str(exc).splitlines()[0])
    yield REDIS_TEST_URL
    keys = list(client.scan_iter(match=f"{redis_prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@pytest.fixture(params=["sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Online store and event log URLs: both embedded SQLite, then both on the real Redis."""
    if request.param == "sqlite":
        return {
            "online_store": f"sqlite:///{tmp_path}/online.db",
            "event_log": f"sqlite:///{tmp_path}/events.db",
        }
    request.applymarker(pytest.mark.integration)
    url: str = request.getfixturevalue("redis_url")
    prefix: str = request.getfixturevalue("redis_prefix")
    return {"online_store": f"{url}?prefix={prefix}", "event_log": f"{url}?prefix={prefix}"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def uvicorn_in_thread(app: Any, *, start_timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on 127.0.0.1 in a thread; yields ``127.0.0.1:PORT``."""
    import uvicorn

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=start_timeout)


def make_project(root: Path, **overrides: object) -> Project:
    """A project in ``root`` with the default config plus ``overrides`` (top-level keys)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(DEFAULT_CONFIG_TEXT.format(project="test"))
    data.update(overrides)
    (root / "flywheel.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    project = Project(load_config(root))
    project.prepare()
    return project


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    """A prepared project on the embedded defaults (SQLite, local folders)."""
    proj = make_project(tmp_path / "proj")
    yield proj
    proj.close()


@pytest.fixture
def pg_project(tmp_path: Path, postgres_url: str) -> Iterator[Project]:
    """A prepared project whose metadata store is a fresh schema in the real PostgreSQL."""
    proj = make_project(tmp_path / "proj", metadata=postgres_url)
    yield proj
    proj.close()


@pytest.fixture(params=["sqlite", "postgres"])
def any_project(request: pytest.FixtureRequest) -> Project:
    """The same test on the embedded SQLite store and on the real PostgreSQL."""
    name = "project" if request.param == "sqlite" else "pg_project"
    proj: Project = request.getfixturevalue(name)
    return proj
