"""Endpoints: weighted split, stickiness, shadow, canary with rollback, zero-config stages."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable

import httpx
import numpy as np
import orjson
import pytest

from flywheel.lineage import Node, downstream, record_edge
from flywheel.project import Project
from flywheel.serving import (
    Endpoint,
    EndpointConflict,
    EndpointStore,
    RolloutState,
    Route,
    ServingError,
    deploy,
    pause,
    resume,
    rollback,
    set_routes,
    set_shadow,
)
from flywheel.serving._canary import (
    Action,
    CanaryPlan,
    GateStats,
    LatencyHistogram,
    evaluate,
    parse_steps,
)
from tests.serving.conftest import (
    FakeModel,
    FakeSource,
    failing_after_warmup,
    linear,
    running_server,
    serving_app,
)

BODY = orjson.dumps(
    {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 1, 1, 1]}]}
)


BODY2 = orjson.dumps(
    {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
)


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> float:
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not reached in time")
        time.sleep(0.02)
    return time.monotonic() - start


# -- pure routing and gates ----------------------------------------------------------------------


def test_weighted_split_within_statistical_tolerance() -> None:
    ep = Endpoint("e", "m", (Route(1, 70), Route(2, 20), Route(3, 10)))
    n = 20_000
    by_key = Counter(ep.choose(f"user-{i}") for i in range(n))
    rng = random.Random(7)
    by_random = Counter(ep.choose(None, rng) for _ in range(n))
    for counts in (by_key, by_random):
        for version, share in ((1, 0.7), (2, 0.2), (3, 0.1)):
            sigma = (share * (1 - share) / n) ** 0.5
            assert abs(counts[version] / n - share) < 4 * sigma, counts


def test_sticky_assignment_and_few_moves_when_weights_change() -> None:
    ep = Endpoint("e", "m", (Route(1, 50), Route(2, 50)))
    keys = [f"user-{i}" for i in range(2000)]
    first = [ep.choose(k) for k in keys]
    assert first == [ep.choose(k) for k in keys]  # sticky
    shifted = Endpoint("e", "m", (Route(1, 40), Route(2, 60)))
    moved = sum(a != shifted.choose(k) for a, k in zip(first, keys, strict=True))
    assert moved < 0.2 * len(keys)  # ~10% must move; rehashing everything would move ~50%


def test_canary_gates() -> None:
    plan = CanaryPlan("r", 1, 2, (5, 50, 100), 100, 0.05, 20.0)
    fast = LatencyHistogram()
    for _ in range(100):
        fast.observe(3.0)
    assert evaluate(plan, GateStats(50, 0, fast)).action is Action.hold
    assert evaluate(plan, GateStats(100, 2, fast)).action is Action.advance
    assert evaluate(plan, GateStats(20, 6, fast)).action is Action.rollback  # budget blown early
    slow = LatencyHistogram()
    for _ in range(100):
        slow.observe(50.0)
    decision = evaluate(plan, GateStats(100, 0, slow))
    assert decision.action is Action.rollback and "p99" in decision.reason
    last = CanaryPlan("r", 1, 2, (5, 50, 100), 100, 0.05, 20.0, step=2)
    assert evaluate(last, GateStats(100, 0, fast)).action is Action.complete
    assert parse_steps("5,25,50") == (5, 25, 50, 100)
    with pytest.raises(ServingError):
        parse_steps("50,25")


def test_latency_histogram_p99_is_an_upper_bound() -> None:
    hist = LatencyHistogram()
    values = np.random.default_rng(0).exponential(5.0, 5000)
    for v in values:
        hist.observe(float(v))
    true = float(np.quantile(values, 0.99))
    assert true <= hist.quantile_ms(0.99) <= true * 1.16


# -- stored endpoints ----------------------------------------------------------------------------


def test_endpoint_store_revisions_and_conflicts(any_project: Project, source: FakeSource) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    source.add("m", 2, FakeModel(linear(2.0)))
    ep = set_routes(any_project, "e", model="m", routes=[(1, 90), (2, 10)], source=source)
    assert ep.revision == 1
    store = EndpointStore(any_project.db)
    assert store.get("e").routes == (Route(1, 90.0), Route(2, 10.0))
    with pytest.raises(EndpointConflict):
        store.put(ep, expect_revision=0)
    with pytest.raises(ServingError, match="no version 7"):
        set_routes(any_project, "e", model="m", routes=[(7, 1)], source=source)
    with pytest.raises(ServingError, match="weights must not all be 0"):
        set_routes(any_project, "e", model="m", routes=[(1, 0)], source=source)
    started = deploy(any_project, "e", version=2, canary="10,100", step_requests=5, source=source)
    assert started.canary is not None and started.canary.baseline == 1
    with pytest.raises(EndpointConflict, match="canary"):
        deploy(any_project, "e", version=2, source=source)
    with pytest.raises(EndpointConflict, match="only a paused canary can be resumed"):
        resume(any_project, "e")
    paused = pause(any_project, "e", reason="waiting for the sale", actor="ana")
    assert paused.canary is not None and paused.canary.state is RolloutState.paused
    assert paused.canary.weight == 10 and paused.effective_routes() == started.effective_routes()
    with pytest.raises(EndpointConflict, match="paused"):
        deploy(any_project, "e", version=2, source=source)  # a paused canary still holds it
    with pytest.raises(EndpointConflict, match="only a running canary can be paused"):
        pause(any_project, "e")
    back = rollback(any_project, "e", reason="looks wrong")  # a paused canary can be aborted
    assert back.canary is not None and back.canary.state is RolloutState.rolled_back
    with pytest.raises(EndpointConflict, match="rolled_back"):
        pause(any_project, "e")
    kinds = [e.kind for e in store.events("e")]
    assert kinds == ["update", "canary_start", "canary_pause", "canary_rollback"]
    assert store.events("e")[-1].detail["reason"] == "looks wrong"
    assert (store.events("e")[-2].actor, store.events("e")[-2].detail["reason"]) == (
        "ana",
        "waiting for the sale",
    )


def test_routed_canaried_and_shadowed_versions_lead_to_the_endpoint_in_lineage(
    any_project: Project, source: FakeSource
) -> None:
    for v in (1, 2, 3, 4):
        source.add("m", v, FakeModel(linear(float(v))), stage="production" if v == 1 else None)

    def endpoints_of(version: int) -> dict[str, str]:
        graph = downstream(any_project.db, Node("model_version", f"m/{version}"))
        return {e.dst.id: e.relation for e in graph.edges if e.dst.kind == "endpoint"}

    deploy(any_project, "shop", model="m", version=1, source=source)
    assert endpoints_of(1) == {"shop": "serves"} and endpoints_of(2) == {}
    deploy(any_project, "shop", version=2, canary="10,100", step_requests=5, source=source)
    assert endpoints_of(2) == {"shop": "serves"}  # the candidate takes traffic at once
    rollback(any_project, "shop", reason="test")
    set_routes(any_project, "other", model="m", routes=[(1, 50), (3, 50)], source=source)
    set_shadow(any_project, "other", version=4, share=0.5, source=source)
    assert endpoints_of(1) == {"shop": "serves", "other": "serves"}
    assert endpoints_of(3) == {"other": "serves"}
    assert endpoints_of(4) == {"other": "shadows"}
    # The graph is transitive: a run that made a version reaches the endpoints too.
    record_edge(any_project.db, Node("run", "r1"), Node("model_version", "m/3"), "trained")
    reached = downstream(any_project.db, Node("run", "r1")).nodes
    assert Node("endpoint", "other") in reached and Node("endpoint", "shop") not in reached


# -- over HTTP -----------------------------------------------------------------------------------


@pytest.mark.integration
def test_split_sticky_and_shadow_over_http(fast_project: Project, source: FakeSource) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    source.add("m", 2, FakeModel(linear(2.0)))
    broken = source.add("m", 3, FakeModel(failing_after_warmup))
    set_routes(fast_project, "shop", model="m", routes=[(1, 50), (2, 50)], source=source)
    with running_server(serving_app(fast_project, source)) as server:
        url = f"http://{server}/v2/models/shop/infer"
        with httpx.Client() as client:
            seen = {
                key: {
                    client.post(url, content=BODY, headers={"x-routing-key": key}).json()[
                        "model_version"
                    ]
                    for _ in range(3)
                }
                for key in (f"u{i}" for i in range(30))
            }
            assert all(len(v) == 1 for v in seen.values())  # sticky
            assert {next(iter(v)) for v in seen.values()} == {"1", "2"}  # both get traffic

            # Shadow to a broken version: every response still comes from the primary.
            set_shadow(fast_project, "shop", version=3, share=1.0, source=source)
            set_routes(
                fast_project, "shop", model="m", routes=[(1, 1)], shadow=(3, 1.0), source=source
            )
            meta_url = f"http://{server}/v2/models/shop"
            wait_for(lambda: client.get(meta_url).json()["versions"] == ["1", "3"])
            for _ in range(20):
                r = client.post(url, content=BODY2)
                assert r.status_code == 200
                assert r.json()["outputs"][0]["data"] == [10.0]
            wait_for(lambda: sum(broken.batch_sizes) >= 20)

            # Shadow to a version that disagrees: recorded, never returned.
            set_routes(
                fast_project, "shop", model="m", routes=[(1, 1)], shadow=(2, 1.0), source=source
            )
            wait_for(lambda: client.get(meta_url).json()["versions"] == ["1", "2"])
            for _ in range(10):
                assert client.post(url, content=BODY).json()["outputs"][0]["data"] == [4.0]
            metrics = client.get(f"http://{server}/metrics").text
            assert (
                'flywheel_serving_shadow_requests_total{endpoint="shop",model="m",outcome="error",version="3"}'
                in metrics
            )
            assert (
                'flywheel_serving_shadow_requests_total{endpoint="shop",model="m",outcome="ok",version="2"}'
                in metrics
            )
    import pandas as pd

    folder = fast_project.config.offline_store_path / "serving_predictions" / "endpoint=shop"
    frame = pd.concat(pd.read_parquet(f) for f in folder.glob("*.parquet"))
    shadow_rows = frame[frame["kind"] == "shadow"]
    assert len(shadow_rows) >= 10
    assert (shadow_rows["pred_predictions"] == 4.0).all()
    assert (shadow_rows["shadow_pred_predictions"] == 8.0).all()
    assert (shadow_rows["disagreement"] > 0.9).all()
    primary = frame[frame["kind"] == "primary"]
    assert {"input_0", "input_3", "pred_predictions", "latency_ms", "request_id"} <= set(primary)


@pytest.mark.integration
def test_canary_with_failing_candidate_rolls_back(
    fast_project: Project, source: FakeSource
) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    source.add("m", 2, FakeModel(failing_after_warmup))
    deploy(fast_project, "shop", model="m", version=1, source=source)
    with running_server(serving_app(fast_project, source)) as server:
        url = f"http://{server}/v2/models/shop/infer"
        store = EndpointStore(fast_project.db)
        deploy(
            fast_project,
            "shop",
            version=2,
            canary="20,50,100",
            step_requests=20,
            max_error_rate=0.05,
            source=source,
        )

        async def traffic() -> list[int]:
            codes: list[int] = []
            async with httpx.AsyncClient() as client:
                for _ in range(60):
                    rs = await asyncio.gather(*(client.post(url, content=BODY2) for _ in range(8)))
                    codes += [r.status_code for r in rs]
                    ep = store.get("shop")
                    if ep.canary is not None and ep.canary.state is RolloutState.rolled_back:
                        break
            return codes

        codes = asyncio.run(traffic())
        assert 500 in codes  # the candidate did get (and fail) a share of the traffic
        ep = store.get("shop")
        assert ep.canary is not None and ep.canary.state is RolloutState.rolled_back
        assert "errors" in ep.canary.reason and "v2" in ep.canary.reason
        assert ep.routes == (Route(1, 100.0),)
        kinds = [e.kind for e in store.events("shop")]
        assert kinds[-1] == "canary_rollback"
        time.sleep(0.2)
        with httpx.Client() as client:
            assert all(client.post(url, content=BODY).status_code == 200 for _ in range(20))


@pytest.mark.integration
def test_healthy_canary_advances_to_full_traffic(fast_project: Project, source: FakeSource) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    source.add("m", 2, FakeModel(linear(2.0)))
    with running_server(serving_app(fast_project, source)) as server:
        url = f"http://{server}/v2/models/shop/infer"
        deploy(
            fast_project,
            "shop",
            model="m",
            version=2,
            canary="25,100",
            step_requests=10,
            source=source,
        )
        store = EndpointStore(fast_project.db)
        with httpx.Client() as client:
            for _ in range(400):
                client.post(url, content=BODY)
                ep = store.get("shop")
                if ep.canary is not None and ep.canary.state is RolloutState.succeeded:
                    break
        ep = store.get("shop")
        assert ep.canary is not None and ep.canary.state is RolloutState.succeeded, ep
        assert ep.routes == (Route(2, 100.0),)
        assert [e.kind for e in store.events("shop")][-2:] == ["canary_advance", "canary_complete"]


@pytest.mark.integration
def test_promotion_is_served_without_restart(fast_project: Project, source: FakeSource) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    source.add("m", 2, FakeModel(linear(2.0)))
    with running_server(serving_app(fast_project, source)) as server:
        url = f"http://{server}/v2/models/m/infer"
        with httpx.Client() as client:
            assert client.post(url, content=BODY).json()["model_version"] == "1"
            source.set_stage("m", 2, "production")
            took = wait_for(lambda: client.post(url, content=BODY).json()["model_version"] == "2")
            assert took < 5.0
            source.set_stage("m", 1, "production")  # rollback
            wait_for(lambda: client.post(url, content=BODY).json()["model_version"] == "1")


@pytest.mark.integration
def test_control_api_needs_a_writer_token(project: Project, source: FakeSource) -> None:
    from flywheel.auth import TokenStore

    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    _, reader = TokenStore(project.db).create("reader")
    _, writer = TokenStore(project.db).create("writer")
    with running_server(serving_app(project, source)) as server:
        base = f"http://{server}/serving/endpoints"
        body = {"model": "m", "routes": [{"version": 1, "weight": 1.0}]}
        assert httpx.put(f"{base}/shop", json=body).status_code == 401
        denied = httpx.put(f"{base}/shop", json=body, headers={"Authorization": f"Bearer {reader}"})
        assert denied.status_code == 403
        ok = httpx.put(f"{base}/shop", json=body, headers={"Authorization": f"Bearer {writer}"})
        assert ok.status_code == 200 and ok.json()["revision"] == 1
        assert httpx.get(base).json()[0]["name"] == "shop"
        missing = httpx.post(
            f"{base}/shop/deploy",
            json={"version": 9},
            headers={"Authorization": f"Bearer {writer}"},
        )
        assert missing.status_code == 404


def test_control_bodies_take_json_integers_as_the_schema_declares() -> None:
    """JSON Schema's integer includes 2.0 (schemathesis sends it); true and 2.5 stay refused."""
    from pydantic import ValidationError

    from flywheel.serving._api import DeployBody, ShadowUpdate

    body = DeployBody.model_validate_json('{"version": 2.0, "canary": [10.0, 100]}')
    assert body.version == 2 and body.canary == [10, 100]
    assert ShadowUpdate.model_validate_json('{"version": 3.0}').version == 3
    for bad in ('{"version": true}', '{"version": 2.5}', '{"version": "2"}', '{"version": 0}'):
        with pytest.raises(ValidationError):
            DeployBody.model_validate_json(bad)
    schema = DeployBody.model_json_schema()["properties"]["canary"]["anyOf"][0]["items"]
    assert schema["minimum"] == 1 and schema["maximum"] == 100


def test_a_callers_timeout_is_not_a_candidate_error(
    fast_project: Project, source: FakeSource
) -> None:
    """Issue #17 item 18: a slow-but-correct candidate whose callers give up (Timeout header,
    ``predict(timeout_s=...)``) is not rolled back for "errors"; its real failures still count."""
    from flywheel.serving import server_for

    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    source.add("m", 2, FakeModel(linear(2.0), delay=0.05))
    deploy(fast_project, "shop", model="m", version=1, source=source)
    with running_server(serving_app(fast_project, source)) as server:
        url = f"http://{server}/v2/models/shop/infer"
        deploy(
            fast_project,
            "shop",
            version=2,
            canary="50,100",
            step_requests=10,
            max_error_rate=0.05,
            source=source,
        )
        store = EndpointStore(fast_project.db)
        codes: Counter[int] = Counter()
        with httpx.Client() as client:
            for i in range(60):
                r = client.post(
                    url, content=BODY, headers={"Timeout": "5ms", "X-Routing-Key": f"u{i}"}
                )
                codes[r.status_code] += 1
        # The candidate's share timed out on the caller's clock (504), or, while its abandoned
        # runs still held it, was shed at once (429); neither counts for or against it.
        assert codes[504] >= 1 and codes[504] + codes[429] >= 10, codes

        srv = server_for(fast_project)
        for i in range(20):
            with contextlib.suppress(ServingError):
                srv.predict_blocking(
                    "shop",
                    {"input": np.ones((1, 4), np.float32)},
                    routing_key=f"p{i}",
                    timeout_s=0.005,
                )
        time.sleep(0.3)  # a reconcile pass would have acted on counted errors by now
        ep = store.get("shop")
        assert ep.canary is not None and ep.canary.state is RolloutState.running, ep.canary


class _BrokenOnRealTraffic:
    """A real torch module (TorchScript) that passes its all-ones input example and fails on
    anything else: a candidate that registers and loads fine, then breaks under traffic."""

    @staticmethod
    def build() -> object:
        import torch

        class Broken(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.linear = torch.nn.Linear(4, 1)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if bool((x != 1.0).any()):
                    raise RuntimeError("candidate is broken")
                return self.linear(x)

        return Broken()


@pytest.mark.integration
def test_canary_advances_and_rolls_back_under_traffic_over_registered_models(
    fast_project: Project,
) -> None:
    """Issue #17 item 12: the canary over real registered versions (sklearn v1/v2, a TorchScript
    v3 that fails on real inputs), driven by live HTTP traffic through the real registry
    source: v2 advances to 100%, v3 is rolled back and v2 keeps serving."""
    from sklearn.linear_model import LinearRegression

    from flywheel.api import create_server_app
    from flywheel.registry import Registry

    project = fast_project
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    registry = Registry(project)
    ones = np.ones((2, 4), np.float32)
    for weight in (1.0, 2.0):
        registry.register_model(
            "real",
            LinearRegression().fit(x, x.sum(axis=1) * weight),
            flavor="sklearn",
            input_example={"input": ones},
            export_onnx=False,
        )
    registry.set_stage("real", 1, "production")
    broken = registry.register_model(
        "real",
        _BrokenOnRealTraffic.build(),
        flavor="pytorch",
        input_example={"input": ones},
        export_onnx=False,
    )
    assert broken.version == 3
    store = EndpointStore(project.db)
    deploy(project, "shop", model="real", version=1)
    with running_server(create_server_app(project)) as server:
        url = f"http://{server}/v2/models/shop/infer"

        def traffic(until: RolloutState, limit: int = 400) -> Counter[int]:
            codes: Counter[int] = Counter()
            with httpx.Client(timeout=30) as client:
                for i in range(limit):
                    body = {
                        "inputs": [
                            {"name": "input", "shape": [1, 4], "datatype": "FP32",
                             "data": x[i % 64].tolist()}
                        ]
                    }  # fmt: skip
                    r = client.post(url, json=body, headers={"X-Routing-Key": f"u{i}"})
                    codes[r.status_code] += 1
                    ep = store.get("shop")
                    if ep.canary is not None and ep.canary.state is until:
                        break
            return codes

        deploy(project, "shop", version=2, canary="50,100", step_requests=10)
        codes = traffic(RolloutState.succeeded)
        ep = store.get("shop")
        assert ep.canary is not None and ep.canary.state is RolloutState.succeeded, (ep, codes)
        assert ep.routes == (Route(2, 100.0),) and set(codes) == {200}
        deploy(project, "shop", version=3, canary="50,100", step_requests=10, max_error_rate=0.05)
        codes = traffic(RolloutState.rolled_back)
        ep = store.get("shop")
        assert ep.canary is not None and ep.canary.state is RolloutState.rolled_back, (ep, codes)
        assert codes[500] > 0 and "v3" in ep.canary.reason
        assert ep.routes == (Route(2, 100.0),)
        time.sleep(0.3)
        with httpx.Client(timeout=30) as client:
            body = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32",
                                "data": [1.0, 2.0, 3.0, 4.0]}]}  # fmt: skip
            r = client.post(url, json=body)
        assert r.status_code == 200
        assert r.json()["model_version"] == "2"
        assert r.json()["outputs"][0]["data"][0] == pytest.approx(20.0, rel=1e-3)
