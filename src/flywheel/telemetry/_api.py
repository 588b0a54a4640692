"""HTTP: OTLP/HTTP ingest at ``POST /v1/traces``, search at ``GET /traces``, one trace at
``GET /traces/{trace_id}``; and ``tracing_service``, which turns this process's own spans on for
the app's lifetime.

Ingest needs a writer token (like every write); the OpenTelemetry exporters send one with
``OTEL_EXPORTER_OTLP_HEADERS="Authorization=Bearer fw_..."``. A payload is stored whole or not at
all: a bad one gets 400 (415 for a content type other than protobuf or JSON) and stores nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from flywheel.auth import Principal, require_reader, require_writer
from flywheel.project import Project, current_project
from flywheel.telemetry._emit import TracingSettings, configure_tracing
from flywheel.telemetry._otlp import PROTOBUF, decode_batch
from flywheel.telemetry._store import TraceQuery, TraceQueryError, TraceStore

router = APIRouter(tags=["traces"])


def _store(request: Request) -> TraceStore:
    store: TraceStore | None = getattr(request.app.state, "trace_store", None)
    if store is None:
        store = TraceStore(current_project(request).db)
        request.app.state.trace_store = store
    return store


_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
# The body is read raw (protobuf or JSON), so FastAPI cannot describe it: this is what OTLP/HTTP
# sends (an ExportTraceServiceRequest) and answers (an ExportTraceServiceResponse, empty).
_OTLP_BODY = {
    "required": True,
    "content": {
        PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
        "application/json": {
            "schema": {
                "type": "object",
                # null is the empty list, as protobuf's JSON mapping reads it.
                "properties": {
                    "resourceSpans": {"type": ["array", "null"], "items": {"type": "object"}}
                },
            }
        },
    },
}


@router.post(
    "/v1/traces",
    responses={
        200: {
            "description": "Every span was stored (or already was); an empty "
            "ExportTraceServiceResponse in the request's encoding.",
            "content": {
                PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
                "application/json": {"schema": {"type": "object"}},
            },
        },
        400: {"description": "Not a valid OTLP payload; nothing was stored.", "content": _ERROR},
        415: {
            "description": "Neither application/x-protobuf nor application/json.",
            "content": _ERROR,
        },
    },
    openapi_extra={"requestBody": _OTLP_BODY},
)
async def ingest_traces(
    request: Request, _principal: Principal = Depends(require_writer)
) -> Response:
    """OTLP/HTTP trace export (protobuf or JSON, optionally gzip): stores every span or none."""
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    await run_in_threadpool(
        _ingest, _store(request), body, content_type, request.headers.get("content-encoding", "")
    )
    if content_type.split(";", 1)[0].strip().lower() == PROTOBUF:
        return Response(ExportTraceServiceResponse().SerializeToString(), media_type=PROTOBUF)
    return JSONResponse({})


def _ingest(store: TraceStore, body: bytes, content_type: str, content_encoding: str) -> int:
    """Decode and store one export in one worker thread (one hop off the event loop).

    While this thread waits to write, or writes, other requests decode in theirs.
    """
    return store.insert_batch(decode_batch(body, content_type, content_encoding))


def parse_time(value: str | None, field: str) -> int | None:
    """ISO-8601 (``2026-12-03T10:00:00Z``) or Unix seconds, as Unix nanoseconds."""
    if value is None or value == "":
        return None
    try:
        return int(float(value) * 1e9)
    except ValueError:
        pass
    try:
        return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
    except ValueError:
        raise TraceQueryError(f"{field}: {value!r} is neither ISO-8601 nor Unix seconds") from None


def parse_attribute_filters(items: list[str]) -> dict[str, str | None]:
    """``["k=v", "k2"]`` as ``{"k": "v", "k2": None}`` (``k2``: the key is present)."""
    out: dict[str, str | None] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not key:
            raise TraceQueryError(f"attr: {item!r} must be KEY=VALUE or KEY")
        out[key] = value if sep else None
    return out


def build_query(
    *,
    service: str | None = None,
    name: str | None = None,
    start: str | None = None,
    end: str | None = None,
    min_duration_ms: float | None = None,
    max_duration_ms: float | None = None,
    attr: list[str] | None = None,
    errors_only: bool = False,
    limit: int = 20,
) -> TraceQuery:
    """A ``TraceQuery`` from the user-facing filter syntax (shared by HTTP and CLI)."""
    return TraceQuery(
        service=service or None,
        name=name or None,
        start_ns=parse_time(start, "start"),
        end_ns=parse_time(end, "end"),
        min_duration_ns=None if min_duration_ms is None else int(min_duration_ms * 1e6),
        max_duration_ns=None if max_duration_ms is None else int(max_duration_ms * 1e6),
        attributes=parse_attribute_filters(attr or []),
        errors_only=errors_only,
        limit=limit,
    )


@router.get("/traces")
def search_traces(
    request: Request,
    service: Annotated[str | None, Query(description="service.name of a span")] = None,
    name: Annotated[str | None, Query(description="span name, e.g. invoke_agent")] = None,
    start: Annotated[
        str | None, Query(description="spans starting at or after (ISO/Unix s)")
    ] = None,
    end: Annotated[
        str | None, Query(description="spans starting at or before (ISO/Unix s)")
    ] = None,
    # le: durations are stored in integer ns (int64); 9e12 ms is ~285 years (no OverflowError).
    min_duration_ms: Annotated[float | None, Query(ge=0, le=9e12)] = None,
    max_duration_ms: Annotated[float | None, Query(ge=0, le=9e12)] = None,
    attr: Annotated[
        list[str] | None, Query(description="KEY=VALUE or KEY; repeat for several")
    ] = None,
    errors_only: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 20,
    _principal: Principal = Depends(require_reader),
) -> dict[str, Any]:
    """Traces holding a span that matches every filter, newest first, with token totals."""
    query = build_query(
        service=service,
        name=name,
        start=start,
        end=end,
        min_duration_ms=min_duration_ms,
        max_duration_ms=max_duration_ms,
        attr=attr,
        errors_only=errors_only,
        limit=limit,
    )
    return {"traces": [t.to_dict() for t in _store(request).search(query)]}


@router.get("/traces/{trace_id}", responses={404: {"description": "No such trace."}})
def get_trace(
    request: Request, trace_id: str, _principal: Principal = Depends(require_reader)
) -> dict[str, Any]:
    """One trace: its summary and every span (parent links, attributes, events) in start order."""
    summary, spans = _store(request).get_trace(trace_id)
    return {"trace": summary.to_dict(), "spans": [s.to_dict() for s in spans]}


@contextlib.asynccontextmanager
async def tracing_service(project: Project) -> AsyncIterator[None]:
    """Emit this server's own spans (agent, LLM, recommendations, inference) while it runs."""
    tracing = configure_tracing(TracingSettings.from_config(project.config.telemetry), project.db)
    try:
        yield
    finally:
        if tracing is not None:
            tracing.shutdown()


__all__ = ["router", "tracing_service"]
