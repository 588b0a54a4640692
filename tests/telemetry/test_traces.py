"""OTLP ingest, storage and search of traces, on SQLite and the real PostgreSQL."""

from __future__ import annotations

import gzip
import time
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.project import Project
from flywheel.telemetry import (
    TraceFormatError,
    TraceQuery,
    TraceStore,
    TracingSettings,
    build_query,
    configure_tracing,
    current_trace_id,
    decode_spans,
    span,
)
from tests.telemetry.conftest import running_server

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _sdk_spans(service: str = "shop-agent") -> list[Any]:
    """Real SDK spans: a root with two children, one carrying GenAI attributes and usage."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span(
        "invoke_agent", attributes={"gen_ai.operation.name": "invoke_agent"}
    ):
        with tracer.start_as_current_span(
            "chat scripted",
            kind=SpanKind.CLIENT,
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "scripted-ops",
                "gen_ai.usage.input_tokens": 120,
                "gen_ai.usage.output_tokens": 30,
                "flywheel.tags": ["a", "b"],
            },
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool get_model",
            attributes={"gen_ai.tool.name": "get_model", "flywheel.ok": True},
        ):
            time.sleep(0.002)
    provider.shutdown()
    return list(memory.get_finished_spans())


def _writer(project: Project) -> str:
    return TokenStore(project.db).create("writer", "otlp")[1]


def test_sdk_exporter_to_v1_traces_stores_spans_with_links_and_attributes(
    any_project: Project,
) -> None:
    token = _writer(any_project)
    spans = _sdk_spans()
    app = create_app(any_project, systems=["telemetry"])
    with running_server(app) as url:
        exporter = OTLPSpanExporter(
            endpoint=f"{url}/v1/traces", headers={"Authorization": f"Bearer {token}"}
        )
        assert exporter.export(spans) == SpanExportResult.SUCCESS
        exporter.shutdown()
        found = httpx.get(f"{url}/traces", params={"name": "invoke_agent"}).json()["traces"]
        assert len(found) == 1
        trace_id = found[0]["trace_id"]
        assert trace_id == format(spans[0].context.trace_id, "032x")
        assert found[0]["span_count"] == 3
        assert found[0]["root_name"] == "invoke_agent"
        assert found[0]["services"] == ["shop-agent"]
        # Usage comes from the chat span only (not the agent span), once.
        assert (found[0]["input_tokens"], found[0]["output_tokens"]) == (120, 30)
        by_attr = httpx.get(
            f"{url}/traces", params={"attr": ["gen_ai.request.model=scripted-ops"]}
        ).json()["traces"]
        assert [t["trace_id"] for t in by_attr] == [trace_id]
        detail = httpx.get(f"{url}/traces/{trace_id}").json()
    by_name = {s["name"]: s for s in detail["spans"]}
    root = by_name["invoke_agent"]
    assert root["parent_span_id"] is None
    for child in ("chat scripted", "execute_tool get_model"):
        assert by_name[child]["parent_span_id"] == root["span_id"]
    chat = by_name["chat scripted"]
    assert chat["kind"] == "client"
    assert chat["attributes"]["gen_ai.usage.input_tokens"] == 120
    assert chat["attributes"]["flywheel.tags"] == ["a", "b"]
    assert by_name["execute_tool get_model"]["attributes"]["flywheel.ok"] is True
    assert by_name["execute_tool get_model"]["duration_ms"] >= 2.0
    expected_ids = {format(s.context.span_id, "016x") for s in spans}
    assert {s["span_id"] for s in detail["spans"]} == expected_ids


def test_json_and_gzip_encodings_store_the_same_spans(project: Project) -> None:
    token = _writer(project)
    spans = _sdk_spans()
    from google.protobuf import json_format

    message = encode_spans(spans)
    as_json = json_format.MessageToDict(message)
    # OTLP/JSON carries ids as hex, not protobuf's base64.
    for rs in as_json["resourceSpans"]:
        for ss in rs["scopeSpans"]:
            for sp in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in sp:
                        import base64

                        sp[key] = base64.b64decode(sp[key]).hex()
    headers = {"Authorization": f"Bearer {token}"}
    app = create_app(project, systems=["telemetry"])
    with running_server(app) as url:
        r = httpx.post(
            f"{url}/v1/traces",
            content=orjson.dumps(as_json),
            headers={**headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 200, r.text
        assert r.json() == {}
        store = TraceStore(project.db)
        assert store.count() == 3
        # The same spans again, gzip'd protobuf: a retry stores nothing twice.
        r = httpx.post(
            f"{url}/v1/traces",
            content=gzip.compress(message.SerializeToString()),
            headers={**headers, **PROTOBUF, "Content-Encoding": "gzip"},
        )
        assert r.status_code == 200, r.text
        assert store.count() == 3
    summary, stored = store.get_trace(format(spans[0].context.trace_id, "032x"))
    assert summary.span_count == 3
    assert {s.parent_span_id for s in stored} == {None, format(spans[-1].context.span_id, "016x")}


def _bad_payloads() -> list[tuple[str, bytes, dict[str, str], int, str]]:
    good = encode_spans(_sdk_spans())
    zero_trace = encode_spans(_sdk_spans())
    # The last span of the batch is broken: the two valid ones before it must not be stored.
    zero_trace.resource_spans[0].scope_spans[0].spans[-1].trace_id = bytes(16)
    backwards = encode_spans(_sdk_spans())
    sp = backwards.resource_spans[0].scope_spans[0].spans[-1]
    sp.end_time_unix_nano = sp.start_time_unix_nano - 1
    short_parent = encode_spans(_sdk_spans())
    short_parent.resource_spans[0].scope_spans[0].spans[0].parent_span_id = b"\x01\x02"
    json_headers = {"Content-Type": "application/json"}
    return [
        ("garbage protobuf", b"\xff\xff\xff\x0f", PROTOBUF, 400, "protobuf"),
        ("zero trace id", zero_trace.SerializeToString(), PROTOBUF, 400, "traceId"),
        ("end before start", backwards.SerializeToString(), PROTOBUF, 400, "endTimeUnixNano"),
        ("short parent", short_parent.SerializeToString(), PROTOBUF, 400, "parentSpanId"),
        ("not json", b"{nope", json_headers, 400, "JSON"),
        (
            "bad hex id",
            orjson.dumps(
                {"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "name": "x"}]}]}]}
            ),
            json_headers,
            400,
            "traceId",
        ),
        (
            "wrong field type",
            orjson.dumps({"resourceSpans": {"not": "a list"}}),
            json_headers,
            400,
            "resourceSpans",
        ),
        # Text where a message belongs (json_format would read it as an empty message).
        (
            "text for a message",
            orjson.dumps({"resourceSpans": ["AAA"]}),
            json_headers,
            400,
            "resourceSpans[0]: must be an object",
        ),
        (
            "text for an attribute",
            orjson.dumps(
                {
                    "resourceSpans": [
                        {"scopeSpans": [{"spans": [{"name": "x", "attributes": ["k"]}]}]}
                    ]
                }
            ),
            json_headers,
            400,
            "spans[0].attributes[0]: must be an object",
        ),
        ("text/plain", good.SerializeToString(), {"Content-Type": "text/plain"}, 415, "protobuf"),
        (
            "bad gzip",
            b"not gzip",
            {**PROTOBUF, "Content-Encoding": "gzip"},
            400,
            "gzip",
        ),
    ]


def test_bad_payloads_get_4xx_and_store_nothing(any_project: Project) -> None:
    token = _writer(any_project)
    store = TraceStore(any_project.db)
    app = create_app(any_project, systems=["telemetry"])
    with running_server(app) as url:
        for label, body, headers, status, word in _bad_payloads():
            r = httpx.post(
                f"{url}/v1/traces",
                content=body,
                headers={**headers, "Authorization": f"Bearer {token}"},
            )
            assert r.status_code == status, (label, r.text)
            assert word in r.json()["error"], (label, r.json())
            assert store.count() == 0, label
        # Without a writer token nothing is accepted either.
        good = encode_spans(_sdk_spans()).SerializeToString()
        assert httpx.post(f"{url}/v1/traces", content=good, headers=PROTOBUF).status_code == 401
        assert store.count() == 0


def test_span_api_stores_nested_spans_and_search_filters(project: Project) -> None:
    tracing = configure_tracing(
        TracingSettings(service_name="svc-a", sample_rate=1.0, synchronous=True), project.db
    )
    assert tracing is not None
    with span("recs.request", **{"flywheel.user": "u1"}):
        trace_id = current_trace_id()
        with span("recs.rank", **{"flywheel.candidates": 300}) as s:
            s.set_attribute("flywheel.ranked", 50)
            time.sleep(0.02)
    with pytest.raises(ValueError, match="boom"), span("recs.request", **{"flywheel.user": "u2"}):
        raise ValueError("boom")
    tracing.shutdown()
    store = TraceStore(project.db)
    assert store.count() == 3
    _summary, spans = store.get_trace(trace_id or "")
    assert [s.name for s in spans] == ["recs.request", "recs.rank"]
    assert spans[1].parent_span_id == spans[0].span_id
    assert spans[1].attributes == {"flywheel.candidates": 300, "flywheel.ranked": 50}

    def ids(**filters: Any) -> list[str]:
        return [t.trace_id for t in store.search(build_query(**filters))]

    assert ids(attr=["flywheel.user=u1"]) == [trace_id]
    assert ids(attr=["flywheel.candidates=300"]) == [trace_id]
    assert ids(attr=["flywheel.ranked"]) == [trace_id]
    assert ids(attr=["flywheel.user=u3"]) == []
    assert len(ids(service="svc-a")) == 2
    assert ids(service="other") == []
    assert ids(name="recs.rank", min_duration_ms=15) == [trace_id]
    assert ids(name="recs.rank", max_duration_ms=15) == []
    errors = store.search(TraceQuery(errors_only=True))
    assert len(errors) == 1 and errors[0].error_count == 1 and errors[0].trace_id != trace_id
    now = time.time()
    assert len(ids(start=str(now - 60), end=str(now + 1))) == 2
    assert ids(start=str(now + 60)) == []


def test_tracing_off_is_a_noop_and_stores_nothing(project: Project) -> None:
    with span("x", a=1) as s:
        s.set_attribute("b", 2)
        assert current_trace_id() is None
    assert TraceStore(project.db).count() == 0


def test_unsampled_roots_are_dropped_but_genai_roots_are_kept(project: Project) -> None:
    tracing = configure_tracing(TracingSettings(sample_rate=0.0, synchronous=True), project.db)
    assert tracing is not None
    with span("recs.request"):
        with span("recs.rank"):
            pass
    with span("invoke_agent", **{"gen_ai.operation.name": "invoke_agent"}):
        with span("chat m", **{"gen_ai.operation.name": "chat"}):
            pass
    tracing.shutdown()
    names = sorted(
        s.name
        for t in TraceStore(project.db).search(TraceQuery())
        for s in TraceStore(project.db).get_trace(t.trace_id)[1]
    )
    assert names == ["chat m", "invoke_agent"]


def test_otlp_exporter_setting_sends_spans_to_an_external_collector(
    project: Project, tmp_path: Any
) -> None:
    from tests.conftest import make_project

    collector = make_project(tmp_path / "collector")
    token = _writer(collector)
    app = create_app(collector, systems=["telemetry"])
    with running_server(app) as url:
        tracing = configure_tracing(
            TracingSettings(
                exporter="otlp",
                otlp_endpoint=f"{url}/v1/traces",
                otlp_headers={"Authorization": f"Bearer {token}"},
                service_name="emitter",
                sample_rate=1.0,
                synchronous=True,
            ),
            project.db,
        )
        assert tracing is not None
        with span("outer"):
            with span("inner", **{"k": "v"}):
                pass
        tracing.shutdown()
    # Instead of the store: the emitter's own store has nothing, the collector has both spans.
    assert TraceStore(project.db).count() == 0
    found = TraceStore(collector.db).search(TraceQuery(service="emitter"))
    assert len(found) == 1 and found[0].span_count == 2
    collector.close()


def test_decode_names_the_bad_field() -> None:
    message = encode_spans(_sdk_spans())
    message.resource_spans[0].scope_spans[0].spans[1].span_id = b"\x00" * 8
    with pytest.raises(TraceFormatError, match=r"spans\[1\]\.spanId: must not be all zeros"):
        decode_spans(message.SerializeToString(), "application/x-protobuf")


def test_cli_search_and_show(project: Project) -> None:
    import subprocess
    import sys

    tracing = configure_tracing(TracingSettings(sample_rate=1.0, synchronous=True), project.db)
    assert tracing is not None
    with span("invoke_agent", **{"gen_ai.operation.name": "invoke_agent"}):
        trace_id = current_trace_id()
        with span("execute_tool get_model", **{"gen_ai.tool.name": "get_model"}):
            pass
    tracing.shutdown()
    cli = [sys.executable, "-m", "flywheel.cli"]
    cfg = ["--config", str(project.root / "flywheel.yaml")]
    out = subprocess.run(
        [*cli, "traces", "search", "--attr", "gen_ai.tool.name=get_model", "--json", *cfg],
        capture_output=True,
        text=True,
        check=True,
    )
    assert [t["trace_id"] for t in orjson.loads(out.stdout)] == [trace_id]
    out = subprocess.run(
        [*cli, "traces", "show", trace_id or "", *cfg], capture_output=True, text=True, check=True
    )
    assert "invoke_agent" in out.stdout and "execute_tool get_model" in out.stdout
    bad = subprocess.run(
        [*cli, "traces", "search", "--start", "yesterday", *cfg], capture_output=True, text=True
    )
    assert bad.returncode == 1
    assert bad.stderr.strip() == "error: start: 'yesterday' is neither ISO-8601 nor Unix seconds"
    missing = subprocess.run(
        [*cli, "traces", "show", "ab" * 16, *cfg], capture_output=True, text=True
    )
    assert missing.returncode == 1 and "is not stored" in missing.stderr
