from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest
import sqlalchemy as sa

from flywheel.auth import TokenStore
from flywheel.metadata import Database
from flywheel.project import Project


def test_fresh_database_migrates_to_every_head(any_project: Project) -> None:
    db = any_project.db
    assert db.pending_revisions() == set()
    assert db.current_revisions()
    with db.read() as conn:
        names = sa.inspect(conn).get_table_names()
    assert "auth_tokens" in names
    assert "alembic_version" in names


def test_upgrade_is_idempotent(any_project: Project) -> None:
    before = any_project.db.current_revisions()
    any_project.db.upgrade()
    any_project.db.upgrade()
    assert any_project.db.current_revisions() == before


def test_sqlite_uses_wal_and_busy_timeout(project: Project) -> None:
    with project.db.read() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_write_rolls_back_on_error(any_project: Project) -> None:
    store = TokenStore(any_project.db)
    store.create("reader", "kept")

    def delete_then_fail() -> None:
        with any_project.db.write() as conn:
            conn.execute(sa.text("DELETE FROM auth_tokens"))
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        delete_then_fail()
    assert [t.name for t in store.list()] == ["kept"]


def _write_tokens(url: str, count: int, label: str, start: object) -> None:
    db = Database(url)
    store = TokenStore(db)
    start.wait()  # type: ignore[attr-defined]
    for i in range(count):
        store.create("reader", f"{label}-{i}")
    db.dispose()


def _upgrade(url: str, start: object) -> None:
    db = Database(url)
    start.wait()  # type: ignore[attr-defined]
    db.upgrade()
    db.dispose()


@pytest.mark.integration
def test_two_processes_write_at_once(any_project: Project) -> None:
    url = any_project.config.metadata_url
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [
        ctx.Process(target=_write_tokens, args=(url, 150, label, start)) for label in ("a", "b")
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    names = {t.name for t in TokenStore(any_project.db).list()}
    assert names == {f"{label}-{i}" for label in ("a", "b") for i in range(150)}


@pytest.mark.integration
def test_concurrent_first_migrations_do_not_collide(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_upgrade, args=(url, start)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    db = Database(url)
    assert db.pending_revisions() == set()


@pytest.mark.integration
def test_concurrent_first_migrations_on_postgres(postgres_url: str) -> None:
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_upgrade, args=(postgres_url, start)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    db = Database(postgres_url)
    assert db.pending_revisions() == set()
    db.dispose()


def test_unreachable_database_is_a_clear_error() -> None:
    from flywheel.errors import ServiceUnavailable

    db = Database(
        "postgresql+psycopg://nobody@127.0.0.1:1/none", connect_args={"connect_timeout": 1}
    )
    with pytest.raises(ServiceUnavailable, match="metadata store unreachable"):
        db.ping()
