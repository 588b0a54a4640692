"""The event loop's share of a request's wait, for admission (``DynamicBatcher.admit``).

One process answers every request on one event loop: decoding, encoding and HTTP all take loop
time, so when many requests are admitted at once (a burst from hundreds of connections) each
waits for the loop work of those ahead of it, whatever the model's batch time. ``LoopLoad``
estimates that wait as the requests admitted and not yet answered times the loop CPU a request
costs, measured with ``time.thread_time()`` on the loop thread over windows of requests that
came in quickly (a slow window would also count the idle loop's own work).
"""

from __future__ import annotations

import time

WINDOW_REQUESTS = 200  # requests per measurement
WINDOW_MAX_S = 1.0  # a window slower than this is not measured (background work would dominate)
_EWMA = 0.3


class LoopLoad:
    """Requests in flight on this loop and the loop CPU each costs (see the module docstring).
    Every method is called on the loop thread."""

    __slots__ = ("_count", "_cpu", "_wall", "cost_s", "inflight", "window_max_s")

    def __init__(self, window_max_s: float = WINDOW_MAX_S) -> None:
        self.window_max_s = window_max_s
        self.inflight = 0
        self.cost_s = 0.0
        self._count = 0
        self._cpu = time.thread_time()
        self._wall = time.monotonic()

    def wait_s(self) -> float:
        """Loop time the requests in flight still need (0 before the first measurement)."""
        return self.inflight * self.cost_s

    def started(self) -> None:
        self.inflight += 1

    def finished(self) -> None:
        self.inflight -= 1
        self._count += 1
        if self._count < WINDOW_REQUESTS:
            return
        cpu, wall = time.thread_time(), time.monotonic()
        if wall - self._wall <= self.window_max_s:
            cost = (cpu - self._cpu) / self._count
            self.cost_s = cost if self.cost_s == 0.0 else self.cost_s + _EWMA * (cost - self.cost_s)
        self._count, self._cpu, self._wall = 0, cpu, wall


__all__ = ["LoopLoad"]
