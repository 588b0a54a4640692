"""One SQLite file opened once per thread: the embedded backends' connection helper.

The SQLite online store and the SQLite event log keep one ``sqlite3`` connection per thread
(autocommit, WAL, NORMAL sync, a 30 s busy timeout, so that several processes can share the
file); ``close`` closes every thread's connection.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from flywheel.metadata._database import enable_sqlite_wal


class ThreadConnections:
    """Per-thread connections to ``path`` (its folder is created)."""

    def __init__(self, path: str | Path) -> None:
        self.path = str(path)
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []

    def get(self) -> sqlite3.Connection:
        """This thread's connection (opened on first use)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA busy_timeout=30000")
            enable_sqlite_wal(conn)
            conn.execute("PRAGMA synchronous=NORMAL")
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        """Close every thread's connection; a later ``get`` opens a new one."""
        with self._lock:
            for conn in self._all:
                with contextlib.suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


__all__ = ["ThreadConnections"]
