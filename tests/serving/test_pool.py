"""The version pool alone: load once however many ask, failures retried after a pause,
retirement of what nothing routes to, and the report of what is loaded."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from flywheel.config import ServingConfig
from flywheel.serving import ModelUnavailable
from flywheel.serving._background import BackgroundTasks
from flywheel.serving._pool import VersionPool
from tests.serving.conftest import FakeModel, FakeSource, failing, linear


class CountingSource(FakeSource):
    def __init__(self) -> None:
        super().__init__()
        self.loads = 0
        self.gate = threading.Event()
        self.gate.set()

    def load(self, mv, *, prefer_onnx):  # type: ignore[no-untyped-def]
        self.loads += 1
        self.gate.wait(10)
        return super().load(mv, prefer_onnx=prefer_onnx)


def _pool(source: FakeSource) -> VersionPool:
    pool = VersionPool(source, ServingConfig(prefer_onnx=False), BackgroundTasks())
    pool.start()
    return pool


def test_concurrent_requests_load_a_version_once_and_it_predicts() -> None:
    source = CountingSource()
    source.add("m", 1, FakeModel(linear(2.0)))

    async def scenario() -> None:
        pool = _pool(source)
        source.gate.clear()
        waiting = [asyncio.create_task(pool.get_version("m", 1)) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert ("m", 1) not in pool and pool.loading  # still loading, one load in flight
        source.gate.set()
        served = await asyncio.gather(*waiting)
        assert all(s is served[0] for s in served)
        assert source.loads == 1
        out = await served[0].batcher.submit({"input": np.ones((2, 4), np.float32)}, 2, None)
        assert out["predictions"].tolist() == [8.0, 8.0]
        assert pool.loaded()[0]["model"] == "m" and pool.loaded()[0]["version"] == 1
        await pool.close()
        assert pool.loaded() == []

    asyncio.run(scenario())


def test_a_failed_load_is_not_retried_before_the_pause() -> None:
    source = CountingSource()
    source.add("broken", 1, FakeModel(failing))  # fails on its own input example

    async def scenario() -> None:
        pool = _pool(source)
        with pytest.raises(ModelUnavailable, match="input example"):
            await pool.get_version("broken", 1)
        assert source.loads == 1
        with pytest.raises(ModelUnavailable, match="input example"):
            await pool.get_version("broken", 1)
        assert source.loads == 1  # the cached failure answered, no second load
        await pool.close()

    asyncio.run(scenario())


def test_not_started_is_model_unavailable() -> None:
    source = FakeSource()
    source.add("m", 1, FakeModel(linear(1.0)))
    pool = VersionPool(source, ServingConfig(), BackgroundTasks())

    with pytest.raises(ModelUnavailable, match="not started"):
        asyncio.run(pool.get_version("m", 1))


def test_retire_later_closes_only_what_is_no_longer_in_use() -> None:
    source = FakeSource()
    source.add("m", 1, FakeModel(linear(1.0)))
    source.add("m", 2, FakeModel(linear(1.0)))

    async def scenario() -> None:
        pool = _pool(source)
        await pool.get_version("m", 1)
        await pool.get_version("m", 2)
        in_use = {("m", 2)}
        await pool.retire_later(("m", 1), in_use.__contains__, grace_s=0.01)
        await pool.retire_later(("m", 2), in_use.__contains__, grace_s=0.01)
        assert ("m", 1) not in pool and ("m", 2) in pool
        await pool.close()

    asyncio.run(scenario())
