"""A request of more rows than one batch holds (the recommender's ranker sends 200 candidate rows
to a model batching 32) runs as one batch, so admission counts it as one (issue #14).

Admission once counted such a request as ``ceil(rows / max_batch_size)`` batches, so a 200-row
request on an idle server was expected to wait 6 batch times and was shed (429) whenever its
deadline was shorter than 7 batch times: most of the demo's in-process ranker calls fell back.
No test here asserts a duration: the batch times are set, or are lower bounds (a model that
sleeps 0.2 s takes at least that long), so a slower machine cannot make the old code pass.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from flywheel.project import Project
from flywheel.serving import InferenceServer, QueueFull
from flywheel.serving._batching import BatchingPolicy, DynamicBatcher
from tests.serving.conftest import FakeModel, FakeSource, linear

ROWS = 200  # the ranker's candidates per request (recsys RANK_TOP)


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(2) as pool:
        yield pool


def _x(rows: int = ROWS) -> dict[str, np.ndarray]:
    return {"input": np.ones((rows, 4), dtype=np.float32)}


def test_a_request_larger_than_a_batch_on_an_idle_batcher_waits_for_nothing(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel(linear(1.0), delay=0.05)

    async def main() -> None:
        batcher = DynamicBatcher(model.predict, BatchingPolicy(max_batch_size=32), executor)
        await batcher.submit(_x(), ROWS)  # measures the batch time
        # (About 0.05 s; a little less when the loop thread is descheduled between starting the
        # batch and noting when: the tests below hold for any batch time above 0.)
        assert batcher.batch_s > 0.0
        assert batcher.expected_wait_s(ROWS) == 0.0  # idle: it starts at once
        # A deadline of two batch times: the old estimate (6 batches ahead) refused it.
        batcher.admit(ROWS, time.monotonic() + 2 * batcher.batch_s, loop=False)
        out = await batcher.submit(_x(), ROWS, deadline=time.monotonic() + 60)
        assert out["predictions"].shape == (ROWS,)
        await batcher.close()

    asyncio.run(main())
    assert model.batch_sizes == [ROWS, ROWS]  # each ran whole, as one batch


def test_queued_large_requests_count_one_batch_each(executor: ThreadPoolExecutor) -> None:
    gate = threading.Event()

    def fn(t: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        gate.wait(10)
        return linear(1.0)(t)

    model = FakeModel(fn)

    async def main() -> None:
        batcher = DynamicBatcher(model.predict, BatchingPolicy(max_batch_size=32), executor)
        batcher._per_batch_s = lambda: 1.0  # type: ignore[method-assign]  # one batch = 1 s
        running = asyncio.ensure_future(batcher.submit(_x(), ROWS))
        await asyncio.sleep(0.01)  # dispatched: the only instance is busy
        queued = [asyncio.ensure_future(batcher.submit(_x(), ROWS)) for _ in range(2)]
        small = asyncio.ensure_future(batcher.submit(_x(8), 8))
        await asyncio.sleep(0)
        assert batcher.depth == 3
        # In flight, two 200-row requests and one of 8 rows queued: 4 batches before a newcomer
        # of 200 rows (the 8 rows cannot join it), 3 before one of 8 rows (it joins them).
        assert batcher.expected_wait_s(ROWS) == 4.0
        assert batcher.expected_wait_s(8) == 3.0
        gate.set()
        await asyncio.gather(running, *queued, small)
        assert batcher.expected_wait_s(ROWS) == 0.0  # the books are back to empty
        await batcher.close()

    asyncio.run(main())
    assert sorted(model.batch_sizes) == [8, ROWS, ROWS, ROWS]


@pytest.fixture
def server(project: Project, source: FakeSource) -> Iterator[InferenceServer]:
    srv = InferenceServer(project, source)
    yield srv
    srv.stop_blocking()


def test_in_process_call_with_time_for_its_batch_is_served_not_shed(
    server: InferenceServer, source: FakeSource
) -> None:
    """The recommender's call: 200 rows, a budget six times the model's compute, idle server."""
    model = source.add("ranker", 1, FakeModel(linear(1.0), delay=0.2), stage="production")
    server.predict_blocking("ranker", _x())  # loads, warms, measures the batch time (>= 0.2 s)
    model.batch_sizes.clear()
    for _ in range(2):
        try:
            pred = server.predict_blocking("ranker", _x(), timeout_s=1.2)
        except QueueFull as exc:  # what the old estimate (7 batches of >= 0.2 s) answered
            pytest.fail(f"an idle server shed a request it had time for: {exc}")
        assert pred.outputs["predictions"].shape == (ROWS,)
    assert model.batch_sizes == [ROWS, ROWS]
