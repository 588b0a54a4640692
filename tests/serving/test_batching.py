"""Dynamic batching: coalescing, preferred sizes, bounded queue (429), deadlines (504)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import orjson
import pytest

from flywheel.project import Project
from flywheel.serving import DeadlineExceeded, QueueFull, ServingError
from flywheel.serving._batching import BatchingPolicy, DynamicBatcher
from flywheel.serving._errors import InferenceFailed
from tests.serving.conftest import FakeModel, FakeSource, linear, running_server, serving_app


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _x(rows: int, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"input": np.full((rows, 4), value, dtype=np.float32)}


def test_concurrent_requests_are_coalesced_and_split_back(executor: ThreadPoolExecutor) -> None:
    model = FakeModel(linear(1.0), delay=0.02)

    async def main() -> list[dict[str, np.ndarray]]:
        batcher = DynamicBatcher(model.predict, BatchingPolicy(64, 5000), executor, name="m")
        results = await asyncio.gather(*(batcher.submit(_x(1, float(i)), 1) for i in range(40)))
        await batcher.close()
        return results

    results = asyncio.run(main())
    # Each request got its own row back.
    for i, out in enumerate(results):
        assert out["predictions"].tolist() == [4.0 * i]
    assert max(model.batch_sizes) > 1
    assert sum(model.batch_sizes) == 40
    assert len(model.batch_sizes) < 40


def test_batching_off_runs_one_request_per_call(executor: ThreadPoolExecutor) -> None:
    model = FakeModel(linear(1.0))

    async def main() -> None:
        batcher = DynamicBatcher(model.predict, BatchingPolicy(1, 0), executor)
        await asyncio.gather(*(batcher.submit(_x(2), 2) for _ in range(10)))
        await batcher.close()

    asyncio.run(main())
    assert model.batch_sizes == [2] * 10


def test_max_batch_size_and_preferred_sizes(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    model = FakeModel(lambda t: (gate.wait(5), linear(1.0)(t))[1])

    async def main() -> None:
        policy = BatchingPolicy(8, 200_000, preferred_batch_sizes=(4,))
        batcher = DynamicBatcher(model.predict, policy, executor)
        first = asyncio.ensure_future(batcher.submit(_x(1), 1))
        await asyncio.sleep(0.05)  # the first batch (1 row... or waiting) is now dispatched/waiting
        rest = [asyncio.ensure_future(batcher.submit(_x(1), 1)) for _ in range(9)]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(first, *rest)
        await batcher.close()

    asyncio.run(main())
    assert all(size <= 8 for size in model.batch_sizes)
    assert 4 in model.batch_sizes


def test_full_queue_is_refused(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()
    model = FakeModel(lambda t: (gate.wait(5), linear(1.0)(t))[1])

    async def main() -> None:
        batcher = DynamicBatcher(model.predict, BatchingPolicy(1, 0, max_queue_size=3), executor)
        running = [asyncio.ensure_future(batcher.submit(_x(1), 1))]
        await asyncio.sleep(0.05)  # it is executing (blocked on the gate)
        running += [asyncio.ensure_future(batcher.submit(_x(1), 1)) for _ in range(3)]
        await asyncio.sleep(0.01)  # three are queued
        with pytest.raises(QueueFull) as info:
            await batcher.submit(_x(1), 1)
        assert info.value.status_code == 429 and info.value.retry_after >= 1
        gate.set()
        await asyncio.gather(*running)
        await batcher.close()

    asyncio.run(main())


def test_deadline_passes_while_queued(executor: ThreadPoolExecutor) -> None:
    model = FakeModel(linear(1.0), delay=0.2)

    async def main() -> None:
        batcher = DynamicBatcher(model.predict, BatchingPolicy(1, 0), executor)
        slow = asyncio.ensure_future(batcher.submit(_x(1), 1))
        await asyncio.sleep(0.01)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(_x(1), 1, deadline=time.monotonic() + 0.05)
        await slow
        await batcher.close()

    asyncio.run(main())
    assert model.batch_sizes == [1]  # the expired request never ran


def test_one_bad_request_fails_alone(executor: ThreadPoolExecutor) -> None:
    def fn(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if (t["input"] < 0).any():
            raise ValueError("negative input")
        return linear(1.0)(t)

    model = FakeModel(fn, delay=0.01)

    async def main() -> list[object]:
        batcher = DynamicBatcher(model.predict, BatchingPolicy(16, 20_000), executor)
        out = await asyncio.gather(
            *(batcher.submit(_x(1, -1.0 if i == 3 else 1.0), 1) for i in range(6)),
            return_exceptions=True,
        )
        await batcher.close()
        return out

    results = asyncio.run(main())
    assert isinstance(results[3], InferenceFailed) and "negative input" in str(results[3])
    assert all(isinstance(r, dict) for i, r in enumerate(results) if i != 3)


def test_policy_validation_names_the_field() -> None:
    with pytest.raises(ServingError, match="max_batch_size"):
        BatchingPolicy(0)
    with pytest.raises(ServingError, match="preferred_batch_sizes"):
        BatchingPolicy(8, preferred_batch_sizes=(16,))


@pytest.mark.integration
def test_server_batches_sheds_and_times_out(project: Project, source: FakeSource) -> None:
    slow = source.add(
        "slow",
        1,
        FakeModel(linear(1.0), delay=0.05),
        config={"max_batch_size": 16, "max_queue_delay_us": 20_000, "max_queue_size": 4},
        stage="production",
    )
    body = orjson.dumps(
        {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    )
    with running_server(serving_app(project, source)) as server:
        url = f"http://{server}/v2/models/slow/infer"
        assert httpx.post(url, content=body).status_code == 200  # load + warm

        async def burst(n: int, headers: dict[str, str] | None = None) -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=30) as client:
                return await asyncio.gather(
                    *(client.post(url, content=body, headers=headers) for _ in range(n))
                )

        responses = asyncio.run(burst(40))
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 429}
        assert 429 in codes, codes
        shed = next(r for r in responses if r.status_code == 429)
        assert int(shed.headers["Retry-After"]) >= 1
        assert "queued" in shed.json()["error"]
        assert max(slow.batch_sizes) > 1

        # Nothing queued: admitted (it would start at once), and its deadline passes first.
        timed = httpx.post(url, content=body, headers={"timeout": "1us"})
        assert timed.status_code == 504, timed.text
        assert "deadline" in timed.json()["error"]
        bad = httpx.post(url, content=body, headers={"timeout": "soon"})
        assert bad.status_code == 400
        metrics = httpx.get(f"http://{server}/metrics").text
        for reason in ("queue_full", "deadline"):
            sample = (
                f'flywheel_serving_rejected_total{{endpoint="slow",model="slow",reason="{reason}",'
                'version="1"}'
            )
            assert sample in metrics, reason
        assert "flywheel_serving_batch_size_bucket" in metrics
        assert 'flywheel_serving_requests_total{code="429",endpoint="slow"' in metrics
        assert 'flywheel_serving_requests_total{code="200",endpoint="slow"' in metrics
        assert 'flywheel_serving_requests_total{code="504",endpoint="slow"' in metrics
        assert 'flywheel_serving_request_duration_seconds_bucket{endpoint="slow"' in metrics
        assert 'flywheel_serving_queue_depth{model="slow",version="1"}' in metrics
