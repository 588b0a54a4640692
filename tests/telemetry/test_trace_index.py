"""The attribute index: which values are indexed, its bucketed layout, and the migration to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command

from flywheel.metadata import Database
from flywheel.project import Project
from flywheel.telemetry import SpanRecord, TraceFormatError, TraceQuery, TraceStore, decode_spans
from flywheel.telemetry._store import BUCKET_SHIFT, index_rows

# Every kind of value, at and past the limits: what is indexed is text up to 256 characters,
# integers and booleans, under keys up to 255 characters.
ATTRIBUTES: dict[str, Any] = {
    "text": "x" * 256,
    "too_long": "y" * 257,
    "k" * 255: "longest key",
    "k" * 256: "key too long",
    "neg": -5,
    "big": 2**62,
    "yes": True,
    "no": False,
    "float": 1.5,
    "array": [1, 2],
    "unicode": "häß ✓",
    "empty": "",
}


def _record(i: int, attributes: dict[str, Any]) -> SpanRecord:
    return SpanRecord(
        trace_id=f"{i // 4 + 1:032x}",
        span_id=f"{i + 1:016x}",
        parent_span_id=None,
        name="op",
        service="svc",
        kind=1,
        start_ns=1_700_000_000_000_000_000 + i * 1000,
        end_ns=1_700_000_000_000_000_000 + i * 1000 + 500,
        status_code=0,
        status_message=None,
        scope=None,
        attributes=attributes,
        resource={"service.name": "svc"},
        events=[],
        links=[],
    )


def _stored_index(db: Database) -> set[tuple[Any, ...]]:
    with db.read() as conn:
        rows = conn.execute(
            sa.text("SELECT bucket, key, value, span_pk FROM trace_span_attributes")
        ).all()
    return {tuple(r) for r in rows}


def test_index_rows_follow_the_rules_and_span_buckets(any_project: Project) -> None:
    # 1,500 spans: more than one bucket; every 100th span carries the odd values.
    records = [
        _record(i, ATTRIBUTES if i % 100 == 0 else {"user": f"u{i % 7}", "n": i})
        for i in range(1500)
    ]
    store = TraceStore(any_project.db)
    assert store.insert(records[:700]) == 700
    assert store.insert(records[700:]) == 800
    with any_project.db.read() as conn:
        pk_of = dict(conn.execute(sa.text("SELECT span_id, pk FROM trace_spans")).all())
    pks = [int(pk_of[r.span_id]) for r in records]
    expected = set(index_rows([r.attributes for r in records], pks))
    assert _stored_index(any_project.db) == expected
    assert len({row[0] for row in expected}) >= 2  # the spans fill more than one bucket
    assert all(bucket == pk >> BUCKET_SHIFT for bucket, _k, _v, pk in expected)
    odd = {(k, v) for _b, k, v, pk in expected if pk == pks[0]}
    assert odd == {
        ("text", "x" * 256),
        ("k" * 255, "longest key"),
        ("neg", "-5"),
        ("big", str(2**62)),
        ("yes", "true"),
        ("no", "false"),
        ("unicode", "häß ✓"),
        ("empty", ""),
    }

    def ids(attributes: dict[str, str | None]) -> set[str]:
        found = store.search(TraceQuery(attributes=attributes, limit=1000))
        return {t.trace_id for t in found}

    odd_traces = {r.trace_id for r in records if r.attributes is ATTRIBUTES}
    assert len(odd_traces) == 15
    assert ids({"yes": "true"}) == odd_traces
    assert ids({"neg": "-5", "unicode": "häß ✓"}) == odd_traces
    assert ids({"empty": ""}) == odd_traces
    assert ids({"too_long": None}) == set()  # stored, not indexed
    assert ids({"float": "1.5"}) == set()
    user3 = {r.trace_id for r in records if r.attributes.get("user") == "u3"}
    assert ids({"user": "u3"}) == user3
    assert ids({"user": "u3", "n": "1403"}) == {records[1403].trace_id}
    assert ids({"user": None}) == {r.trace_id for r in records if "user" in r.attributes}


@pytest.fixture(params=["sqlite", "postgres"])
def metadata_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'meta.db'}"
    else:
        yield request.getfixturevalue("postgres_url")


def test_migration_to_bucketed_index_keeps_stored_spans_searchable(metadata_url: str) -> None:
    db = Database(metadata_url)
    with db.engine.connect() as conn:
        command.upgrade(db._alembic_config(conn), "telemetry_0001")
        conn.commit()
    with db.write() as conn:
        for pk in (1, 2000, 5000):
            conn.execute(
                sa.text(
                    "INSERT INTO trace_spans (pk, trace_id, span_id, name, service, kind, "
                    "start_ns, end_ns, duration_ns, status_code, attributes, resource, "
                    "ingested_at) VALUES (:pk, :t, :s, 'op', 'svc', 1, :pk, :pk, 0, 0, "
                    "'{\"user\": \"ann\"}', '{}', 0)"
                ),
                {"pk": pk, "t": f"{pk:032x}", "s": f"{pk:016x}"},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO trace_span_attributes (key, value, span_pk) "
                    "VALUES ('user', 'ann', :pk)"
                ),
                {"pk": pk},
            )
    db.upgrade()
    assert _stored_index(db) == {(pk >> BUCKET_SHIFT, "user", "ann", pk) for pk in (1, 2000, 5000)}
    found = TraceStore(db).search(TraceQuery(attributes={"user": "ann"}))
    assert [t.trace_id for t in found] == [f"{pk:032x}" for pk in (5000, 2000, 1)]
    db.engine.dispose()


def test_times_past_int64_are_rejected_naming_the_field() -> None:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    request = ExportTraceServiceRequest()
    sp = request.resource_spans.add().scope_spans.add().spans.add()
    sp.trace_id, sp.span_id, sp.name = b"\x01" * 16, b"\x02" * 8, "op"
    sp.start_time_unix_nano, sp.end_time_unix_nano = 1, 2**63
    with pytest.raises(TraceFormatError, match=r"spans\[0\]\.endTimeUnixNano: .* 2262"):
        decode_spans(request.SerializeToString(), "application/x-protobuf")


def test_token_counts_are_searched_through_their_columns_not_the_index(
    any_project: Project,
) -> None:
    usage = [
        {"gen_ai.usage.input_tokens": 120, "gen_ai.usage.output_tokens": 7, "m": "a"},
        {"gen_ai.usage.input_tokens": 121, "m": "a"},
        {"gen_ai.usage.input_tokens": 2.5, "m": "b"},  # not an integer: no column value
        {"m": "c"},
    ]
    records = [_record(i * 4, attributes) for i, attributes in enumerate(usage)]
    store = TraceStore(any_project.db)
    assert store.insert(records) == 4
    # No index rows for the token counts; the other attributes are indexed as before.
    assert {(k, v) for _b, k, v, _pk in _stored_index(any_project.db)} == {
        ("m", "a"),
        ("m", "b"),
        ("m", "c"),
    }

    def ids(attributes: dict[str, str | None]) -> list[str]:
        return [t.trace_id for t in store.search(TraceQuery(attributes=attributes))]

    first, second, third, _fourth = (r.trace_id for r in records)
    assert ids({"gen_ai.usage.input_tokens": "120"}) == [first]
    assert ids({"gen_ai.usage.input_tokens": "121", "m": "a"}) == [second]
    assert ids({"gen_ai.usage.input_tokens": "121", "m": "b"}) == []
    assert ids({"gen_ai.usage.output_tokens": None}) == [first]
    assert ids({"gen_ai.usage.input_tokens": None}) == [second, first]
    # Written as the index would write an integer, or no match (as before: text equality).
    for text in ("0120", "120.0", "+120", "many", str(2**64)):
        assert ids({"gen_ai.usage.input_tokens": text}) == [], text
    assert third not in ids({"gen_ai.usage.input_tokens": None})
    # Token totals still come from the same columns.
    (summary,) = store.search(TraceQuery(attributes={"gen_ai.usage.input_tokens": "120"}))
    assert (summary.input_tokens, summary.output_tokens) == (120, 7)
