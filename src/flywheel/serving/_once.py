"""``LoadOnce``: load a thing once per key however many callers ask at the same time.

The first caller starts the load as a task; the others await the same task (shielded, so a
caller that is cancelled does not cancel the load for the rest). A load that fails with
``ModelUnavailable`` is remembered for ``retry_s``: callers in that window get the same error
without a new attempt. Used by the version pool (``/v2`` models) and the ``/v1`` chat backends.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

from flywheel.serving._errors import ModelUnavailable

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LoadOnce(Generic[K, V]):
    """In-flight loads and recent failures by key (the caller keeps what loaded)."""

    def __init__(self, retry_s: float) -> None:
        self.retry_s = retry_s
        self._loading: dict[K, asyncio.Task[V]] = {}
        self._failed: dict[K, tuple[float, ModelUnavailable]] = {}

    async def get(self, key: K, load: Callable[[], Awaitable[V]]) -> V:
        """The result of ``load()`` for ``key``: one load at a time per key; a recent
        ``ModelUnavailable`` for ``key`` is raised again without loading."""
        failed = self._failed.get(key)
        if failed is not None and failed[0] > time.monotonic():
            raise failed[1]
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(_run(load))
            self._loading[key] = task
        try:
            return await asyncio.shield(task)
        except ModelUnavailable as exc:
            self._failed[key] = (time.monotonic() + self.retry_s, exc)
            raise
        finally:
            if task.done():
                self._loading.pop(key, None)

    @property
    def loading(self) -> list[asyncio.Task[V]]:
        """The loads in flight."""
        return list(self._loading.values())

    def clear(self) -> None:
        """Forget loads in flight and failures (the event loop they ran on is gone)."""
        self._loading.clear()
        self._failed.clear()


async def _run(load: Callable[[], Awaitable[V]]) -> V:
    return await load()


__all__ = ["LoadOnce"]
