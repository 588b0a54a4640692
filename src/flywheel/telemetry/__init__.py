"""Telemetry: OpenTelemetry spans that Flywheel emits, ingests over OTLP, stores and searches.

Shared ground: imports no system.

- ``span(name, **attrs)``: a context manager for a span (no-op while tracing is off).
- ``configure_tracing(TracingSettings, db)``: this process's spans to the store and/or an
  OTLP/HTTP collector (``telemetry:`` in ``flywheel.yaml``).
- ``TraceStore``: spans in the metadata store; ``search(TraceQuery)``, ``get_trace(id)``.
- ``decode_spans``: an OTLP/HTTP body (protobuf or JSON) as validated ``SpanRecord``s;
  ``decode_batch``: the same as ``trace_spans`` rows (``SpanBatch``, what ingest stores).
- ``router``: ``POST /v1/traces``, ``GET /traces``, ``GET /traces/{id}``.

Errors: ``TraceFormatError`` (400, a bad OTLP payload), ``UnsupportedMediaType`` (415),
``TraceQueryError`` (400, a bad search filter).
"""

from flywheel.telemetry._api import (
    build_query,
    parse_attribute_filters,
    parse_time,
    router,
    tracing_service,
)
from flywheel.telemetry._emit import (
    NOOP_SPAN,
    GenAIAwareSampler,
    SpanLike,
    StoreSpanExporter,
    Tracing,
    TracingSettings,
    active_tracing,
    attach_remote_parent,
    configure_tracing,
    current_trace_id,
    detach_remote_parent,
    disable_tracing,
    set_error,
    span,
    trace_headers,
)
from flywheel.telemetry._otlp import (
    SpanBatch,
    SpanRecord,
    TraceFormatError,
    UnsupportedMediaType,
    batch_from_request,
    decode_batch,
    decode_body,
    decode_spans,
    records_from_request,
)
from flywheel.telemetry._store import (
    StoredSpan,
    TraceQuery,
    TraceQueryError,
    TraceStore,
    TraceSummary,
)

__all__ = [
    "NOOP_SPAN",
    "GenAIAwareSampler",
    "SpanBatch",
    "SpanLike",
    "SpanRecord",
    "StoreSpanExporter",
    "StoredSpan",
    "TraceFormatError",
    "TraceQuery",
    "TraceQueryError",
    "TraceStore",
    "TraceSummary",
    "Tracing",
    "TracingSettings",
    "UnsupportedMediaType",
    "active_tracing",
    "attach_remote_parent",
    "batch_from_request",
    "build_query",
    "configure_tracing",
    "current_trace_id",
    "decode_batch",
    "decode_body",
    "decode_spans",
    "detach_remote_parent",
    "disable_tracing",
    "parse_attribute_filters",
    "parse_time",
    "records_from_request",
    "router",
    "set_error",
    "span",
    "trace_headers",
    "tracing_service",
]
