"""Emitting spans: ``span(name, **attrs)`` and the tracing set-up behind it.

``span`` is what instrumented code calls::

    from flywheel import telemetry

    with telemetry.span("recs.rank", **{"flywheel.candidates": 300}) as s:
        ...
        s.set_attribute("flywheel.ranked", 50)

With tracing off (nothing configured, or ``telemetry.exporter: none``) it returns one shared
no-op object: a call costs an attribute lookup and a function call, nothing is allocated.

``configure_tracing(settings, db)`` turns it on for this process: an OpenTelemetry SDK
``TracerProvider`` whose batch processor sends finished spans to the built-in store (the same
code path as ``POST /v1/traces``), to an OTLP/HTTP collector, or both. The latest configuration
wins; ``Tracing.shutdown()`` flushes and turns it off again.

Sampling is parent-based (a trace is kept or dropped whole). Root spans of GenAI operations
(``invoke_agent``, ``chat``, ``execute_tool``, ...: any span started with a
``gen_ai.operation.name`` attribute) are always kept; other roots are kept at ``sample_rate``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.propagate import inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import (
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from flywheel.metadata import Database
from flywheel.telemetry._otlp import batch_from_request
from flywheel.telemetry._store import TraceStore

log = logging.getLogger("flywheel.telemetry")

TRACER_NAME = "flywheel"


class SpanLike(Protocol):
    """What ``span()`` yields: a recording OpenTelemetry span, or the no-op stand-in."""

    def set_attribute(self, key: str, value: Any) -> None: ...
    def set_attributes(self, attributes: Mapping[str, Any]) -> None: ...
    def record_exception(self, exception: BaseException) -> None: ...
    def set_status(self, status: Any, description: str | None = None) -> None: ...
    def is_recording(self) -> bool: ...


class _NoopSpan:
    """Stands in for a span when tracing is off; every method does nothing."""

    __slots__ = ()

    def __enter__(self) -> _NoopSpan:
        return self

    def __exit__(self, *_exc: object) -> None:
        return None

    def set_attribute(self, key: str, value: Any) -> None:
        return None

    def set_attributes(self, attributes: Mapping[str, Any]) -> None:
        return None

    def record_exception(self, exception: BaseException) -> None:
        return None

    def set_status(self, status: Any, description: str | None = None) -> None:
        return None

    def is_recording(self) -> bool:
        return False


NOOP_SPAN = _NoopSpan()


@dataclass(frozen=True)
class TracingSettings:
    """Where spans go (see ``flywheel.config.TelemetryConfig`` for the YAML keys)."""

    exporter: str = "store"  # store | otlp | both | none
    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    otlp_headers: Mapping[str, str] = field(default_factory=dict)
    service_name: str = "flywheel"
    sample_rate: float = 1.0
    # Export each span when it ends instead of in background batches (tests, short CLI runs).
    synchronous: bool = False

    @classmethod
    def from_config(cls, config: Any, **overrides: Any) -> TracingSettings:
        """From a ``TelemetryConfig`` (``project.config.telemetry``)."""
        values = {
            "exporter": config.exporter,
            "otlp_endpoint": config.otlp_endpoint,
            "otlp_headers": dict(config.otlp_headers),
            "service_name": config.service_name,
            "sample_rate": config.sample_rate,
        }
        values.update(overrides)
        return cls(**values)


class StoreSpanExporter(SpanExporter):
    """Writes finished spans to the metadata store, through the OTLP encoding that
    ``POST /v1/traces`` decodes, so a span emitted here and one ingested over HTTP are stored
    by the same code."""

    def __init__(self, db: Database) -> None:
        self._store = TraceStore(db)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        try:
            self._store.insert_batch(batch_from_request(encode_spans(spans)))
        except Exception:
            log.exception("storing %d spans failed", len(spans))
            return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class GenAIAwareSampler(Sampler):
    """Root spans of GenAI operations always; other roots at ``rate``."""

    def __init__(self, rate: float) -> None:
        self._ratio = TraceIdRatioBased(rate)

    def should_sample(
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: Any = None,
        attributes: Any = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        if attributes and "gen_ai.operation.name" in attributes:
            return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
        return self._ratio.should_sample(
            parent_context, trace_id, name, kind, attributes, links, trace_state
        )

    def get_description(self) -> str:
        return f"GenAIAwareSampler({self._ratio.get_description()})"


class Tracing:
    """The tracing set-up of one process; made by ``configure_tracing``."""

    def __init__(self, provider: TracerProvider, settings: TracingSettings) -> None:
        self.provider = provider
        self.settings = settings
        self.tracer = provider.get_tracer(TRACER_NAME)

    def flush(self, timeout_millis: int = 10_000) -> bool:
        """Export every finished span now; True when all were exported in time."""
        return self.provider.force_flush(timeout_millis)

    def shutdown(self) -> None:
        """Flush, stop the exporters, and turn tracing off if this is the active set-up."""
        with _lock:
            if _active.get("tracing") is self:
                _active.pop("tracing", None)
        self.provider.shutdown()


# The one active set-up of this process (OpenTelemetry itself keeps its provider globally too).
_active: dict[str, Tracing] = {}
_lock = threading.Lock()


def configure_tracing(settings: TracingSettings, db: Database | None = None) -> Tracing | None:
    """Turn tracing on for this process with ``settings``; None when the exporter is ``none``.

    Args:
        settings: exporter, endpoint, service name and sample rate.
        db: the metadata store, needed when the exporter is ``store`` or ``both``.
    """
    if settings.exporter == "none":
        disable_tracing()
        return None
    provider = TracerProvider(
        sampler=ParentBased(GenAIAwareSampler(settings.sample_rate)),
        resource=Resource.create({"service.name": settings.service_name}),
        shutdown_on_exit=False,
    )
    exporters: list[SpanExporter] = []
    if settings.exporter in ("store", "both"):
        if db is None:
            raise ValueError("the store exporter needs the metadata database")
        exporters.append(StoreSpanExporter(db))
    if settings.exporter in ("otlp", "both"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        exporters.append(
            OTLPSpanExporter(
                endpoint=settings.otlp_endpoint, headers=dict(settings.otlp_headers), timeout=10
            )
        )
    for exporter in exporters:
        processor = (
            SimpleSpanProcessor(exporter)
            if settings.synchronous
            else BatchSpanProcessor(exporter, schedule_delay_millis=1000)
        )
        provider.add_span_processor(processor)
    tracing = Tracing(provider, settings)
    with _lock:
        previous = _active.get("tracing")
        _active["tracing"] = tracing
    if previous is not None:
        previous.provider.shutdown()
    return tracing


def disable_tracing() -> None:
    """Turn tracing off (flushing what the active set-up holds)."""
    with _lock:
        previous = _active.pop("tracing", None)
    if previous is not None:
        previous.provider.shutdown()


def active_tracing() -> Tracing | None:
    """The active set-up, or None when tracing is off."""
    return _active.get("tracing")


def span(name: str, *, kind: SpanKind = SpanKind.INTERNAL, **attributes: Any) -> Any:
    """A context manager for a span named ``name``, child of the current span.

    Keyword arguments become attributes (``None`` values are dropped; use
    ``**{"gen_ai.request.model": m}`` for dotted keys). An exception leaving the block is
    recorded on the span and sets its status to error. With tracing off this is a shared no-op.
    """
    tracing = _active.get("tracing")
    if tracing is None:
        return NOOP_SPAN
    attrs = {k: v for k, v in attributes.items() if v is not None}
    return tracing.tracer.start_as_current_span(name, kind=kind, attributes=attrs)


def current_trace_id() -> str | None:
    """The current span's trace id (32 hex digits), or None outside a recording span."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid or not ctx.trace_flags.sampled:
        return None
    return format(ctx.trace_id, "032x")


def trace_headers() -> dict[str, str]:
    """W3C ``traceparent`` (and ``tracestate``) headers for the current span, to propagate the
    trace to another service; empty outside a span."""
    carrier: dict[str, str] = {}
    inject(carrier)
    return carrier


def set_error(target: SpanLike, message: str) -> None:
    """Mark a span as failed with ``message`` (no-op on the no-op span)."""
    target.set_status(Status(StatusCode.ERROR, message))


def attach_remote_parent(headers: Mapping[str, str]) -> object | None:
    """Make the trace named in incoming W3C headers current; returns a token for
    ``detach_remote_parent`` (None when tracing is off or no header came)."""
    if _active.get("tracing") is None or "traceparent" not in headers:
        return None
    from opentelemetry.propagate import extract

    return otel_context.attach(extract(dict(headers)))


def detach_remote_parent(token: object | None) -> None:
    """Undo ``attach_remote_parent``."""
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]
