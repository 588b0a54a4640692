"""SQLite event log: an append table plus per-group cursor and pending (delivered, unacked) rows."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence

from flywheel.events._log import Event, EventLogError
from flywheel.metadata import ThreadConnections

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
  stream TEXT NOT NULL, id INTEGER NOT NULL, payload BLOB NOT NULL, PRIMARY KEY (stream, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS groups (
  stream TEXT NOT NULL, grp TEXT NOT NULL, delivered INTEGER NOT NULL, PRIMARY KEY (stream, grp)
);
CREATE TABLE IF NOT EXISTS pending (
  stream TEXT NOT NULL, grp TEXT NOT NULL, id INTEGER NOT NULL, consumer TEXT NOT NULL,
  delivered_at REAL NOT NULL, PRIMARY KEY (stream, grp, id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS acked (
  stream TEXT NOT NULL, grp TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (stream, grp)
);
"""


def _fmt(i: int) -> str:
    return f"{i:020d}"


class SQLiteEventLog:
    """``sqlite:///path/events.db``; several processes may append and consume at once."""

    def __init__(self, url: str, *, namespace: str = "flywheel") -> None:
        if not url.startswith("sqlite:///"):
            raise EventLogError(f"event log URL {url!r} is not sqlite:///PATH")
        self.path = url[len("sqlite:///") :].split("?", 1)[0]
        self._connections = ThreadConnections(self.path)
        conn = self._conn()
        conn.executescript(_SCHEMA)

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            (last,) = conn.execute(
                "SELECT coalesce(max(id), 0) FROM events WHERE stream = ?", (stream,)
            ).fetchone()
            ids = list(range(last + 1, last + 1 + len(payloads)))
            conn.executemany(
                "INSERT INTO events (stream, id, payload) VALUES (?, ?, ?)",
                [(stream, i, p) for i, p in zip(ids, payloads, strict=True)],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [_fmt(i) for i in ids]

    def _anything(self, stream: str, group: str, consumer: str) -> bool:
        """A cheap read-only check, so idle polling never takes the write lock."""
        conn = self._conn()
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pending WHERE stream = ? AND grp = ? AND consumer = ?),"
            " (SELECT coalesce(max(id), 0) FROM events WHERE stream = ?),"
            " (SELECT delivered FROM groups WHERE stream = ? AND grp = ?)",
            (stream, group, consumer, stream, stream, group),
        ).fetchone()
        return bool(row[0]) or row[2] is None or row[1] > row[2]

    def _take(
        self, stream: str, group: str, consumer: str, count: int, pending: bool = True
    ) -> list[Event]:
        if not self._anything(stream, group, consumer):
            return []
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute(
                "INSERT OR IGNORE INTO groups (stream, grp, delivered) VALUES (?, ?, 0)",
                (stream, group),
            )
            mine = (
                conn.execute(
                    "SELECT e.id, e.payload FROM pending p JOIN events e ON e.stream = p.stream "
                    "AND e.id = p.id WHERE p.stream = ? AND p.grp = ? AND p.consumer = ? "
                    "ORDER BY p.id LIMIT ?",
                    (stream, group, consumer, count),
                ).fetchall()
                if pending
                else []
            )
            if mine:
                conn.execute("COMMIT")
                return [(_fmt(i), p) for i, p in mine]
            (delivered,) = conn.execute(
                "SELECT delivered FROM groups WHERE stream = ? AND grp = ?", (stream, group)
            ).fetchone()
            rows = conn.execute(
                "SELECT id, payload FROM events WHERE stream = ? AND id > ? ORDER BY id LIMIT ?",
                (stream, delivered, count),
            ).fetchall()
            if rows:
                now = time.time()
                conn.executemany(
                    "INSERT INTO pending (stream, grp, id, consumer, delivered_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    [(stream, group, i, consumer, now) for i, _ in rows],
                )
                conn.execute(
                    "UPDATE groups SET delivered = ? WHERE stream = ? AND grp = ?",
                    (rows[-1][0], stream, group),
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [(_fmt(i), p) for i, p in rows]

    def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[Event]:
        deadline = time.monotonic() + block_ms / 1000
        while True:
            events = self._take(stream, group, consumer, count)
            if events or time.monotonic() >= deadline:
                return events
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))

    def read_pending(self, stream: str, group: str, consumer: str, count: int) -> list[Event]:
        rows = (
            self._conn()
            .execute(
                "SELECT e.id, e.payload FROM pending p JOIN events e ON e.stream = p.stream "
                "AND e.id = p.id WHERE p.stream = ? AND p.grp = ? AND p.consumer = ? "
                "ORDER BY p.id LIMIT ?",
                (stream, group, consumer, count),
            )
            .fetchall()
        )
        return [(_fmt(i), p) for i, p in rows]

    def read_new(self, stream: str, group: str, consumer: str, count: int) -> list[Event]:
        return self._take(stream, group, consumer, count, pending=False)

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> None:
        if not ids:
            return
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cur = conn.executemany(
                "DELETE FROM pending WHERE stream = ? AND grp = ? AND id = ?",
                [(stream, group, int(i)) for i in ids],
            )
            conn.execute(
                "INSERT INTO acked (stream, grp, n) VALUES (?, ?, ?) ON CONFLICT (stream, grp) "
                "DO UPDATE SET n = n + excluded.n",
                (stream, group, cur.rowcount),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Event]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            cutoff = time.time() - min_idle_ms / 1000
            rows = conn.execute(
                "SELECT e.id, e.payload FROM pending p JOIN events e ON e.stream = p.stream "
                "AND e.id = p.id WHERE p.stream = ? AND p.grp = ? "
                "AND p.delivered_at <= ? ORDER BY p.id LIMIT ?",
                (stream, group, cutoff, count),
            ).fetchall()
            now = time.time()
            conn.executemany(
                "UPDATE pending SET consumer = ?, delivered_at = ? "
                "WHERE stream = ? AND grp = ? AND id = ?",
                [(consumer, now, stream, group, i) for i, _ in rows],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return [(_fmt(i), p) for i, p in rows]

    def lag(self, stream: str, group: str) -> int:
        conn = self._conn()
        (total,) = conn.execute(
            "SELECT count(*) FROM events WHERE stream = ?", (stream,)
        ).fetchone()
        row = conn.execute(
            "SELECT n FROM acked WHERE stream = ? AND grp = ?", (stream, group)
        ).fetchone()
        return int(total) - (int(row[0]) if row else 0)

    def pending(self, stream: str, group: str) -> int:
        (n,) = (
            self._conn()
            .execute("SELECT count(*) FROM pending WHERE stream = ? AND grp = ?", (stream, group))
            .fetchone()
        )
        return int(n)

    def close(self) -> None:
        self._connections.close()
