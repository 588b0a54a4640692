"""Decoding OTLP/HTTP trace payloads (protobuf and JSON) into ``SpanRecord``s.

Everything in a request is validated before anything is stored: one bad span rejects the whole
request with a ``TraceFormatError`` naming the field (``resourceSpans[0].scopeSpans[1].spans[7]
.traceId: ...``), so a retry of a fixed payload never duplicates half of it.

OTLP/JSON differs from protobuf's canonical JSON in one way that matters: trace and span ids are
hex strings, not base64. They are rewritten to base64 before ``json_format.ParseDict`` so that the
one protobuf decoder handles both encodings.

Decoding is the larger half of ingest's CPU, so spans are read through a *lazy view* of the OTLP
messages (``_LazyExportRequest``): the same field numbers and wire types as
``ExportTraceServiceRequest``, except that a span's attributes are a ``map<string, bytes>`` (a
``KeyValue`` is wire-identical to a map entry) holding each raw ``AnyValue``, and the resource,
scope, status, events and links stay bytes until they are needed. One C call then gives a span's
attributes as ``{key: raw}``; the common values (short text, small integers, booleans) are read
from those bytes directly and the rest through ``AnyValue`` itself, instead of wrapping every
``KeyValue`` and ``AnyValue`` in a Python object. Each span becomes its ``trace_spans`` row right
away (``SpanBatch``), with no record object in between.
"""

from __future__ import annotations

import base64
import gzip
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, InstrumentationScope
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from flywheel.errors import FlywheelError

PROTOBUF = "application/x-protobuf"
JSON = "application/json"

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
_MAX_NS = 2**63 - 1  # times are stored as signed 64-bit integers


class TraceFormatError(FlywheelError):
    """An OTLP payload that cannot be stored: wrong encoding, bad ids, impossible times."""

    status_code = 400


class UnsupportedMediaType(FlywheelError):
    """A content type or encoding that OTLP/HTTP does not define."""

    status_code = 415


@dataclass(slots=True)
class SpanRecord:
    """One span as stored: ids as lowercase hex, times in Unix nanoseconds."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    service: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    status_message: str | None
    scope: str | None
    attributes: dict[str, Any]
    resource: dict[str, Any]
    events: list[dict[str, Any]]
    links: list[dict[str, Any]]

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns

    def to_dict(self) -> dict[str, Any]:
        """The span as ``GET /traces/{id}`` returns it (names for kind and status, ISO start)."""
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "name": self.name,
            "service": self.service,
            "kind": KIND_NAMES.get(self.kind, str(self.kind)),
            "start_time": iso_time(self.start_ns),
            "start_ns": self.start_ns,
            "end_ns": self.end_ns,
            "duration_ms": round(self.duration_ns / 1e6, 3),
            "status": STATUS_NAMES.get(self.status_code, str(self.status_code)),
            "status_message": self.status_message,
            "scope": self.scope,
            "attributes": self.attributes,
            "resource": self.resource,
            "events": self.events,
            "links": self.links,
        }


KIND_NAMES = {
    0: "unspecified",
    1: "internal",
    2: "server",
    3: "client",
    4: "producer",
    5: "consumer",
}
STATUS_NAMES = {0: "unset", 1: "ok", 2: "error"}


def iso_time(ns: int) -> str:
    """Unix nanoseconds as an ISO 8601 UTC time (microseconds)."""
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="microseconds")


def any_value(value: Any) -> Any:
    """An OTLP ``AnyValue`` as plain Python (bytes become base64 text)."""
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    if which == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return getattr(value, which)


def _attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        v = kv.value
        which = v.WhichOneof("value")
        if which == "string_value":
            out[kv.key] = v.string_value
        elif which == "int_value":
            out[kv.key] = v.int_value
        elif which is not None:
            out[kv.key] = any_value(v)
    return out


def request_bytes(body: bytes, content_type: str, content_encoding: str = "") -> bytes:
    """A request body as the protobuf bytes of an ``ExportTraceServiceRequest``.

    Protobuf bodies are passed through (after decompression); JSON bodies are parsed into the
    message and serialised, so that both encodings are decoded by the same code.

    Raises:
        UnsupportedMediaType: a content type other than protobuf or JSON, or an unknown encoding.
        TraceFormatError: the body is not valid data of that type.
    """
    encoding = content_encoding.strip().lower()
    if encoding in ("gzip", "deflate"):
        try:
            body = gzip.decompress(body) if encoding == "gzip" else zlib.decompress(body)
        except (OSError, EOFError, zlib.error) as exc:
            raise TraceFormatError(f"body: not valid {encoding} data ({exc})") from None
    elif encoding not in ("", "identity"):
        raise UnsupportedMediaType(
            f"Content-Encoding {content_encoding!r} is not supported; use gzip or none"
        )
    media = content_type.split(";", 1)[0].strip().lower()
    if media == PROTOBUF:
        return bytes(body)
    if media == JSON:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise TraceFormatError(f"body: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise TraceFormatError("body: must be a JSON object with resourceSpans")
        _check_objects(data, ExportTraceServiceRequest.DESCRIPTOR, "body", 0)
        _hex_ids_to_base64(data)
        request = ExportTraceServiceRequest()
        try:
            json_format.ParseDict(data, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise TraceFormatError(f"body: {exc}") from None
        return request.SerializeToString()
    raise UnsupportedMediaType(
        f"Content-Type {content_type or '(none)'!r} is not OTLP; send {PROTOBUF} or {JSON}"
    )


def decode_body(body: bytes, content_type: str, content_encoding: str = "") -> Any:
    """Parse a request body into an ``ExportTraceServiceRequest`` (see ``request_bytes``)."""
    request = ExportTraceServiceRequest()
    try:
        request.ParseFromString(request_bytes(body, content_type, content_encoding))
    except DecodeError as exc:
        raise TraceFormatError(f"body: not a valid OTLP protobuf message ({exc})") from None
    return request


_MAX_JSON_DEPTH = 100  # json_format.ParseDict's own limit on nested messages
_MESSAGE_FIELDS: dict[str, dict[str, Any]] = {}


def _message_fields(descriptor: Any) -> dict[str, Any]:
    """A message's message-typed fields by JSON name and by proto name."""
    fields = _MESSAGE_FIELDS.get(descriptor.full_name)
    if fields is None:
        fields = {}
        for field in descriptor.fields:
            if field.message_type is not None:
                fields[field.json_name] = fields[field.name] = field
        _MESSAGE_FIELDS[descriptor.full_name] = fields
    return fields


def _check_objects(value: Any, descriptor: Any, where: str, depth: int) -> None:
    """Refuse a JSON value that stands for a message but is not an object.

    ``json_format.ParseDict`` with ``ignore_unknown_fields`` reads a string given for a message
    as that message with unknown fields (``"resourceSpans": ["AAA"]`` would be an empty
    export, answered 200): every message, and every item of a list of messages, must be a JSON
    object (null is the default, as protobuf's JSON mapping reads it).
    """
    if not isinstance(value, dict):
        raise TraceFormatError(f"{where}: must be an object")
    if depth > _MAX_JSON_DEPTH:
        raise TraceFormatError(f"{where}: nested more than {_MAX_JSON_DEPTH} messages deep")
    fields = _message_fields(descriptor)
    for key, item in value.items():
        field = fields.get(key)
        if field is None or item is None:
            continue
        if field.is_repeated:
            if not isinstance(item, list):
                raise TraceFormatError(f"{where}.{key}: must be an array")
            for n, element in enumerate(item):
                _check_objects(element, field.message_type, f"{where}.{key}[{n}]", depth + 1)
        else:
            _check_objects(item, field.message_type, f"{where}.{key}", depth + 1)


def _hex_field(obj: dict[str, Any], key: str, size: int, where: str) -> None:
    value = obj.get(key)
    if value is None or value == "":
        return
    if not isinstance(value, str):
        raise TraceFormatError(f"{where}.{key}: must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise TraceFormatError(f"{where}.{key}: {value!r} is not hex") from None
    if len(raw) != size:
        raise TraceFormatError(f"{where}.{key}: must be {size * 2} hex digits (got {len(value)})")
    obj[key] = base64.b64encode(raw).decode()


def _items(obj: Any, key: str, where: str) -> list[Any]:
    value = obj.get(key) if isinstance(obj, dict) else None
    if value is None:
        return []
    if not isinstance(value, list):
        raise TraceFormatError(f"{where}.{key}: must be an array")
    return value


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    for i, rs in enumerate(_items(data, "resourceSpans", "body")):
        w_rs = f"resourceSpans[{i}]"
        for j, ss in enumerate(_items(rs, "scopeSpans", w_rs)):
            w_ss = f"{w_rs}.scopeSpans[{j}]"
            for k, span in enumerate(_items(ss, "spans", w_ss)):
                where = f"{w_ss}.spans[{k}]"
                if not isinstance(span, dict):
                    raise TraceFormatError(f"{where}: must be an object")
                _hex_field(span, "traceId", 16, where)
                _hex_field(span, "spanId", 8, where)
                _hex_field(span, "parentSpanId", 8, where)
                for m, link in enumerate(_items(span, "links", where)):
                    if isinstance(link, dict):
                        _hex_field(link, "traceId", 16, f"{where}.links[{m}]")
                        _hex_field(link, "spanId", 8, f"{where}.links[{m}]")


# -- the lazy view and span rows ----------------------------------------------------------------

# The columns of a ``trace_spans`` row as decoding builds it; ``pk`` is assigned when it is stored.
ROW_COLUMNS = (
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


@dataclass(slots=True)
class SpanBatch:
    """The validated spans of one export as ``trace_spans`` rows (``ROW_COLUMNS`` order), and
    each span's attributes (PostgreSQL builds the attribute index from them in Python)."""

    rows: list[tuple[Any, ...]]
    attributes: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.rows)


def _lazy_request_class() -> Any:
    """``ExportTraceServiceRequest`` as seen by ``batch_from_bytes`` (see the module docstring).

    Field numbers and wire types are those of opentelemetry-proto's trace.proto (checked
    against it by a test); only the declared types of the lazily read fields differ.
    """
    f = descriptor_pb2.FieldDescriptorProto
    proto = descriptor_pb2.FileDescriptorProto(
        name="flywheel/telemetry/otlp_lazy.proto", package="flywheel.otlp_lazy", syntax="proto3"
    )

    def message(name: str, fields: list[tuple[str, int, int, bool, str]]) -> Any:
        msg = proto.message_type.add(name=name)
        for field_name, number, kind, repeated, type_name in fields:
            label = f.LABEL_REPEATED if repeated else f.LABEL_OPTIONAL
            fd = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                fd.type_name = f".flywheel.otlp_lazy.{type_name}"
        return msg

    span = message(
        "Span",
        [
            ("trace_id", 1, f.TYPE_BYTES, False, ""),
            ("span_id", 2, f.TYPE_BYTES, False, ""),
            ("trace_state", 3, f.TYPE_STRING, False, ""),
            ("parent_span_id", 4, f.TYPE_BYTES, False, ""),
            ("flags", 16, f.TYPE_FIXED32, False, ""),
            ("name", 5, f.TYPE_STRING, False, ""),
            ("kind", 6, f.TYPE_INT32, False, ""),
            ("start_time_unix_nano", 7, f.TYPE_FIXED64, False, ""),
            ("end_time_unix_nano", 8, f.TYPE_FIXED64, False, ""),
            ("attributes", 9, f.TYPE_MESSAGE, True, "Span.AttributesEntry"),
            ("dropped_attributes_count", 10, f.TYPE_UINT32, False, ""),
            ("events", 11, f.TYPE_BYTES, True, ""),
            ("dropped_events_count", 12, f.TYPE_UINT32, False, ""),
            ("links", 13, f.TYPE_BYTES, True, ""),
            ("dropped_links_count", 14, f.TYPE_UINT32, False, ""),
            ("status", 15, f.TYPE_BYTES, False, ""),
        ],
    )
    entry = span.nested_type.add(name="AttributesEntry")
    entry.field.add(name="key", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=f.TYPE_BYTES, label=f.LABEL_OPTIONAL)
    entry.options.map_entry = True
    message(
        "ScopeSpans",
        [
            ("scope", 1, f.TYPE_BYTES, False, ""),
            ("spans", 2, f.TYPE_MESSAGE, True, "Span"),
            ("schema_url", 3, f.TYPE_STRING, False, ""),
        ],
    )
    message(
        "ResourceSpans",
        [
            ("resource", 1, f.TYPE_BYTES, False, ""),
            ("scope_spans", 2, f.TYPE_MESSAGE, True, "ScopeSpans"),
            ("schema_url", 3, f.TYPE_STRING, False, ""),
        ],
    )
    message(
        "ExportTraceServiceRequest", [("resource_spans", 1, f.TYPE_MESSAGE, True, "ResourceSpans")]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("flywheel.otlp_lazy.ExportTraceServiceRequest")
    )


_LazyExportRequest = _lazy_request_class()


def _raw_value(raw: bytes) -> Any:
    """A serialised ``AnyValue`` as plain Python (None when no value is set).

    Text under 16 KiB, integers 0..16383 and booleans -- what most attributes hold -- are read
    from the bytes (a single field filling the whole value); anything else is parsed.
    """
    n = len(raw)
    if n >= 2:
        tag = raw[0]
        b1 = raw[1]
        if tag == 10:  # string_value, length as a 1- or 2-byte varint
            if b1 < 128:
                if b1 == n - 2:
                    return raw[2:].decode()
            elif n >= 3 and raw[2] < 128 and (b1 & 127) | (raw[2] << 7) == n - 3:
                return raw[3:].decode()
        elif tag == 24:  # int_value
            if n == 2 and b1 < 128:
                return b1
            if n == 3 and b1 >= 128 and raw[2] < 128:
                return (b1 & 127) | (raw[2] << 7)
        elif tag == 16 and n == 2 and b1 < 2:  # bool_value
            return b1 == 1
    elif n == 0:
        return None
    return any_value(AnyValue.FromString(raw))


def _raw_attributes(entries: Any) -> dict[str, Any]:
    """A lazy span's ``{key: raw AnyValue}`` map as ``{key: value}`` (unset values left out).

    Raises ``DecodeError`` or ``UnicodeDecodeError`` for a malformed value.
    """
    out: dict[str, Any] = {}
    for key, raw in entries.items():
        n = len(raw)
        # The most common case inline: short text.
        if n >= 2 and raw[0] == 10 and raw[1] == n - 2 and n < 130:
            out[key] = raw[2:].decode()
        else:
            value = _raw_value(raw)
            if value is not None:
                out[key] = value
    return out


def _int_or_none(value: Any) -> int | None:
    kind = type(value)
    if kind is int:
        return int(value)
    if kind is float and value.is_integer():
        return int(value)
    return None


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def span_row(
    trace_id: str,
    span_id: str,
    parent_span_id: str | None,
    name: str,
    service: str,
    kind: int,
    start_ns: int,
    end_ns: int,
    status_code: int,
    status_message: str | None,
    scope: str | None,
    attributes: dict[str, Any],
    resource_json: str,
    events_json: str | None,
    links_json: str | None,
    ingested_at: float,
) -> tuple[Any, ...]:
    """One ``trace_spans`` row (``ROW_COLUMNS`` order): GenAI operation, model and token usage
    pulled out of the attributes into their own columns; attributes stored with sorted keys
    (the lazy view's map has no order of its own)."""
    get = attributes.get
    model = get("gen_ai.request.model") or get("gen_ai.response.model")
    operation = get("gen_ai.operation.name")
    return (
        trace_id,
        span_id,
        parent_span_id,
        name,
        service,
        kind,
        start_ns,
        end_ns,
        end_ns - start_ns,
        status_code,
        status_message,
        scope,
        operation if type(operation) is str else None,
        model if type(model) is str else None,
        _int_or_none(get("gen_ai.usage.input_tokens")),
        _int_or_none(get("gen_ai.usage.output_tokens")),
        orjson.dumps(attributes, option=orjson.OPT_SORT_KEYS).decode(),
        resource_json,
        events_json,
        links_json,
        ingested_at,
    )


def batch_from_bytes(data: bytes) -> SpanBatch:
    """Every span of a serialised ``ExportTraceServiceRequest``, validated, as rows.

    Raises:
        TraceFormatError: the bytes are not an OTLP trace export, or a span has a missing or
            zero trace/span id, a parent id of the wrong size, no name, no start time, an end
            before its start or past int64, or a malformed attribute, event, link or status.
    """
    try:
        request = _LazyExportRequest.FromString(data)
    except DecodeError as exc:
        raise TraceFormatError(f"body: not a valid OTLP protobuf message ({exc})") from None
    now = time.time()
    rows: list[tuple[Any, ...]] = []
    attributes: list[dict[str, Any]] = []
    add_row = rows.append
    add_attributes = attributes.append
    for i, rs in enumerate(request.resource_spans):
        where_rs = f"resourceSpans[{i}]"
        try:
            resource = _attributes(Resource.FromString(rs.resource).attributes)
        except (DecodeError, UnicodeDecodeError) as exc:
            raise TraceFormatError(f"{where_rs}.resource: not a valid Resource ({exc})") from None
        service = str(resource.get("service.name") or "unknown_service")
        resource_json = _dumps(resource)
        for j, ss in enumerate(rs.scope_spans):
            scope = None
            if ss.scope:
                try:
                    scope = InstrumentationScope.FromString(ss.scope).name or None
                except DecodeError as exc:
                    raise TraceFormatError(
                        f"{where_rs}.scopeSpans[{j}].scope: not a valid scope ({exc})"
                    ) from None
            for k, sp in enumerate(ss.spans):
                trace_id = sp.trace_id
                span_id = sp.span_id
                parent = sp.parent_span_id
                start = sp.start_time_unix_nano
                end = sp.end_time_unix_nano
                name = sp.name
                if (
                    len(trace_id) != 16
                    or trace_id == _ZERO_TRACE
                    or len(span_id) != 8
                    or span_id == _ZERO_SPAN
                    or len(parent) not in (0, 8)
                    or not name
                    or start <= 0
                    or end < start
                    or end > _MAX_NS
                ):
                    _raise_span_error(sp, f"{where_rs}.scopeSpans[{j}].spans[{k}]")
                try:
                    attrs = _raw_attributes(sp.attributes)
                    status = sp.status
                    if status:
                        parsed = Status.FromString(status)
                        status_code, status_message = parsed.code, parsed.message or None
                    else:
                        status_code, status_message = 0, None
                    # Most spans have neither events nor links.
                    events = _events(sp.events) if sp.events else None
                    links = _links(sp.links) if sp.links else None
                except (DecodeError, UnicodeDecodeError) as exc:
                    raise TraceFormatError(
                        f"{where_rs}.scopeSpans[{j}].spans[{k}]: malformed attribute, "
                        f"event, link or status ({exc})"
                    ) from None
                add_attributes(attrs)
                add_row(
                    span_row(
                        trace_id.hex(),
                        span_id.hex(),
                        parent.hex() if parent and parent != _ZERO_SPAN else None,
                        name,
                        service,
                        sp.kind,
                        start,
                        end,
                        status_code,
                        status_message,
                        scope,
                        attrs,
                        resource_json,
                        events,
                        links,
                        now,
                    )
                )
    return SpanBatch(rows, attributes)


def _events(raws: Sequence[bytes]) -> str:
    out = []
    for raw in raws:
        e = Span.Event.FromString(raw)
        out.append(
            {"name": e.name, "time_ns": e.time_unix_nano, "attributes": _attributes(e.attributes)}
        )
    return _dumps(out)


def _links(raws: Sequence[bytes]) -> str:
    out = []
    for raw in raws:
        ln = Span.Link.FromString(raw)
        out.append(
            {
                "trace_id": ln.trace_id.hex(),
                "span_id": ln.span_id.hex(),
                "attributes": _attributes(ln.attributes),
            }
        )
    return _dumps(out)


def _raise_span_error(sp: Any, where: str) -> None:
    if len(sp.trace_id) != 16:
        raise TraceFormatError(f"{where}.traceId: must be 16 bytes (got {len(sp.trace_id)})")
    if sp.trace_id == _ZERO_TRACE:
        raise TraceFormatError(f"{where}.traceId: must not be all zeros")
    if len(sp.span_id) != 8:
        raise TraceFormatError(f"{where}.spanId: must be 8 bytes (got {len(sp.span_id)})")
    if sp.span_id == _ZERO_SPAN:
        raise TraceFormatError(f"{where}.spanId: must not be all zeros")
    if len(sp.parent_span_id) not in (0, 8):
        raise TraceFormatError(
            f"{where}.parentSpanId: must be empty or 8 bytes (got {len(sp.parent_span_id)})"
        )
    if not sp.name:
        raise TraceFormatError(f"{where}.name: must not be empty")
    if sp.start_time_unix_nano <= 0:
        raise TraceFormatError(f"{where}.startTimeUnixNano: must be set")
    if sp.end_time_unix_nano > _MAX_NS:
        raise TraceFormatError(
            f"{where}.endTimeUnixNano: {sp.end_time_unix_nano} is past the year 2262"
        )
    raise TraceFormatError(
        f"{where}.endTimeUnixNano: {sp.end_time_unix_nano} is before startTimeUnixNano "
        f"{sp.start_time_unix_nano}"
    )


def decode_batch(body: bytes, content_type: str, content_encoding: str = "") -> SpanBatch:
    """The spans of one OTLP/HTTP request body as validated rows (what ``POST /v1/traces``
    stores)."""
    return batch_from_bytes(request_bytes(body, content_type, content_encoding))


def batch_from_request(request: Any) -> SpanBatch:
    """The spans of an ``ExportTraceServiceRequest`` message as validated rows."""
    return batch_from_bytes(request.SerializeToString())


def records_from_batch(batch: SpanBatch) -> list[SpanRecord]:
    """A batch's spans as ``SpanRecord``s (what the store would return for them)."""
    return [
        SpanRecord(
            trace_id=row[0],
            span_id=row[1],
            parent_span_id=row[2],
            name=row[3],
            service=row[4],
            kind=row[5],
            start_ns=row[6],
            end_ns=row[7],
            status_code=row[9],
            status_message=row[10],
            scope=row[11],
            attributes=attrs,
            resource=orjson.loads(row[17]),
            events=orjson.loads(row[18]) if row[18] else [],
            links=orjson.loads(row[19]) if row[19] else [],
        )
        for row, attrs in zip(batch.rows, batch.attributes, strict=True)
    ]


def batch_from_records(records: Sequence[SpanRecord]) -> SpanBatch:
    """``SpanRecord``s (already valid) as a batch of rows, for ``TraceStore.insert``."""
    now = time.time()
    resources: dict[int, str] = {}  # spans of one resource share its dict: dump it once
    rows = []
    for r in records:
        resource = resources.get(id(r.resource))
        if resource is None:
            resource = resources[id(r.resource)] = _dumps(r.resource)
        rows.append(
            span_row(
                r.trace_id,
                r.span_id,
                r.parent_span_id,
                r.name,
                r.service,
                r.kind,
                r.start_ns,
                r.end_ns,
                r.status_code,
                r.status_message,
                r.scope,
                r.attributes,
                resource,
                _dumps(r.events) if r.events else None,
                _dumps(r.links) if r.links else None,
                now,
            )
        )
    return SpanBatch(rows, [r.attributes for r in records])


def records_from_request(request: Any) -> list[SpanRecord]:
    """Every span in an ``ExportTraceServiceRequest``, validated (see ``batch_from_bytes``)."""
    return records_from_batch(batch_from_request(request))


def decode_spans(body: bytes, content_type: str, content_encoding: str = "") -> list[SpanRecord]:
    """The spans of one OTLP/HTTP request as validated ``SpanRecord``s."""
    return records_from_batch(decode_batch(body, content_type, content_encoding))
