"""Admission that knows time: FIFO order, 429 with Retry-After at once when the expected wait
exceeds the deadline, and never a 200 after the deadline (#14 item 4).

No test here asserts a duration: the waits the estimate sees are lower bounds (a model that
sleeps 0.1 s takes at least 0.1 s, however loaded the machine), so a slower machine only makes
the refusals more certain.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest

from flywheel.project import Project
from flywheel.serving import DeadlineExceeded, QueueFull, ServingError, server_for
from flywheel.serving._admission import WINDOW_MAX_REQUESTS, LoopLoad
from flywheel.serving._asgi import retry_after_seconds
from flywheel.serving._batching import BatchingPolicy, DynamicBatcher
from flywheel.serving._pool import slo_seconds
from flywheel.serving._request import parse_timeout_header
from tests.serving.conftest import FakeModel, FakeSource, linear, running_server, serving_app


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _x(value: float = 1.0) -> dict[str, np.ndarray]:
    return {"input": np.full((1, 4), value, dtype=np.float32)}


def test_requests_run_in_arrival_order(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    order: list[float] = []

    def fn(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(5)
        order.append(float(t["input"][0, 0]))
        return linear(1.0)(t)

    async def main() -> None:
        batcher = DynamicBatcher(FakeModel(fn).predict, BatchingPolicy(1, 0), executor)
        tasks = []
        for i in range(8):
            tasks.append(asyncio.ensure_future(batcher.submit(_x(float(i)), 1)))
            await asyncio.sleep(0)  # each one reaches the queue before the next is created
        gate.set()
        await asyncio.gather(*tasks)
        await batcher.close()

    asyncio.run(main())
    assert order == [float(i) for i in range(8)]


def test_expected_wait_beyond_the_deadline_is_refused_at_once(
    executor: ThreadPoolExecutor,
) -> None:
    gate = threading.Event()
    gate.set()

    def fn(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.1)  # every batch takes at least 0.1 s
        gate.wait(10)
        return linear(1.0)(t)

    model = FakeModel(fn)

    async def main() -> None:
        batcher = DynamicBatcher(model.predict, BatchingPolicy(1, 0), executor)
        await batcher.submit(_x(), 1)  # measures the batch time (>= 0.1 s)
        assert batcher.batch_s >= 0.1
        gate.clear()
        queued = [asyncio.ensure_future(batcher.submit(_x(), 1)) for _ in range(3)]
        await asyncio.sleep(0.01)
        calls = len(model.batch_sizes)
        # Three requests ahead (one running): at least 0.3 s before this one starts.
        assert batcher.expected_wait_s(1) >= 0.3
        with pytest.raises(QueueFull) as info:
            await batcher.submit(_x(), 1, deadline=time.monotonic() + 0.2)
        assert info.value.status_code == 429
        assert info.value.reason == "expected_wait"
        assert info.value.retry_after >= 1
        assert "expected wait" in str(info.value) and "deadline" in str(info.value)
        assert batcher.depth == 2 and len(model.batch_sizes) == calls  # it never queued
        # Without a deadline (or with room for the wait) a request is still admitted.
        roomy = asyncio.ensure_future(batcher.submit(_x(), 1, deadline=time.monotonic() + 60))
        gate.set()
        await asyncio.gather(*queued, roomy)
        await batcher.close()

    asyncio.run(main())
    assert len(model.batch_sizes) == 5


def test_deadline_passing_during_the_run_is_504_never_a_late_answer(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel(linear(1.0), delay=0.3)

    async def main() -> None:
        batcher = DynamicBatcher(model.predict, BatchingPolicy(1, 0), executor)
        # Nothing measured yet: admitted, runs, and finishes after its deadline.
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(_x(), 1, deadline=time.monotonic() + 0.05)
        await batcher.close()

    asyncio.run(main())
    assert model.batch_sizes == [1]  # it did run; its result was dropped


def test_loop_load_counts_the_loop_cpu_of_requests_in_flight(
    executor: ThreadPoolExecutor,
) -> None:
    load = LoopLoad(window_max_s=3600)
    assert load.wait_s() == 0.0  # nothing in flight
    for _ in range(WINDOW_MAX_REQUESTS):
        token = load.started()
        spent = time.thread_time() + 0.0002
        while time.thread_time() < spent:  # this thread's CPU: at least 0.2 ms per request
            pass
        load.finished(token)
    assert load.inflight == 0 and load.cpu_s >= 0.0002
    assert load.wall_s == 0.0  # the server emptied after every request: never busy
    held = [load.started() for _ in range(10)]
    assert load.wait_s() >= 0.002
    # A window in which the server never emptied measures wall time per answer.
    for _ in range(WINDOW_MAX_REQUESTS + 1):
        token = load.started()
        time.sleep(0.0005)
        load.finished(token)
    assert load.wall_s >= 0.0005
    # The oldest request in flight has waited this long: a newcomer would wait about as long.
    time.sleep(0.05)
    assert load.wait_s() >= 0.05
    for token in held:
        load.finished(token)
    assert load.wait_s() == 0.0

    async def main() -> None:
        # A burst admitted in one loop step: the batcher's queue alone looks short, the loop's
        # work for those ahead does not; a request that would wait for it past its deadline is
        # refused, one that starts at once on an idle loop is not.
        batcher = DynamicBatcher(FakeModel(linear(1.0)).predict, BatchingPolicy(8, 0), executor)
        batcher.admit(1, time.monotonic() + 0.01)
        tokens = [batcher.load.started() for _ in range(3)]
        time.sleep(0.05)  # the oldest of them has been in flight 50 ms
        with pytest.raises(QueueFull) as info:
            batcher.admit(1, time.monotonic() + 0.01)
        assert info.value.reason == "expected_wait"
        for token in tokens:
            batcher.load.finished(token)
        batcher.admit(1, time.monotonic() + 0.01)
        await batcher.close()

    asyncio.run(main())


def test_deadline_sources_parse_and_name_the_field() -> None:
    assert parse_timeout_header("0.25", header="x-request-timeout", bare="s") == 0.25
    assert parse_timeout_header("250ms", header="x-request-timeout", bare="s") == 0.25
    assert parse_timeout_header("250") == pytest.approx(250e-6)
    with pytest.raises(ServingError, match="x-request-timeout"):
        parse_timeout_header("soon", header="x-request-timeout", bare="s")
    assert slo_seconds({"slo_ms": 50}) == 0.05
    assert slo_seconds({}) is None
    for bad in (0, -5, "fast", True):
        with pytest.raises(ServingError, match="slo_ms"):
            slo_seconds({"slo_ms": bad})


@pytest.mark.integration
def test_overload_gets_429_with_retry_after_and_no_5xx(
    project: Project, source: FakeSource
) -> None:
    """40 concurrent requests to a model whose batches take >= 0.1 s and whose SLO is 250 ms:
    the queue can hold about two batches' worth in time, so the rest are refused with 429
    and Retry-After instead of waiting; none is a 5xx and every 200 came within its deadline."""
    model = source.add(
        "slow",
        1,
        FakeModel(linear(1.0), delay=0.1),
        config={"max_batch_size": 4, "max_queue_delay_us": 0, "slo_ms": 250},
        stage="production",
    )
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    )
    with running_server(serving_app(project, source)) as server:
        url = f"http://{server}/v2/models/slow/infer"
        assert httpx.post(url, content=body).status_code == 200  # load, warm, measure
        meta = httpx.get(f"http://{server}/v2/models/slow").json()
        assert meta["parameters"]["slo_ms"] == 250

        async def burst(n: int) -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(*(client.post(url, content=body) for _ in range(n)))

        responses = asyncio.run(burst(40))
        codes = [r.status_code for r in responses]
        assert all(c < 500 for c in codes), codes
        assert set(codes) <= {200, 429}, codes
        assert codes.count(429) > 0 and codes.count(200) > 0, codes
        for r in responses:
            if r.status_code == 429:
                assert int(r.headers["Retry-After"]) >= 1
                assert "expected wait" in r.json()["error"]
        # Refused requests never ran: the model saw only the admitted ones (plus warm-up).
        assert sum(model.batch_sizes) < 40 + 3
        # A caller's own X-Request-Timeout (bare seconds) beats the SLO.
        roomy = httpx.post(url, content=body, headers={"X-Request-Timeout": "30"})
        assert roomy.status_code == 200
        bad = httpx.post(url, content=body, headers={"X-Request-Timeout": "later"})
        assert bad.status_code == 400 and "x-request-timeout" in bad.json()["error"]
        metrics = httpx.get(f"http://{server}/metrics").text
        assert 'reason="expected_wait"' in metrics


def test_headroom_keeps_part_of_the_time_left_for_what_admission_cannot_see(
    executor: ThreadPoolExecutor,
) -> None:
    gate = threading.Event()
    gate.set()

    def fn(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.1)  # every batch takes at least 0.1 s
        gate.wait(10)
        return linear(1.0)(t)

    async def main() -> None:
        batcher = DynamicBatcher(FakeModel(fn).predict, BatchingPolicy(1, 0), executor)
        await batcher.submit(_x(), 1)  # measures the batch time (>= 0.1 s)
        gate.clear()
        queued = [asyncio.ensure_future(batcher.submit(_x(), 1)) for _ in range(3)]
        await asyncio.sleep(0.01)
        # At least 0.4 s to an answer: within a 60 s deadline, but not within 0.5% of it.
        deadline = time.monotonic() + 60
        batcher.admit(1, deadline, loop=False)
        with pytest.raises(QueueFull) as info:
            batcher.admit(1, deadline, loop=False, headroom=0.005)
        assert info.value.reason == "expected_wait" and "of it usable" in str(info.value)
        gate.set()
        await asyncio.gather(*queued)
        await batcher.close()

    asyncio.run(main())


def test_retry_after_is_spread_so_refused_clients_do_not_return_as_one_burst() -> None:
    rng = random.Random(0)
    for expected, base in ((0.0, 1), (0.4, 1), (1.0, 1), (1.2, 2), (3.0, 3)):
        seen = {retry_after_seconds(expected, rng) for _ in range(400)}
        assert seen == set(range(base, 2 * base + 1)), (expected, seen)


def test_http_admission_uses_the_configured_headroom(project: Project) -> None:
    assert project.config.serving.admission_headroom == 0.5
    with pytest.raises(ValueError, match="admission_headroom"):
        project.config.serving.model_validate({"admission_headroom": 0})


def test_a_callers_deadline_is_kept_with_headroom_over_http(
    project: Project, source: FakeSource
) -> None:
    """A request that brings its own deadline may spend only ``admission_headroom`` of it on the
    expected answer; the server's own (here a 60 s SLO) is spent in full."""
    gate = threading.Event()
    gate.set()

    def fn(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(0.1)  # every batch takes at least 0.1 s
        gate.wait(30)
        return linear(1.0)(t)

    source.add(
        "slow",
        1,
        FakeModel(fn),
        config={"max_batch_size": 1, "max_queue_delay_us": 0, "slo_ms": 60_000},
        stage="production",
    )
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    )
    with running_server(serving_app(project, source)) as server:
        url = f"http://{server}/v2/models/slow/infer"
        assert httpx.post(url, content=body).status_code == 200  # load, warm, measure
        batcher = server_for(project).pool.peek(("slow", 1)).batcher

        async def main() -> tuple[list[httpx.Response], httpx.Response, httpx.Response]:
            async with httpx.AsyncClient(timeout=60) as client:
                gate.clear()
                queued = [asyncio.ensure_future(client.post(url, content=body)) for _ in range(4)]
                while batcher.depth < 3:  # one running (held at the gate), three queued
                    await asyncio.sleep(0.01)
                # At least 0.5 s to an answer: half of a 0.7 s deadline is not enough.
                tight = await client.post(url, content=body, headers={"X-Request-Timeout": "0.7"})
                roomy = asyncio.ensure_future(client.post(url, content=body))  # 60 s SLO
                await asyncio.sleep(0.05)
                gate.set()
                return list(await asyncio.gather(*queued)), tight, await roomy

        queued, tight, roomy = asyncio.run(main())
        assert [r.status_code for r in queued] == [200] * 4
        assert tight.status_code == 429 and int(tight.headers["Retry-After"]) >= 1
        assert "50% of it usable" in tight.json()["error"]
        assert roomy.status_code == 200
