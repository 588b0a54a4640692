"""Decoding OTLP/HTTP trace payloads (protobuf and JSON) into ``SpanRecord``s.

Everything in a request is validated before anything is stored: one bad span rejects the whole
request with a ``TraceFormatError`` naming the field (``resourceSpans[0].scopeSpans[1].spans[7]
.traceId: ...``), so a retry of a fixed payload never duplicates half of it.

OTLP/JSON differs from protobuf's canonical JSON in one way that matters: trace and span ids are
hex strings, not base64. They are rewritten to base64 before ``json_format.ParseDict`` so that the
one protobuf decoder handles both encodings.
"""

from __future__ import annotations

import base64
import gzip
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

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


def decode_body(body: bytes, content_type: str, content_encoding: str = "") -> Any:
    """Parse a request body into an ``ExportTraceServiceRequest``.

    Raises:
        UnsupportedMediaType: a content type other than protobuf or JSON, or an unknown encoding.
        TraceFormatError: the body is not a valid message of that type.
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
    request = ExportTraceServiceRequest()
    if media == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise TraceFormatError(f"body: not a valid OTLP protobuf message ({exc})") from None
        return request
    if media == JSON:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise TraceFormatError(f"body: not valid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise TraceFormatError("body: must be a JSON object with resourceSpans")
        _hex_ids_to_base64(data)
        try:
            json_format.ParseDict(data, request, ignore_unknown_fields=True)
        except json_format.ParseError as exc:
            raise TraceFormatError(f"body: {exc}") from None
        return request
    raise UnsupportedMediaType(
        f"Content-Type {content_type or '(none)'!r} is not OTLP; send {PROTOBUF} or {JSON}"
    )


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


def records_from_request(request: Any) -> list[SpanRecord]:
    """Every span in an ``ExportTraceServiceRequest``, validated.

    Raises:
        TraceFormatError: a span has a missing or zero trace/span id, a parent id of the wrong
            size, no name, no start time, or ends before it starts.
    """
    records: list[SpanRecord] = []
    append = records.append
    for i, rs in enumerate(request.resource_spans):
        resource = _attributes(rs.resource.attributes)
        service = str(resource.get("service.name") or "unknown_service")
        for j, ss in enumerate(rs.scope_spans):
            scope = ss.scope.name or None
            for k, sp in enumerate(ss.spans):
                trace_id = sp.trace_id
                span_id = sp.span_id
                parent = sp.parent_span_id
                start = sp.start_time_unix_nano
                end = sp.end_time_unix_nano
                if (
                    len(trace_id) != 16
                    or trace_id == _ZERO_TRACE
                    or len(span_id) != 8
                    or span_id == _ZERO_SPAN
                    or len(parent) not in (0, 8)
                    or not sp.name
                    or start <= 0
                    or end < start
                    or end > _MAX_NS
                ):
                    _raise_span_error(sp, f"resourceSpans[{i}].scopeSpans[{j}].spans[{k}]")
                # Most spans have no events or links: test before building (saves a frame).
                events = (
                    [
                        {
                            "name": e.name,
                            "time_ns": e.time_unix_nano,
                            "attributes": _attributes(e.attributes),
                        }
                        for e in sp.events
                    ]
                    if sp.events
                    else []
                )
                links = (
                    [
                        {
                            "trace_id": ln.trace_id.hex(),
                            "span_id": ln.span_id.hex(),
                            "attributes": _attributes(ln.attributes),
                        }
                        for ln in sp.links
                    ]
                    if sp.links
                    else []
                )
                append(
                    SpanRecord(
                        trace_id.hex(),
                        span_id.hex(),
                        parent.hex() if parent and parent != _ZERO_SPAN else None,
                        sp.name,
                        service,
                        sp.kind,
                        start,
                        end,
                        sp.status.code,
                        sp.status.message or None,
                        scope,
                        _attributes(sp.attributes),
                        resource,
                        events,
                        links,
                    )
                )
    return records


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


def decode_spans(body: bytes, content_type: str, content_encoding: str = "") -> list[SpanRecord]:
    """``decode_body`` then ``records_from_request``: the spans of one OTLP/HTTP request."""
    return records_from_request(decode_body(body, content_type, content_encoding))
