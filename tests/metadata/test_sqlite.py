"""Per-thread SQLite connections: one per thread, WAL, all closed by close()."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from flywheel.metadata import ThreadConnections


def test_one_connection_per_thread_in_wal_and_close_closes_all(tmp_path: Path) -> None:
    conns = ThreadConnections(tmp_path / "sub" / "x.db")
    main = conns.get()
    assert conns.get() is main
    assert main.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    other: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: other.append(conns.get()))
    thread.start()
    thread.join()
    assert other[0] is not main
    conns.close()
    for conn in (main, other[0]):
        with pytest.raises(sqlite3.ProgrammingError):
            conn.execute("SELECT 1")
    assert conns.get() is not main  # a new one after close
    conns.close()
