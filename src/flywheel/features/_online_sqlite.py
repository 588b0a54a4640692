"""SQLite online store: one ``WITHOUT ROWID`` table per view version, one connection per thread."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import urlsplit

from flywheel.features._errors import FeatureStoreError
from flywheel.features._online import Row
from flywheel.metadata import ThreadConnections

_CHUNK = 900  # stay well under SQLite's bound-parameter limit


class SQLiteOnlineStore:
    """``sqlite:///path/online.db``: WAL, NORMAL sync, upserts that keep the newest event time."""

    def __init__(self, url: str, *, namespace: str = "flywheel") -> None:
        parts = urlsplit(url)
        path = parts.path
        if url.startswith("sqlite:///"):
            path = url[len("sqlite:///") :].split("?", 1)[0]
            if not path.startswith("/"):
                path = "/" + path if url.startswith("sqlite:////") else path
        if not path:
            raise FeatureStoreError(f"online store URL {url!r} names no file")
        self.path = path
        self._connections = ThreadConnections(path)
        self._known: set[str] = set()

    def _conn(self) -> sqlite3.Connection:
        return self._connections.get()

    @staticmethod
    def _t(table: str) -> str:
        return '"fv_' + table.replace('"', "") + '"'

    def _ensure(self, conn: sqlite3.Connection, table: str) -> None:
        if table in self._known:
            return
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {self._t(table)} "
            "(k TEXT PRIMARY KEY, ts INTEGER NOT NULL, v BLOB NOT NULL) WITHOUT ROWID"
        )
        self._known.add(table)

    def write(
        self, table: str, rows: Sequence[tuple[str, int, bytes]], *, assume_newer: bool = False
    ) -> None:
        conn = self._conn()
        self._ensure(conn, table)
        t = self._t(table)
        sql = (
            f"INSERT OR REPLACE INTO {t} (k, ts, v) VALUES (?, ?, ?)"
            if assume_newer
            else f"INSERT INTO {t} (k, ts, v) VALUES (?, ?, ?) ON CONFLICT(k) DO UPDATE SET "
            f"ts = excluded.ts, v = excluded.v WHERE excluded.ts >= {t}.ts"
        )
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, rows)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def read(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[Row | None]]:
        conn = self._conn()
        out: list[list[Row | None]] = []
        for table, keys in requests:
            found: dict[str, Row] = {}
            t = self._t(table)
            uniq = list(dict.fromkeys(keys))
            try:
                for i in range(0, len(uniq), _CHUNK):
                    chunk = uniq[i : i + _CHUNK]
                    marks = ",".join("?" * len(chunk))
                    for k, ts, v in conn.execute(
                        f"SELECT k, ts, v FROM {t} WHERE k IN ({marks})", chunk
                    ):
                        found[k] = (ts, v)
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise
            get = found.get
            out.append([get(k) for k in keys])
        return out

    def transact(
        self,
        table: str,
        keys: Sequence[str],
        update: Callable[[Mapping[str, Row | None]], Mapping[str, Row]],
    ) -> None:
        conn = self._conn()
        self._ensure(conn, table)
        t = self._t(table)
        conn.execute("BEGIN IMMEDIATE")  # the write lock makes read-modify-write safe
        try:
            current = dict(zip(keys, self.read([(table, keys)])[0], strict=True))
            new = update(current)
            conn.executemany(
                f"INSERT OR REPLACE INTO {t} (k, ts, v) VALUES (?, ?, ?)",
                [(k, ts, v) for k, (ts, v) in new.items()],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def drop(self, table: str) -> None:
        self._conn().execute(f"DROP TABLE IF EXISTS {self._t(table)}")
        self._known.discard(table)

    def close(self) -> None:
        self._connections.close()
