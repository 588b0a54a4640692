"""``LoadOnce``: one load per key for concurrent callers; failures remembered for a while."""

from __future__ import annotations

import asyncio

import pytest

from flywheel.serving._errors import ModelUnavailable
from flywheel.serving._once import LoadOnce


def test_concurrent_callers_share_one_load_and_a_cancelled_caller_does_not_stop_it() -> None:
    calls: list[str] = []
    release = asyncio.Event()

    async def load() -> str:
        calls.append("a")
        await release.wait()
        return "loaded"

    async def main() -> list[str]:
        once: LoadOnce[str, str] = LoadOnce(retry_s=60)
        waiters = [asyncio.ensure_future(once.get("a", load)) for _ in range(3)]
        await asyncio.sleep(0)
        waiters[0].cancel()  # one caller gives up; the load goes on for the others
        await asyncio.sleep(0)
        assert len(once.loading) == 1
        release.set()
        results = await asyncio.gather(*waiters[1:])
        assert once.loading == []
        return results

    assert asyncio.run(main()) == ["loaded", "loaded"]
    assert calls == ["a"]


def test_a_failed_load_is_not_retried_within_retry_s() -> None:
    attempts = 0

    async def failing() -> str:
        nonlocal attempts
        attempts += 1
        raise ModelUnavailable(f"attempt {attempts} failed")

    async def main(retry_s: float) -> list[str]:
        once: LoadOnce[str, str] = LoadOnce(retry_s=retry_s)
        messages = []
        for _ in range(2):
            with pytest.raises(ModelUnavailable) as caught:
                await once.get("m", failing)
            messages.append(str(caught.value))
        return messages

    assert asyncio.run(main(retry_s=60)) == ["attempt 1 failed", "attempt 1 failed"]
    assert attempts == 1
    assert asyncio.run(main(retry_s=0)) == ["attempt 2 failed", "attempt 3 failed"]
    assert attempts == 3
