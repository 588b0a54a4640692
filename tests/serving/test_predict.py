"""In-process prediction: ``InferenceServer.predict`` / ``predict_blocking`` (numpy, no JSON).

The same target resolution, batching, metrics, canary counting and prediction log as HTTP.
Model fakes stand in for the registry's loaded models; endpoints, stats and stores are real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import orjson
import pytest
from prometheus_client import REGISTRY

from flywheel.project import Project
from flywheel.serving import (
    DeadlineExceeded,
    EndpointStore,
    InferenceFailed,
    InferenceServer,
    InvalidInput,
    Prediction,
    RolloutState,
    Route,
    ServingError,
    UnknownModel,
    deploy,
    server_for,
    set_routes,
)
from tests.serving.conftest import (
    FakeModel,
    FakeSource,
    failing_after_warmup,
    linear,
    running_server,
    serving_app,
)

X = np.arange(12, dtype=np.float32).reshape(3, 4)


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)


def requests_total(endpoint: str, model: str, version: int, code: int) -> float:
    labels = {"endpoint": endpoint, "model": model, "version": str(version), "code": str(code)}
    return REGISTRY.get_sample_value("flywheel_serving_requests_total", labels) or 0.0


@pytest.fixture
def server(fast_project: Project, source: FakeSource) -> Iterator[InferenceServer]:
    srv = InferenceServer(fast_project, source)
    yield srv
    srv.stop_blocking()
    assert not srv.bridge.private_loop_running


def test_production_version_from_any_thread(server: InferenceServer, source: FakeSource) -> None:
    model = source.add("m", 1, FakeModel(linear(2.0)), stage="production")
    before = requests_total("m", "m", 1, 200)
    pred = server.predict_blocking("m", {"input": X})
    assert isinstance(pred, Prediction) and (pred.model, pred.version) == ("m", 1)
    np.testing.assert_array_equal(pred.outputs["predictions"], X.sum(axis=1) * 2.0)
    np.testing.assert_array_equal(pred.outputs["label"], (X.sum(axis=1) > 0).astype(np.int64))
    assert sum(model.batch_sizes) >= 3  # warm-up example plus this request
    assert requests_total("m", "m", 1, 200) == before + 1
    # float64 is cast to the signature's FP32, as the docstring says; other threads work too.
    out: list[Prediction] = []
    x64 = X.astype(np.float64)
    t = threading.Thread(target=lambda: out.append(server.predict_blocking("m", {"input": x64})))
    t.start()
    t.join()
    assert out[0].outputs["predictions"].tolist() == pred.outputs["predictions"].tolist()
    # A promotion is picked up by the reconciler like for HTTP.
    source.add("m", 2, FakeModel(linear(3.0)))
    source.set_stage("m", 2, "production")
    wait_for(lambda: server.predict_blocking("m", {"input": X}).version == 2)


def test_bad_inputs_are_named(server: InferenceServer, source: FakeSource) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    with pytest.raises(InvalidInput, match="'inputs' is not an input of 'm'"):
        server.predict_blocking("m", {"inputs": X})
    with pytest.raises(InvalidInput, match="input 'input' is missing"):
        server.predict_blocking("m", {})
    with pytest.raises(InvalidInput, match="datatype BYTES given; 'm' expects FP32"):
        server.predict_blocking("m", {"input": np.array([["a"] * 4])})
    with pytest.raises(InvalidInput, match="shape"):
        server.predict_blocking("m", {"input": np.ones((2, 5), dtype=np.float32)})
    with pytest.raises(InvalidInput, match="NaN"):
        server.predict_blocking("m", {"input": np.full((1, 4), np.nan, dtype=np.float32)})
    with pytest.raises(UnknownModel):
        server.predict_blocking("nope", {"input": X})
    before = requests_total("m", "m", 1, 400)
    with pytest.raises(InvalidInput):
        server.predict_blocking("m", {"input": np.ones((1, 3), dtype=np.float32)})
    assert requests_total("m", "m", 1, 400) == before + 1  # counted like an HTTP 400


def test_concurrent_requests_share_batches(server: InferenceServer, source: FakeSource) -> None:
    model = source.add("m", 1, FakeModel(linear(1.0), delay=0.05), stage="production")
    server.predict_blocking("m", {"input": X[:1]})  # load and warm
    model.batch_sizes.clear()
    results: list[Prediction] = []
    lock = threading.Lock()

    def call(i: int) -> None:
        pred = server.predict_blocking("m", {"input": X[i % 3 : i % 3 + 1]})
        with lock:
            results.append(pred)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 16 and sum(model.batch_sizes) == 16
    assert max(model.batch_sizes) > 1  # requests queued behind a running batch ran together


def test_timeout_and_failures(server: InferenceServer, source: FakeSource) -> None:
    source.add("slow", 1, FakeModel(linear(1.0), delay=0.3), stage="production")
    server.predict_blocking("slow", {"input": X})  # loaded and warm
    with pytest.raises(DeadlineExceeded):
        server.predict_blocking("slow", {"input": X}, timeout_s=0.01)
    source.add("broken", 1, FakeModel(failing_after_warmup), stage="production")
    before = requests_total("broken", "broken", 1, 500)
    with pytest.raises(InferenceFailed):
        server.predict_blocking("broken", {"input": X})
    assert requests_total("broken", "broken", 1, 500) == before + 1


def test_endpoint_routing_key_and_canary_counting(
    fast_project: Project, server: InferenceServer, source: FakeSource
) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    source.add("m", 2, FakeModel(linear(2.0)))
    source.add("m", 3, FakeModel(failing_after_warmup))
    set_routes(fast_project, "shop", model="m", routes=[(1, 50), (2, 50)], source=source)
    seen = {
        key: {server.predict_blocking("shop", {"input": X}, routing_key=key).version for _ in "ab"}
        for key in (f"user-{i}" for i in range(30))
    }
    assert all(len(v) == 1 for v in seen.values())  # sticky by routing key
    assert {next(iter(v)) for v in seen.values()} == {1, 2}
    assert requests_total("shop", "m", 1, 200) + requests_total("shop", "m", 2, 200) >= 60

    # A canary to a broken version: in-process errors count against it and roll it back.
    set_routes(fast_project, "shop", model="m", routes=[(1, 100)], source=source)
    deploy(
        fast_project,
        "shop",
        version=3,
        canary="50,100",
        step_requests=10,
        max_error_rate=0.05,
        source=source,
    )
    store = EndpointStore(fast_project.db)
    failures = 0
    for i in range(400):
        try:
            server.predict_blocking("shop", {"input": X}, routing_key=f"k{i}")
        except InferenceFailed:
            failures += 1
        ep = store.get("shop")
        if ep.canary is not None and ep.canary.state is RolloutState.rolled_back:
            break
    ep = store.get("shop")
    assert failures > 0 and ep.canary is not None
    assert ep.canary.state is RolloutState.rolled_back and ep.routes == (Route(1, 100.0),)


def test_predictions_are_logged(
    fast_project: Project, server: InferenceServer, source: FakeSource
) -> None:
    import pandas as pd

    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    for _ in range(5):
        server.predict_blocking("m", {"input": X}, request_id="req-1")
    server.stop_blocking()  # flushes the prediction log
    folder = fast_project.config.offline_store_path / "serving_predictions" / "endpoint=m"
    frame = pd.concat(pd.read_parquet(f) for f in folder.glob("*.parquet"))
    assert len(frame) == 15 and set(frame["kind"]) == {"primary"}
    assert set(frame["request_id"]) == {"req-1"}
    assert sorted(set(frame["pred_predictions"])) == sorted(set(X.sum(axis=1).tolist()))


def test_runs_on_the_app_loop_when_it_runs(fast_project: Project, source: FakeSource) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
    )
    with running_server(serving_app(fast_project, source)) as address:
        srv = server_for(fast_project)
        with httpx.Client() as client:
            r = client.post(f"http://{address}/v2/models/m/infer", content=body)
            assert r.status_code == 200
        pred = srv.predict_blocking("m", {"input": np.ones((1, 4), dtype=np.float32)})
        assert pred.outputs["predictions"].tolist() == r.json()["outputs"][0]["data"]
        assert not srv.bridge.private_loop_running  # the app's loop served it
        loop = srv._loop
        assert loop is not None

        async def on_loop() -> str:
            try:
                srv.predict_blocking("m", {"input": X})
            except ServingError as exc:
                return str(exc)
            return ""

        import asyncio

        message = asyncio.run_coroutine_threadsafe(on_loop(), loop).result(10)
        assert "await predict()" in message
