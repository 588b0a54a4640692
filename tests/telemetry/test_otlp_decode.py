"""The lazy OTLP decoder: same wire layout as opentelemetry-proto, same values as the message
classes for every kind of attribute, malformed values refused naming the span, and stored spans
that survive the writing process being killed once acknowledged."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import FieldDescriptor
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from flywheel.project import Project
from flywheel.telemetry import (
    TraceFormatError,
    TraceStore,
    batch_from_request,
    decode_batch,
    decode_spans,
)
from flywheel.telemetry._otlp import _attributes, _LazyExportRequest

PROTOBUF = "application/x-protobuf"


def _wire(descriptor: Any) -> dict[int, tuple[str, bool]]:
    """Field number -> (wire kind, repeated) of a message descriptor."""
    fd = FieldDescriptor
    kinds = {
        fd.TYPE_BYTES: "len",
        fd.TYPE_STRING: "len",
        fd.TYPE_MESSAGE: "len",
        fd.TYPE_FIXED32: "i32",
        fd.TYPE_FIXED64: "i64",
        fd.TYPE_INT32: "varint",
        fd.TYPE_ENUM: "varint",
        fd.TYPE_UINT32: "varint",
    }
    return {f.number: (kinds[f.type], f.is_repeated) for f in descriptor.fields}


def test_lazy_view_has_the_wire_layout_of_opentelemetry_proto() -> None:
    lazy = _LazyExportRequest.DESCRIPTOR
    assert _wire(lazy) == _wire(ExportTraceServiceRequest.DESCRIPTOR)
    lazy_rs = lazy.fields_by_name["resource_spans"].message_type
    assert _wire(lazy_rs) == _wire(ResourceSpans.DESCRIPTOR)
    lazy_ss = lazy_rs.fields_by_name["scope_spans"].message_type
    assert _wire(lazy_ss) == _wire(ScopeSpans.DESCRIPTOR)
    lazy_span = lazy_ss.fields_by_name["spans"].message_type
    assert _wire(lazy_span) == _wire(Span.DESCRIPTOR)
    # A KeyValue is a map entry on the wire: key = 1 (text), value = 2 (the AnyValue).
    entry = lazy_span.fields_by_name["attributes"].message_type
    assert entry.GetOptions().map_entry
    assert {f.number: f.name for f in entry.fields} == {1: "key", 2: "value"}
    # (KeyValue's key_strindex = 3 is for OTLP profiles' string table; neither decoder reads it.)
    kv_fields = {f.number: f.name for f in KeyValue.DESCRIPTOR.fields}
    assert {1: "key", 2: "value"}.items() <= kv_fields.items()


def _value(**kwargs: Any) -> AnyValue:
    value = AnyValue()
    if "array" in kwargs:
        for item in kwargs["array"]:
            value.array_value.values.add().string_value = item
    elif "kvlist" in kwargs:
        for k, v in kwargs["kvlist"].items():
            kv = value.kvlist_value.values.add()
            kv.key = k
            kv.value.int_value = v
    else:
        for field, v in kwargs.items():
            setattr(value, field, v)
    return value


# Every kind of AnyValue, around each fast path's limits (1- and 2-byte lengths and integers).
VALUES: dict[str, AnyValue] = {
    "empty_text": _value(string_value=""),
    "text_127": _value(string_value="a" * 127),
    "text_128": _value(string_value="b" * 128),
    "text_200_unicode": _value(string_value="ü" * 100),
    "text_16383": _value(string_value="c" * 16383),
    "text_16384": _value(string_value="d" * 16384),
    "zero": _value(int_value=0),
    "int_127": _value(int_value=127),
    "int_128": _value(int_value=128),
    "int_16383": _value(int_value=16383),
    "int_16384": _value(int_value=16384),
    "negative": _value(int_value=-5),
    "huge": _value(int_value=2**62),
    "min": _value(int_value=-(2**63)),
    "yes": _value(bool_value=True),
    "no": _value(bool_value=False),
    "float": _value(double_value=1.5),
    "bytes": _value(bytes_value=b"\x00\xff"),
    "array": _value(array=["x", "y"]),
    "kvlist": _value(kvlist={"a": 1}),
    "unset": AnyValue(),
}


def _request(attributes: dict[str, AnyValue], n: int = 1) -> ExportTraceServiceRequest:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    kv = rs.resource.attributes.add()
    kv.key, kv.value.string_value = "service.name", "svc"
    ss = rs.scope_spans.add()
    ss.scope.name = "lib"
    for i in range(n):
        sp = ss.spans.add()
        sp.trace_id, sp.span_id, sp.name = b"\x01" * 16, bytes([0] * 7 + [i + 1]), "op"
        sp.start_time_unix_nano, sp.end_time_unix_nano = 10, 20
        for key, value in attributes.items():
            kv = sp.attributes.add()
            kv.key = key
            kv.value.CopyFrom(value)
    return request


def test_every_kind_of_attribute_decodes_as_the_message_classes_do() -> None:
    request = _request(VALUES)
    expected = _attributes(request.resource_spans[0].scope_spans[0].spans[0].attributes)
    assert "unset" not in expected and expected["text_16384"] == "d" * 16384
    batch = batch_from_request(request)
    assert batch.attributes == [expected]
    (record,) = decode_spans(request.SerializeToString(), PROTOBUF)
    assert record.attributes == expected
    assert (record.service, record.scope, record.status_code) == ("svc", "lib", 0)


def test_a_malformed_attribute_value_is_refused_naming_the_span() -> None:
    request = _request({"ok": _value(string_value="fine")}, n=2)
    # The second span's value: a string_value of two bytes that are not UTF-8.
    body = request.SerializeToString()
    good = AnyValue(string_value="fine").SerializeToString()
    bad = b"\x0a\x04\xff\xfe\xfd\xfc"
    assert len(bad) == len(good)
    first = body.index(good)
    second = body.index(good, first + 1)
    body = body[:second] + bad + body[second + len(bad) :]
    with pytest.raises(TraceFormatError, match=r"scopeSpans\[0\]\.spans\[1\]: malformed"):
        decode_batch(body, PROTOBUF)


_KILLED_WRITER = r"""
import os, signal, sys
from flywheel.project import Project
from flywheel.telemetry import TraceStore, decode_batch
project = Project.open(sys.argv[1])
stored = TraceStore(project.db).insert_batch(decode_batch(open(sys.argv[2], "rb").read(),
                                                          "application/x-protobuf"))
print(stored, flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # no close, no checkpoint, no atexit
"""


def test_acknowledged_spans_survive_the_writer_being_killed(project: Project) -> None:
    body = project.root / "body.bin"
    body.write_bytes(_request({"k": _value(string_value="v")}, n=5).SerializeToString())
    done = subprocess.run(
        [sys.executable, "-c", _KILLED_WRITER, str(project.root), str(body)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "src")},
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert done.stdout.strip() == "5"
    assert TraceStore(project.db).count() == 5
