"""Engine creation, transactions and schema migrations for the metadata store.

SQLite is opened in WAL mode with a busy timeout, and write transactions start with
``BEGIN IMMEDIATE`` so that several processes can share one file: a writer waits for the lock
up front instead of failing half-way with "database is locked" when a read turns into a write.
PostgreSQL is used through psycopg 3 (``postgresql+psycopg://``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, make_url

from flywheel.errors import ConfigError, ServiceUnavailable

# Branch label -> (package, folder) holding that branch's Alembic revisions. A system that owns
# tables adds one line here; its first revision has ``branch_labels=(label,)`` and
# ``depends_on="core_0001"``.
MIGRATION_BRANCHES: dict[str, tuple[str, str]] = {
    "core": ("flywheel.metadata", "_alembic/versions"),
    "features": ("flywheel.features", "_migrations"),
    "tracking": ("flywheel.tracking", "_migrations"),
    "registry": ("flywheel.registry", "_migrations"),
    "training": ("flywheel.training", "_migrations"),
    "serving": ("flywheel.serving", "_migrations"),
    "experiments": ("flywheel.experiments", "_migrations"),
    "telemetry": ("flywheel.telemetry", "_migrations"),
    "ui": ("flywheel.ui", "_migrations"),
}

SQLITE_BUSY_TIMEOUT_MS = 30_000


def _normalise_url(url: str) -> str:
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def create_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``sqlite:///PATH`` or ``postgresql+psycopg://...``.

    SQLite files get their parent folder created, WAL journaling, a 30 s busy timeout, foreign
    keys on, and explicit ``BEGIN`` handling (see the module docstring).
    """
    url = _normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            url,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False},
            **kwargs,
        )
        _install_sqlite_hooks(engine)
        return engine
    if parsed.get_backend_name() == "postgresql":
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(url, **kwargs)
    raise ConfigError("metadata", "metadata", f"unsupported database URL {url!r}")


def enable_sqlite_wal(dbapi_conn: Any) -> None:
    """Put a new sqlite3 connection's file in WAL mode.

    Two connections opening a fresh file at the same moment can get "database is locked" from
    this pragma without the busy handler being consulted, so it is retried for up to 5 s.
    """
    for attempt in range(200):
        try:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 199:
                raise
            time.sleep(0.025)


def _install_sqlite_hooks(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so that BEGIN is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        enable_sqlite_wal(cur)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        conn.exec_driver_sql(f"BEGIN {mode}")


class Database:
    """The metadata store of one project.

    ``read()`` and ``write()`` yield a connection inside a transaction that commits on success
    and rolls back on an exception. On SQLite ``write()`` takes the write lock at ``BEGIN``.
    """

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = _normalise_url(url)
        self.engine = create_engine(self.url, **engine_kwargs)
        self._writer = (
            self.engine.execution_options(sqlite_begin="IMMEDIATE")
            if self.dialect == "sqlite"
            else self.engine
        )
        self._script_directory: Any = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def __repr__(self) -> str:
        return f"Database({self.engine.url.render_as_string(hide_password=True)!r})"

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection in a read transaction."""
        with self.engine.begin() as conn:
            yield conn

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A connection in a write transaction (committed on exit, rolled back on error)."""
        with self._writer.begin() as conn:
            yield conn

    def ping(self) -> None:
        """Raise ``ServiceUnavailable`` unless the database answers ``SELECT 1``."""
        try:
            with self.engine.connect() as conn:
                conn.execute(sa.text("SELECT 1"))
        except sa.exc.SQLAlchemyError as exc:
            cause = getattr(exc, "orig", None) or exc
            reason = (str(cause).splitlines() or [type(exc).__name__])[0]
            raise ServiceUnavailable(f"metadata store unreachable: {reason}") from None

    # -- migrations -----------------------------------------------------------------------------

    def _alembic_config(self, connection: Connection) -> Any:
        from alembic.config import Config

        cfg = Config()
        script_dir = resources.files("flywheel.metadata") / "_alembic"
        cfg.set_main_option("script_location", str(script_dir))
        cfg.set_main_option("path_separator", "os")
        locations = [
            str(resources.files(package) / folder)
            for package, folder in MIGRATION_BRANCHES.values()
        ]
        cfg.set_main_option("version_locations", os.pathsep.join(locations))
        cfg.attributes["connection"] = connection
        return cfg

    def upgrade(self) -> None:
        """Bring every migration branch to its head. Safe to call from several processes."""
        from alembic import command

        with self._migration_lock(), self.engine.connect() as conn:
            command.upgrade(self._alembic_config(conn), "heads")
            conn.commit()

    def current_revisions(self) -> set[str]:
        """The revisions the database is at (one per branch); empty before the first upgrade."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as conn:
            return set(MigrationContext.configure(conn).get_current_heads())

    def _script(self) -> Any:
        """Alembic's view of the shipped migrations (parsed once; they cannot change at runtime)."""
        if self._script_directory is None:
            from alembic.script import ScriptDirectory

            with self.engine.connect() as conn:
                self._script_directory = ScriptDirectory.from_config(self._alembic_config(conn))
        return self._script_directory

    def head_revisions(self) -> set[str]:
        """The newest revision of every branch that this version of Flywheel ships."""
        return set(self._script().get_heads())

    def pending_revisions(self) -> set[str]:
        """Shipped heads not yet applied (empty when the schema is up to date).

        Alembic stores only the leaves of what was applied: a revision that another branch
        ``depends_on`` is implied, not listed, so compare against everything the current
        revisions reach (down revisions and dependencies), not against the rows themselves.
        """
        current = self.current_revisions()
        script = self._script()
        applied = (
            {r.revision for r in script.iterate_revisions(tuple(current), "base")}
            if current
            else set()
        )
        return set(script.get_heads()) - applied

    @contextlib.contextmanager
    def _migration_lock(self) -> Iterator[None]:
        """Serialise migrations across processes: a file lock on SQLite, an advisory lock on PG."""
        if self.dialect == "sqlite":
            database = self.engine.url.database or ""
            if not database or database == ":memory:":
                yield
                return
            with open(database + ".migrate.lock", "a+") as fh:
                fcntl.flock(fh, fcntl.LOCK_EX)
                try:
                    yield
                finally:
                    fcntl.flock(fh, fcntl.LOCK_UN)
            return
        key = int.from_bytes(hashlib.sha256(b"flywheel-migrations").digest()[:7], "big")
        with self.engine.connect() as lock_conn:
            lock_conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                lock_conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                lock_conn.commit()

    def dispose(self) -> None:
        self.engine.dispose()
