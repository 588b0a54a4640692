"""``TraceStore``: spans in the metadata store (SQLite or PostgreSQL), searched by trace.

Writes: one transaction per batch. Spans already stored (same trace and span id) are skipped,
so a retried export stores nothing twice. Rows go in with ``executemany`` on SQLite and
``COPY`` on PostgreSQL; every text (up to 256 characters), integer and boolean attribute is
indexed as ``(key, value-as-text)`` (floats, arrays and long text are stored, not indexed:
equality on them is rarely what a search wants).

Reads: ``search`` returns trace summaries, newest first, for traces holding at least one span
that matches every filter; ``get_trace`` returns all spans of one trace in start order.

Token totals per trace count GenAI model calls (``gen_ai.usage.*`` on spans that are not
``invoke_agent``/``execute_tool``); when both a client span and the server span of the same call
carry usage, the client spans are counted and the server ones are not, so a call is counted once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from flywheel.errors import FlywheelError, NotFoundError
from flywheel.metadata import Database
from flywheel.telemetry._otlp import SpanRecord, iso_time

MAX_INDEXED_VALUE = 256
MAX_INDEXED_KEY = 255
MAX_SEARCH_LIMIT = 1000
SPAN_KIND_SERVER = 2
STATUS_ERROR = 2
# Operations whose usage aggregates other spans' usage, or that are not model calls.
_NOT_MODEL_CALLS = ("invoke_agent", "execute_tool", "create_agent")

_SPAN_COLUMNS = (
    "pk",
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "service",
    "kind",
    "start_ns",
    "end_ns",
    "duration_ns",
    "status_code",
    "status_message",
    "scope",
    "operation",
    "model",
    "input_tokens",
    "output_tokens",
    "attributes",
    "resource",
    "events",
    "links",
    "ingested_at",
)
_INSERT_SPAN = (
    f"INSERT INTO trace_spans ({', '.join(_SPAN_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _SPAN_COLUMNS)})"
)
_INSERT_ATTR = "INSERT INTO trace_span_attributes (key, value, span_pk) VALUES (?, ?, ?)"


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


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


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


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


class TraceStore:
    """Store and search spans in the project's metadata store."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- writing --------------------------------------------------------------------------------

    def insert(self, records: Sequence[SpanRecord]) -> int:
        """Store spans in one transaction; returns how many were new (retries store nothing)."""
        if not records:
            return 0
        for attempt in range(3):
            try:
                with self.db.write() as conn:
                    return self._insert(conn, records)
            except sa.exc.IntegrityError:
                # Two writers raced on the same span on PostgreSQL; the retry skips it.
                if attempt == 2:
                    raise
        return 0  # unreachable

    def _insert(self, conn: Connection, records: Sequence[SpanRecord]) -> int:
        fresh = self._new_only(conn, records)
        if not fresh:
            return 0
        postgres = self.db.dialect == "postgresql"
        if postgres:
            pks = [
                r[0]
                for r in conn.execute(
                    sa.text(
                        "SELECT nextval(pg_get_serial_sequence('trace_spans', 'pk')) "
                        "FROM generate_series(1, :n)"
                    ),
                    {"n": len(fresh)},
                )
            ]
        else:
            top = conn.execute(sa.text("SELECT COALESCE(MAX(pk), 0) FROM trace_spans")).scalar()
            first = int(top or 0) + 1
            pks = list(range(first, first + len(fresh)))
        now = time.time()
        span_rows: list[tuple[Any, ...]] = []
        attr_rows: list[tuple[str, str, int]] = []
        for pk, r in zip(pks, fresh, strict=True):
            attrs = r.attributes
            get = attrs.get
            model = get("gen_ai.request.model") or get("gen_ai.response.model")
            span_rows.append(
                (
                    pk,
                    r.trace_id,
                    r.span_id,
                    r.parent_span_id,
                    r.name,
                    r.service,
                    r.kind,
                    r.start_ns,
                    r.end_ns,
                    r.end_ns - r.start_ns,
                    r.status_code,
                    r.status_message,
                    r.scope,
                    get("gen_ai.operation.name"),
                    model if isinstance(model, str) else None,
                    _int_or_none(get("gen_ai.usage.input_tokens")),
                    _int_or_none(get("gen_ai.usage.output_tokens")),
                    _dumps(attrs),
                    _dumps(r.resource),
                    _dumps(r.events) if r.events else None,
                    _dumps(r.links) if r.links else None,
                    now,
                )
            )
            for key, value in attrs.items():
                kind = type(value)
                if len(key) > MAX_INDEXED_KEY:
                    continue
                if kind is str:
                    if len(value) <= MAX_INDEXED_VALUE:
                        attr_rows.append((key, value, pk))
                elif kind is int:
                    attr_rows.append((key, str(value), pk))
                elif kind is bool:
                    attr_rows.append((key, "true" if value else "false", pk))
        if postgres:
            self._copy(conn, span_rows, attr_rows)
        else:
            cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                cursor.executemany(_INSERT_SPAN, span_rows)
                if attr_rows:
                    cursor.executemany(_INSERT_ATTR, attr_rows)
            finally:
                cursor.close()
        return len(fresh)

    @staticmethod
    def _copy(
        conn: Connection, span_rows: list[tuple[Any, ...]], attr_rows: list[tuple[str, str, int]]
    ) -> None:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY trace_spans ({', '.join(_SPAN_COLUMNS)}) FROM STDIN") as cp:
                for row in span_rows:
                    cp.write_row(row)
            if attr_rows:
                with cursor.copy(
                    "COPY trace_span_attributes (key, value, span_pk) FROM STDIN"
                ) as cp:
                    for arow in attr_rows:
                        cp.write_row(arow)
        finally:
            cursor.close()

    @staticmethod
    def _new_only(conn: Connection, records: Sequence[SpanRecord]) -> list[SpanRecord]:
        """The records not yet stored, and each (trace, span) once."""
        trace_ids = sorted({r.trace_id for r in records})
        existing: set[tuple[str, str]] = set()
        for start in range(0, len(trace_ids), 500):
            chunk = trace_ids[start : start + 500]
            rows = conn.execute(
                sa.text(
                    "SELECT trace_id, span_id FROM trace_spans WHERE trace_id IN :ids"
                ).bindparams(sa.bindparam("ids", expanding=True)),
                {"ids": chunk},
            )
            existing.update((r[0], r[1]) for r in rows)
        fresh: list[SpanRecord] = []
        for r in records:
            key = (r.trace_id, r.span_id)
            if key not in existing:
                existing.add(key)
                fresh.append(r)
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
        for i, (key, value) in enumerate(sorted(query.attributes.items())):
            params[f"ak{i}"] = key
            if value is None:
                where.append(
                    f"s.pk IN (SELECT span_pk FROM trace_span_attributes WHERE key = :ak{i})"
                )
            else:
                params[f"av{i}"] = value
                where.append(
                    f"s.pk IN (SELECT span_pk FROM trace_span_attributes "
                    f"WHERE key = :ak{i} AND value = :av{i})"
                )
        where_sql = (" WHERE " + " AND ".join(where)) if where else ""
        with self.db.read() as conn:
            trace_ids = self._newest_traces(conn, where_sql, params, query.limit)
            summaries = self._summaries(conn, trace_ids)
        return [summaries[t] for t in trace_ids if t in summaries]

    @staticmethod
    def _newest_traces(
        conn: Connection, where_sql: str, params: dict[str, Any], limit: int
    ) -> list[str]:
        """Trace ids by their newest matching span, newest first (ties by trace id).

        Matching spans are read newest first through the start-time indexes; the first time a
        trace appears is its newest matching span, so the first ``limit`` distinct ids are the
        answer. Only when a window of spans holds too few distinct traces does it fall back to
        grouping every matching span.
        """
        window = limit * 50
        rows = conn.execute(
            sa.text(
                f"SELECT s.trace_id FROM trace_spans s{where_sql} "
                "ORDER BY s.start_ns DESC, s.trace_id LIMIT :window"
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
                f"SELECT s.trace_id, MAX(s.start_ns) AS last FROM trace_spans s{where_sql} "
                "GROUP BY s.trace_id ORDER BY last DESC, s.trace_id LIMIT :limit"
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
