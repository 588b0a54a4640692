"""Open Inference Protocol over a real uvicorn server: tritonclient (binary and JSON), httpx."""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator

import httpx
import numpy as np
import orjson
import pytest
import tritonclient.http as tc
from tritonclient.utils import InferenceServerException

from flywheel.project import Project
from tests.serving.conftest import (
    FakeModel,
    FakeSource,
    Sig,
    Spec,
    linear,
    running_server,
    serving_app,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def server(project: Project, source: FakeSource) -> Iterator[str]:
    source.add("lin", 1, FakeModel(linear(1.0)), stage="production")
    source.add("lin", 2, FakeModel(linear(2.0)))
    source.add(
        "texts",
        1,
        FakeModel(
            lambda t: {"length": np.array([len(x) for x in t["text"].ravel()], dtype=np.int64)}
        ),
        signature=Sig((Spec("text", "BYTES", (-1,)),), (Spec("length", "INT64", (-1,)),)),
        stage="production",
    )
    source.add(
        "nan_ok",
        1,
        FakeModel(lambda t: {"out": np.nan_to_num(t["input"]).sum(axis=1)}),
        config={"allow_nan": True},
        stage="production",
    )
    source.add(
        "two",
        1,
        FakeModel(lambda t: {"out": t["a"].sum(axis=1) + t["b"]}),
        signature=Sig(
            (Spec("a", "FP32", (-1, 2)), Spec("b", "INT64", (-1,))),
            (Spec("out", "FP64", (-1,)),),
        ),
        stage="production",
    )
    with running_server(serving_app(project, source)) as hostport:
        yield hostport


def _x(rows: int = 3) -> np.ndarray:
    return np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)


def test_tritonclient_binary_round_trip(server: str) -> None:
    client = tc.InferenceServerClient(server)
    assert client.is_server_live() and client.is_server_ready()
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    assert client.is_model_ready("lin")
    inp = tc.InferInput("input", [3, 4], "FP32")
    inp.set_data_from_numpy(_x())  # binary by default
    result = client.infer("lin", [inp])
    np.testing.assert_allclose(result.as_numpy("predictions"), _x().sum(axis=1))
    np.testing.assert_array_equal(result.as_numpy("label"), [1, 1, 1])
    # The answer was binary: no 'data' in the JSON part.
    assert all("data" not in o for o in result.get_response()["outputs"])


def test_tritonclient_json_mode_and_explicit_version(server: str) -> None:
    client = tc.InferenceServerClient(server)
    inp = tc.InferInput("input", [3, 4], "FP32")
    inp.set_data_from_numpy(_x(), binary_data=False)
    out = tc.InferRequestedOutput("predictions", binary_data=False)
    result = client.infer("lin", [inp], outputs=[out], model_version="2")
    np.testing.assert_allclose(result.as_numpy("predictions"), 2 * _x().sum(axis=1))
    response = result.get_response()
    assert response["model_version"] == "2"
    assert [o["name"] for o in response["outputs"]] == ["predictions"]
    assert response["outputs"][0]["data"] == (2 * _x().sum(axis=1)).tolist()


def test_tritonclient_bytes_tensors_both_modes(server: str) -> None:
    client = tc.InferenceServerClient(server)
    words = np.array([b"a", b"bbb", "cé".encode()], dtype=object)
    for binary in (True, False):
        inp = tc.InferInput("text", [3], "BYTES")
        inp.set_data_from_numpy(words, binary_data=binary)
        result = client.infer("texts", [inp])
        np.testing.assert_array_equal(result.as_numpy("length"), [1, 3, 3])


def test_metadata_reports_runtime_and_signature(server: str) -> None:
    meta = httpx.get(f"http://{server}/v2/models/lin").json()
    assert meta["platform"] == "fake" and meta["parameters"]["runtime"] == "fake"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["parameters"]["version"] == 1 and meta["parameters"]["device"] == "cpu"
    v2 = httpx.get(f"http://{server}/v2/models/lin/versions/2").json()
    assert v2["versions"] == ["2"]
    assert httpx.get(f"http://{server}/v2/models/nope").status_code == 404
    assert httpx.get(f"http://{server}/v2/models/nope/ready").status_code == 404


def _post(server: str, doc: object, path: str = "lin", **kw: object) -> httpx.Response:
    body = doc if isinstance(doc, bytes) else orjson.dumps(doc)
    return httpx.post(f"http://{server}/v2/models/{path}/infer", content=body, **kw)  # type: ignore[arg-type]


def _tensor(**over: object) -> dict[str, object]:
    t: dict[str, object] = {
        "name": "input",
        "shape": [2, 4],
        "datatype": "FP32",
        "data": list(range(8)),
    }
    t.update(over)
    return t


@pytest.mark.parametrize(
    ("doc", "status", "needle"),
    [
        ({"inputs": [_tensor(datatype="INT64")]}, 400, "datatype INT64"),
        ({"inputs": [_tensor(datatype="FLOAT")]}, 400, "'FLOAT'"),
        ({"inputs": [_tensor(shape=[2, 5], data=list(range(10)))]}, 400, "shape [2, 5]"),
        ({"inputs": [_tensor(shape=[8])]}, 400, "does not match the signature"),
        ({"inputs": [_tensor(shape=[2, 4], data=[1, 2, 3])]}, 400, "3 elements"),
        ({"inputs": [_tensor(data=["x"] * 8)]}, 400, "cannot be read as FP32"),
        ({"inputs": [_tensor(name="other")]}, 400, "'other' is not an input"),
        ({"inputs": []}, 400, "non-empty 'inputs'"),
        ({"inputs": [_tensor(), _tensor()]}, 400, "given twice"),
        ({"inputs": [_tensor(shape=[-2, 4])]}, 400, "negative"),
        ({"inputs": [_tensor(shape="2x4")]}, 400, "list of integers"),
        ({"inputs": [_tensor(data=None)]}, 400, "input 'input'"),
        ({"inputs": [{"name": "input", "shape": [2, 4], "datatype": "FP32"}]}, 400, "neither"),
        ({"inputs": [_tensor()], "outputs": [{"name": "nope"}]}, 400, "'nope' is not an output"),
        ([1, 2], 400, "JSON object"),
        (b"{not json", 400, "not valid JSON"),
    ],
)
def test_bad_requests_are_4xx_naming_the_input(
    server: str, doc: object, status: int, needle: str
) -> None:
    response = _post(server, doc)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]


def test_missing_input_is_named(server: str) -> None:
    response = _post(
        server, {"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}
    )
    assert response.status_code == 400
    assert "'text' is not an input" in response.json()["error"]
    only_a = {"inputs": [{"name": "a", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]}
    response = _post(server, only_a, path="two")
    assert response.status_code == 400
    assert response.json()["error"].startswith("input 'b' is missing")
    b = {"name": "b", "shape": [2], "datatype": "INT64", "data": [1, 2]}
    mismatch = _post(server, {"inputs": [*only_a["inputs"], b]}, path="two")
    assert mismatch.status_code == 400 and "batch size 2" in mismatch.json()["error"]


def test_nan_refused_unless_allowed(server: str) -> None:
    x = np.array([[1, np.nan, 3, 4]], dtype=np.float32)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    )
    headers = {"Inference-Header-Content-Length": str(len(header))}
    refused = _post(server, header + x.tobytes(), headers=headers)
    assert refused.status_code == 400
    assert "input 'input' contains NaN" in refused.json()["error"]
    accepted = _post(server, header + x.tobytes(), path="nan_ok", headers=headers)
    assert accepted.status_code == 200
    assert accepted.json()["outputs"][0]["data"] == [8.0]


def test_binary_framing_errors(server: str) -> None:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ]
        }
    )
    raw = _x(2).tobytes()
    ok = _post(server, header + raw, headers={"Inference-Header-Content-Length": str(len(header))})
    assert ok.status_code == 200
    short = _post(
        server, header + raw[:20], headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert short.status_code == 400 and "runs past the end" in short.json()["error"]
    extra = _post(
        server, header + raw + b"xx", headers={"Inference-Header-Content-Length": str(len(header))}
    )
    assert extra.status_code == 400 and "no input claims" in extra.json()["error"]
    no_header = _post(server, header + raw)
    assert no_header.status_code == 400
    bad_len = _post(server, header + raw, headers={"Inference-Header-Content-Length": "abc"})
    assert (
        bad_len.status_code == 400 and "Inference-Header-Content-Length" in bad_len.json()["error"]
    )
    wrong_size = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 16},
                }
            ]
        }
    )
    r = _post(
        server,
        wrong_size + raw[:16],
        headers={"Inference-Header-Content-Length": str(len(wrong_size))},
    )
    assert r.status_code == 400 and "needs 32" in r.json()["error"]
    bytes_header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "text",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 9},
                }
            ]
        }
    )
    truncated = struct.pack("<I", 1) + b"a" + struct.pack("<I", 10)
    r = _post(
        server,
        bytes_header + truncated,
        path="texts",
        headers={"Inference-Header-Content-Length": str(len(bytes_header))},
    )
    assert r.status_code == 400 and "input 'text'" in r.json()["error"]


def test_body_over_limit_is_413(project: Project, source: FakeSource) -> None:
    small = project.config.serving.model_copy(update={"max_request_bytes": 2048})
    project.config = project.config.model_copy(update={"serving": small})
    source.add("lin", 1, FakeModel(linear(1.0)), stage="production")
    with running_server(serving_app(project, source)) as server:
        doc = {"inputs": [_tensor(shape=[200, 4], data=[1.5] * 800)]}
        response = _post(server, doc)
        assert response.status_code == 413
        assert "limit" in response.json()["error"]
        # Streamed without a length (chunked), still refused, never a 500.
        body = orjson.dumps(doc)
        chunked = httpx.post(
            f"http://{server}/v2/models/lin/infer", content=iter([body[:1000], body[1000:]])
        )
        assert chunked.status_code == 413


def test_gzip_body_and_unknown_names(server: str) -> None:
    doc = orjson.dumps({"inputs": [_tensor()]})
    r = httpx.post(
        f"http://{server}/v2/models/lin/infer",
        content=gzip.compress(doc),
        headers={"Content-Encoding": "gzip"},
    )
    assert r.status_code == 200
    assert _post(server, {"inputs": [_tensor()]}, path="ghost").status_code == 404
    bad_version = httpx.post(f"http://{server}/v2/models/lin/versions/x/infer", content=doc)
    assert bad_version.status_code == 404
    assert (
        httpx.post(f"http://{server}/v2/models/lin/versions/9/infer", content=doc).status_code
        == 404
    )


def test_triton_error_surfaces_as_client_error(server: str) -> None:
    client = tc.InferenceServerClient(server)
    inp = tc.InferInput("input", [2, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException) as info:
        client.infer("lin", [inp])
    assert info.value.status() == "400"
    assert "input 'input'" in info.value.message()


def _http_requests(metrics: str, route: str, status: str) -> float:
    """``flywheel_http_requests_total`` for POST ``route`` with ``status`` (0 when absent)."""
    want = f'flywheel_http_requests_total{{method="POST",route="{route}",status="{status}"}}'
    for line in metrics.splitlines():
        if line.startswith(want):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_fast_path_requests_carry_their_route_in_http_metrics(server: str) -> None:
    infer, versioned = "/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"
    before = httpx.get(f"http://{server}/metrics").text
    for _ in range(3):
        assert _post(server, {"inputs": [_tensor()]}).status_code == 200
    assert _post(server, {"inputs": [_tensor()]}, path="lin/versions/2").status_code == 200
    assert _post(server, {"inputs": [_tensor(datatype="INT8")]}).status_code == 400
    after = httpx.get(f"http://{server}/metrics").text
    assert _http_requests(after, infer, "200") - _http_requests(before, infer, "200") == 3
    assert _http_requests(after, versioned, "200") - _http_requests(before, versioned, "200") == 1
    assert _http_requests(after, infer, "400") - _http_requests(before, infer, "400") == 1
    assert _http_requests(after, "unmatched", "200") == _http_requests(before, "unmatched", "200")
    # The latency histogram is labelled the same way.
    assert f'flywheel_http_request_duration_seconds_count{{method="POST",route="{infer}"}}' in after


def test_a_unicode_digit_version_is_404_not_500(project: Project) -> None:
    # "²".isdigit() is True but int("²") raises: found by the schemathesis fuzz.
    from fastapi.testclient import TestClient

    from flywheel.api import create_app

    with TestClient(create_app(project, systems=["serving"])) as client:
        r = client.get("/v2/models/m/versions/²/ready")
        assert r.status_code == 404 and "error" in r.json()
