"""``TraceStore``: spans in the metadata store (SQLite or PostgreSQL), searched by trace.

Writes: one transaction per batch of rows (``SpanBatch``, built by the OTLP decoder). Spans
already stored (same trace and span id) are skipped, so a retried export stores nothing twice.
On SQLite, rows go in with ``INSERT OR IGNORE`` (the unique index does the skipping, no query
first) and the attribute index rows are derived in SQL; on PostgreSQL, with ``COPY``.
Every text (up to 256 characters), integer and boolean attribute is indexed as
``(key, value-as-text)`` (floats, arrays and long text are stored, not indexed: equality on them
is rarely what a search wants), except the GenAI token counts: they are measures with columns of
their own, and a filter on one compares the column (``COLUMN_ATTRIBUTES``).

Reads: ``search`` returns trace summaries, newest first, for traces holding at least one span
that matches every filter; ``get_trace`` returns all spans of one trace in start order.

Token totals per trace count GenAI model calls (``gen_ai.usage.*`` on spans that are not
``invoke_agent``/``execute_tool``); when both a client span and the server span of the same call
carry usage, the client spans are counted and the server ones are not, so a call is counted once.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from flywheel.errors import FlywheelError, NotFoundError
from flywheel.metadata import Database
from flywheel.telemetry._otlp import (
    ROW_COLUMNS,
    SpanBatch,
    SpanRecord,
    batch_from_records,
    iso_time,
)

MAX_INDEXED_VALUE = 256
MAX_INDEXED_KEY = 255
MAX_SEARCH_LIMIT = 1000
SPAN_KIND_SERVER = 2
STATUS_ERROR = 2
# Operations whose usage aggregates other spans' usage, or that are not model calls.
_NOT_MODEL_CALLS = ("invoke_agent", "execute_tool", "create_agent")

_INSERT_SPANS_SQLITE = (
    f"INSERT OR IGNORE INTO trace_spans ({', '.join(ROW_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in ROW_COLUMNS)})"
)
_POSTGRES_COLUMNS = ("pk", *ROW_COLUMNS)
# Attributes kept in a column of their own (per-trace token totals are SUMs over them) and not
# indexed: a filter on one compares the column, scanning newest spans first. They are measures
# (equality on a token count is a rare search), and two of the ~6 index rows of a GenAI span.
COLUMN_ATTRIBUTES = {
    "gen_ai.usage.input_tokens": "input_tokens",
    "gen_ai.usage.output_tokens": "output_tokens",
}
_NOT_INDEXED = ", ".join(f"'{key}'" for key in COLUMN_ATTRIBUTES)
# The attribute index is clustered by bucket (1,024 consecutive span pks) first: a batch writes
# into the newest bucket's few pages instead of all over the index (see telemetry_0002).
BUCKET_SHIFT = 10
# SQLite: the index rows of the spans just stored, from their attributes JSON, in one statement
# that runs in C without the GIL (the rules of ``index_value``: text up to 256 characters,
# integers, booleans), instead of building and binding ~5 rows per span from Python.
_INDEX_ATTRIBUTES_SQLITE = (
    "INSERT INTO trace_span_attributes (bucket, key, value, span_pk) "
    f"SELECT s.pk >> {BUCKET_SHIFT}, j.key, "
    "CASE j.type WHEN 'text' THEN j.value WHEN 'integer' THEN CAST(j.value AS TEXT) "
    "ELSE j.type END, s.pk "
    "FROM trace_spans s, json_each(s.attributes) j "
    "WHERE s.pk BETWEEN ? AND ? "
    f"AND length(j.key) <= {MAX_INDEXED_KEY} AND j.key NOT IN ({_NOT_INDEXED}) "
    "AND (j.type IN ('integer', 'true', 'false') "
    f"OR (j.type = 'text' AND length(j.value) <= {MAX_INDEXED_VALUE}))"
)
# Every bucket number, newest first: an attribute filter seeks the index once per bucket.
_BUCKETS = (
    "WITH RECURSIVE buckets(b) AS ("
    f"SELECT (SELECT COALESCE(MAX(pk), 0) FROM trace_spans) >> {BUCKET_SHIFT} "
    "UNION ALL SELECT b - 1 FROM buckets WHERE b > 0)"
)
# Per connection: a page cache that holds the hot index pages (KiB, negative), and a WAL that
# is checkpointed every ~40 MB instead of every 4 MB (fewer fsyncs, each page copied once).
_SQLITE_WRITER_PRAGMAS = ("PRAGMA cache_size=-65536", "PRAGMA wal_autocheckpoint=10000")


class TraceQueryError(FlywheelError):
    """A search with an impossible filter (bad attribute syntax, reversed range, ...)."""


@dataclass(frozen=True)
class TraceQuery:
    """Filters of a trace search; a trace matches when one of its spans matches all of them.

    ``attributes`` maps a key to the value it must have (compared as text: ``"true"``,
    ``"42"``, ``"gpt-x"``), or to ``None`` for "has this key".
    """

    service: str | None = None
    name: str | None = None
    start_ns: int | None = None
    end_ns: int | None = None
    min_duration_ns: int | None = None
    max_duration_ns: int | None = None
    attributes: dict[str, str | None] = field(default_factory=dict)
    errors_only: bool = False
    limit: int = 20

    def __post_init__(self) -> None:
        if not 1 <= self.limit <= MAX_SEARCH_LIMIT:
            raise TraceQueryError(f"limit: must be 1..{MAX_SEARCH_LIMIT} (got {self.limit})")
        if self.start_ns is not None and self.end_ns is not None and self.end_ns < self.start_ns:
            raise TraceQueryError("end: must not be before start")
        if (
            self.min_duration_ns is not None
            and self.max_duration_ns is not None
            and self.max_duration_ns < self.min_duration_ns
        ):
            raise TraceQueryError("max_duration: must not be below min_duration")


@dataclass(frozen=True)
class TraceSummary:
    """One trace in search results."""

    trace_id: str
    root_name: str | None
    root_service: str | None
    start_ns: int
    end_ns: int
    span_count: int
    error_count: int
    services: list[str]
    input_tokens: int
    output_tokens: int

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6

    def to_dict(self) -> dict[str, Any]:
        return {
            "trace_id": self.trace_id,
            "root_name": self.root_name,
            "root_service": self.root_service,
            "start_time": iso_time(self.start_ns),
            "start_ns": self.start_ns,
            "duration_ms": round(self.duration_ms, 3),
            "span_count": self.span_count,
            "error_count": self.error_count,
            "services": self.services,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
        }


StoredSpan = SpanRecord  # a span read back from the store is the record that was ingested


def index_value(value: Any) -> str | None:
    """The text under which an attribute is indexed (text up to 256 characters, integers,
    booleans), or None: floats, arrays and long text are stored but not indexed."""
    kind = type(value)
    if kind is str:
        return value if len(value) <= MAX_INDEXED_VALUE else None
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    return None


def index_rows(
    attributes: Sequence[dict[str, Any]], pks: Sequence[int]
) -> list[tuple[int, str, str, int]]:
    """The attribute index rows ``(bucket, key, value-as-text, span_pk)`` of spans with these
    ``attributes`` stored as ``pks`` (``COLUMN_ATTRIBUTES`` left out).

    On SQLite the same rows are derived in SQL from the stored attributes
    (``_INDEX_ATTRIBUTES_SQLITE``); both follow ``index_value``.
    """
    rows: list[tuple[int, str, str, int]] = []
    add = rows.append
    for pk, attrs in zip(pks, attributes, strict=True):
        bucket = pk >> BUCKET_SHIFT
        for key, value in attrs.items():
            text = index_value(value)
            if text is not None and len(key) <= MAX_INDEXED_KEY and key not in COLUMN_ATTRIBUTES:
                add((bucket, key, text, pk))
    return rows


_WRITER_LOCKS: weakref.WeakKeyDictionary[Database, threading.Lock] = weakref.WeakKeyDictionary()
_WRITER_LOCKS_GUARD = threading.Lock()


def _writer_lock(db: Database) -> threading.Lock:
    """This process's lock for writing spans to one SQLite file.

    Without it, concurrent batches wait for SQLite's write lock in its busy handler, which
    sleeps up to 100 ms between tries; a thread lock hands over as soon as the commit is done.
    (Writing the batches that queue behind the lock in one transaction was tried: with a few
    concurrent exporters it hardly ever finds more than one waiting, and it took the decode of
    the next request out of step with the write of the current one.)
    """
    with _WRITER_LOCKS_GUARD:
        lock = _WRITER_LOCKS.get(db)
        if lock is None:
            lock = _WRITER_LOCKS[db] = threading.Lock()
        return lock


def _tune_sqlite_writer(conn: Connection) -> None:
    """Apply ``_SQLITE_WRITER_PRAGMAS`` once per pooled SQLite connection."""
    info = conn.connection.info
    if not info.get("flywheel_trace_writer"):
        for pragma in _SQLITE_WRITER_PRAGMAS:
            conn.exec_driver_sql(pragma)
        info["flywheel_trace_writer"] = True


def _column_filter(column: str, value: str | None, name: str, params: dict[str, Any]) -> str:
    """The condition of an attribute filter on a ``COLUMN_ATTRIBUTES`` key: present, or equal
    to an integer written as the index writes one (``"42"``, not ``"042"`` or ``"42.0"``)."""
    if value is None:
        return f"s.{column} IS NOT NULL"
    try:
        number = int(value)
    except ValueError:
        return "1 = 0"
    if str(number) != value or not -(2**63) <= number < 2**63:
        return "1 = 0"
    params[name] = number
    return f"s.{column} = :{name}"


class TraceStore:
    """Store and search spans in the project's metadata store."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- writing --------------------------------------------------------------------------------

    def insert(self, records: Sequence[SpanRecord]) -> int:
        """Store spans in one transaction; returns how many were new (retries store nothing)."""
        return self.insert_batch(batch_from_records(records))

    def insert_batch(self, batch: SpanBatch) -> int:
        """Store a decoded batch atomically; returns how many spans were new.

        Returns only once the spans are committed (WAL with ``synchronous=NORMAL`` on SQLite: a
        committed batch survives the process being killed).
        """
        if not batch.rows:
            return 0
        if self.db.dialect == "sqlite":
            return self._insert_sqlite(batch)
        for attempt in range(3):
            try:
                with self.db.write() as conn:
                    return self._write_postgres(conn, batch)
            except sa.exc.IntegrityError:
                # Two writers raced on the same span; the retry skips it.
                if attempt == 2:
                    raise
        return 0  # unreachable

    def _insert_sqlite(self, batch: SpanBatch) -> int:
        with _writer_lock(self.db), self.db.write() as conn:
            return self._write_sqlite(conn, batch)

    @staticmethod
    def _write_sqlite(conn: Connection, batch: SpanBatch) -> int:
        """Insert the batch's new spans, then their attribute index rows; how many were new.

        New rows get the primary keys after the largest one (SQLite's rowid rule, and the
        transaction holds the write lock), so their index rows are those of one pk range.
        """
        _tune_sqlite_writer(conn)
        raw = conn.connection.driver_connection
        cursor = raw.cursor()  # type: ignore[union-attr]
        try:
            top = int(cursor.execute("SELECT MAX(pk) FROM trace_spans").fetchone()[0] or 0)
            before = raw.total_changes  # type: ignore[union-attr]
            cursor.executemany(_INSERT_SPANS_SQLITE, batch.rows)
            stored = int(raw.total_changes - before)  # type: ignore[union-attr]
            if stored:
                cursor.execute(_INDEX_ATTRIBUTES_SQLITE, (top + 1, top + stored))
        finally:
            cursor.close()
        return stored

    def _write_postgres(self, conn: Connection, batch: SpanBatch) -> int:
        fresh = self._new_only(conn, batch.rows)
        if not fresh:
            return 0
        pks = self._next_pks_postgres(conn, len(fresh))
        rows = [(pk, *batch.rows[i]) for pk, i in zip(pks, fresh, strict=True)]
        self._copy(conn, rows, index_rows([batch.attributes[i] for i in fresh], pks))
        return len(fresh)

    @staticmethod
    def _next_pks_postgres(conn: Connection, n: int) -> list[int]:
        """``n`` primary keys from the ``pk`` sequence (ascending)."""
        return [
            r[0]
            for r in conn.execute(
                sa.text(
                    "SELECT nextval(pg_get_serial_sequence('trace_spans', 'pk')) "
                    "FROM generate_series(1, :n)"
                ),
                {"n": n},
            )
        ]

    @staticmethod
    def _copy(
        conn: Connection,
        span_rows: list[tuple[Any, ...]],
        attr_rows: list[tuple[int, str, str, int]],
    ) -> None:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY trace_spans ({', '.join(_POSTGRES_COLUMNS)}) FROM STDIN") as cp:
                for row in span_rows:
                    cp.write_row(row)
            if attr_rows:
                with cursor.copy(
                    "COPY trace_span_attributes (bucket, key, value, span_pk) FROM STDIN"
                ) as cp:
                    for arow in attr_rows:
                        cp.write_row(arow)
        finally:
            cursor.close()

    @staticmethod
    def _new_only(conn: Connection, rows: Sequence[tuple[Any, ...]]) -> list[int]:
        """The positions of the rows not yet stored, each (trace, span) once."""
        trace_ids = sorted({r[0] for r in rows})
        existing: set[tuple[str, str]] = set()
        for start in range(0, len(trace_ids), 500):
            chunk = trace_ids[start : start + 500]
            found = conn.execute(
                sa.text(
                    "SELECT trace_id, span_id FROM trace_spans WHERE trace_id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": chunk},
            )
            existing.update((r[0], r[1]) for r in found)
        fresh: list[int] = []
        for i, r in enumerate(rows):
            key = (r[0], r[1])
            if key not in existing:
                existing.add(key)
                fresh.append(i)
        return fresh

    # -- reading --------------------------------------------------------------------------------

    def search(self, query: TraceQuery) -> list[TraceSummary]:
        """Traces with a span matching every filter of ``query``, newest first."""
        where: list[str] = []
        params: dict[str, Any] = {}
        if query.service is not None:
            where.append("s.service = :service")
            params["service"] = query.service
        if query.name is not None:
            where.append("s.name = :name")
            params["name"] = query.name
        if query.start_ns is not None:
            where.append("s.start_ns >= :start_ns")
            params["start_ns"] = query.start_ns
        if query.end_ns is not None:
            where.append("s.start_ns <= :end_ns")
            params["end_ns"] = query.end_ns
        if query.min_duration_ns is not None:
            where.append("s.duration_ns >= :min_d")
            params["min_d"] = query.min_duration_ns
        if query.max_duration_ns is not None:
            where.append("s.duration_ns <= :max_d")
            params["max_d"] = query.max_duration_ns
        if query.errors_only:
            where.append(f"s.status_code = {STATUS_ERROR}")
        indexed = False
        for i, (key, value) in enumerate(sorted(query.attributes.items())):
            column = COLUMN_ATTRIBUTES.get(key)
            if column is not None:
                where.append(_column_filter(column, value, f"av{i}", params))
                continue
            indexed = True
            params[f"ak{i}"] = key
            match = f"a.key = :ak{i}"
            if value is not None:
                params[f"av{i}"] = value
                match += f" AND a.value = :av{i}"
            where.append(
                "s.pk IN (SELECT a.span_pk FROM buckets CROSS JOIN trace_span_attributes a "
                f"WHERE a.bucket = buckets.b AND {match})"
            )
        sql = (" WHERE " + " AND ".join(where)) if where else ""
        if indexed:
            sql = f"{_BUCKETS} SELECT {{columns}} FROM trace_spans s{sql}"
        else:
            sql = f"SELECT {{columns}} FROM trace_spans s{sql}"
        with self.db.read() as conn:
            trace_ids = self._newest_traces(conn, sql, params, query.limit)
            summaries = self._summaries(conn, trace_ids)
        return [summaries[t] for t in trace_ids if t in summaries]

    @staticmethod
    def _newest_traces(
        conn: Connection, select: str, params: dict[str, Any], limit: int
    ) -> list[str]:
        """Trace ids by their newest matching span, newest first (ties by trace id).

        Matching spans are read newest first through the start-time indexes; the first time a
        trace appears is its newest matching span, so the first ``limit`` distinct ids are the
        answer. Only when a window of spans holds too few distinct traces does it fall back to
        grouping every matching span. ``select`` is the filtered query with a ``{columns}``
        placeholder.
        """
        window = limit * 50
        rows = conn.execute(
            sa.text(
                select.format(columns="s.trace_id")
                + " ORDER BY s.start_ns DESC, s.trace_id LIMIT :window"
            ),
            {**params, "window": window},
        ).all()
        seen: dict[str, None] = {}
        for (trace_id,) in rows:
            seen.setdefault(trace_id, None)
            if len(seen) == limit:
                return list(seen)
        if len(rows) < window:
            return list(seen)
        grouped = conn.execute(
            sa.text(
                select.format(columns="s.trace_id, MAX(s.start_ns) AS last")
                + " GROUP BY s.trace_id ORDER BY last DESC, s.trace_id LIMIT :limit"
            ),
            {**params, "limit": limit},
        )
        return [r[0] for r in grouped]

    def _summaries(self, conn: Connection, trace_ids: list[str]) -> dict[str, TraceSummary]:
        if not trace_ids:
            return {}
        ids: Any = sa.bindparam("ids", expanding=True)
        not_calls = ", ".join(f"'{op}'" for op in _NOT_MODEL_CALLS)
        usage = (
            f"(s.operation IS NULL OR s.operation NOT IN ({not_calls})) "
            f"AND (s.input_tokens IS NOT NULL OR s.output_tokens IS NOT NULL)"
        )
        rows = conn.execute(
            sa.text(
                "SELECT s.trace_id, MIN(s.start_ns), MAX(s.end_ns), COUNT(*), "
                f"SUM(CASE WHEN s.status_code = {STATUS_ERROR} THEN 1 ELSE 0 END), "
                f"SUM(CASE WHEN {usage} AND s.kind <> {SPAN_KIND_SERVER} "
                "THEN COALESCE(s.input_tokens, 0) ELSE 0 END), "
                f"SUM(CASE WHEN {usage} AND s.kind <> {SPAN_KIND_SERVER} "
                "THEN COALESCE(s.output_tokens, 0) ELSE 0 END), "
                f"SUM(CASE WHEN {usage} AND s.kind <> {SPAN_KIND_SERVER} THEN 1 ELSE 0 END), "
                f"SUM(CASE WHEN {usage} AND s.kind = {SPAN_KIND_SERVER} "
                "THEN COALESCE(s.input_tokens, 0) ELSE 0 END), "
                f"SUM(CASE WHEN {usage} AND s.kind = {SPAN_KIND_SERVER} "
                "THEN COALESCE(s.output_tokens, 0) ELSE 0 END) "
                "FROM trace_spans s WHERE s.trace_id IN :ids GROUP BY s.trace_id"
            ).bindparams(ids),
            {"ids": trace_ids},
        ).all()
        roots: dict[str, tuple[str, str]] = {}
        services: dict[str, set[str]] = {}
        for r in conn.execute(
            sa.text(
                "SELECT trace_id, name, service, parent_span_id, start_ns FROM trace_spans "
                "WHERE trace_id IN :ids ORDER BY start_ns"
            ).bindparams(ids),
            {"ids": trace_ids},
        ):
            services.setdefault(r[0], set()).add(r[2])
            if r[3] is None and r[0] not in roots:
                roots[r[0]] = (r[1], r[2])
        out: dict[str, TraceSummary] = {}
        for r in rows:
            client_calls = int(r[7] or 0)
            tokens_in = int(r[5] or 0) if client_calls else int(r[8] or 0)
            tokens_out = int(r[6] or 0) if client_calls else int(r[9] or 0)
            root = roots.get(r[0])
            out[r[0]] = TraceSummary(
                trace_id=r[0],
                root_name=root[0] if root else None,
                root_service=root[1] if root else None,
                start_ns=int(r[1]),
                end_ns=int(r[2]),
                span_count=int(r[3]),
                error_count=int(r[4] or 0),
                services=sorted(services.get(r[0], ())),
                input_tokens=tokens_in,
                output_tokens=tokens_out,
            )
        return out

    def get_trace(self, trace_id: str) -> tuple[TraceSummary, list[StoredSpan]]:
        """One trace's summary and its spans in start order.

        Raises:
            NotFoundError: no span of that trace is stored.
        """
        trace_id = trace_id.strip().lower()
        with self.db.read() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT trace_id, span_id, parent_span_id, name, service, kind, start_ns, "
                    "end_ns, status_code, status_message, scope, attributes, resource, events, "
                    "links FROM trace_spans WHERE trace_id = :t ORDER BY start_ns, pk"
                ),
                {"t": trace_id},
            ).all()
            summary = self._summaries(conn, [trace_id]).get(trace_id)
        if not rows or summary is None:
            raise NotFoundError(f"trace {trace_id!r} is not stored")
        spans = [
            StoredSpan(
                trace_id=r[0],
                span_id=r[1],
                parent_span_id=r[2],
                name=r[3],
                service=r[4],
                kind=int(r[5]),
                start_ns=int(r[6]),
                end_ns=int(r[7]),
                status_code=int(r[8]),
                status_message=r[9],
                scope=r[10],
                attributes=orjson.loads(r[11]),
                resource=orjson.loads(r[12]),
                events=orjson.loads(r[13]) if r[13] else [],
                links=orjson.loads(r[14]) if r[14] else [],
            )
            for r in rows
        ]
        return summary, spans

    def count(self) -> int:
        """How many spans are stored."""
        with self.db.read() as conn:
            return int(conn.execute(sa.text("SELECT COUNT(*) FROM trace_spans")).scalar() or 0)
