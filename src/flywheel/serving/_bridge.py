"""The blocking bridge: the server's coroutines, called from synchronous code in other threads.

When an app runs the server (``flywheel up``), calls run on the app's event loop. Otherwise
(a script, a CLI command, the recommender's offline evaluation) the bridge starts a private loop
in a daemon thread on first use; ``close`` stops it, after the caller's shutdown coroutine ran
there and whatever else was left on it is cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from flywheel.serving._errors import DeadlineExceeded, ServingError

T = TypeVar("T")


class BlockingBridge:
    """Runs coroutines for threads that are not on the loop.

    Args:
        server_loop: the loop the server runs on, if any (read on every call).
    """

    def __init__(self, server_loop: Callable[[], asyncio.AbstractEventLoop | None]) -> None:
        self._server_loop = server_loop
        self._lock = threading.Lock()
        self._private: tuple[asyncio.AbstractEventLoop, threading.Thread] | None = None

    @property
    def private_loop_running(self) -> bool:
        return self._private is not None

    def call(self, coro: Coroutine[Any, Any, T], *, timeout_s: float | None, what: str) -> T:
        """Run ``coro`` on the server's loop (else the private one) and wait for its result.

        Raises ``ServingError`` when called on that loop itself (it would deadlock), and
        ``DeadlineExceeded`` naming ``what`` when no result comes within ``timeout_s`` (the
        coroutine is then cancelled).
        """
        loop = self._server_loop()
        if loop is None or not loop.is_running():
            loop = self.private_loop()
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            coro.close()
            raise ServingError(
                "predict_blocking() was called on the server's event loop; await predict()"
            )
        future = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result(timeout=timeout_s)
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(
                f"no prediction from {what!r} within {(timeout_s or 0.0) * 1000:.0f} ms"
            ) from None

    def private_loop(self) -> asyncio.AbstractEventLoop:
        """The private loop (started on first use)."""
        with self._lock:
            if self._private is not None and self._private[0].is_running():
                return self._private[0]
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="flywheel-serving-loop", daemon=True)
            thread.start()
            ready.wait()
            self._private = (loop, thread)
            return loop

    def close(
        self,
        shutdown: Callable[[], Coroutine[Any, Any, None]] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        """Stop the private loop, if one was started: run ``shutdown()`` there first when the
        server runs on it, cancel what is left, stop the loop and join its thread."""
        with self._lock:
            held, self._private = self._private, None
        if held is None:
            return
        loop, thread = held
        if shutdown is not None and self._server_loop() is loop:
            asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=timeout_s)
        # Whatever is left there (a server that moved to another loop left its reconciler).
        asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(timeout=timeout_s)
        asyncio.run_coroutine_threadsafe(loop.shutdown_default_executor(), loop).result(
            timeout=timeout_s
        )
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout_s)
        loop.close()


async def _cancel_other_tasks() -> None:
    me = asyncio.current_task()
    tasks = [t for t in asyncio.all_tasks() if t is not me]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["BlockingBridge"]
