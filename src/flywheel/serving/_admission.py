"""The event loop's share of a request's wait, for admission (``DynamicBatcher.admit``).

One process answers every request on one event loop: decoding, encoding and HTTP all take loop
time, so when many requests are admitted at once (a burst from hundreds of connections) each
waits for the loop's work on those ahead of it, whatever the model's batch time. ``LoopLoad``
estimates that wait as the age of the oldest request in flight, or by Little's law if that is
longer: the requests admitted and not yet answered times the time a request costs, the longer of

* the wall time per answered request over a window in which the server was never empty (then
  requests/second is what the process manages now, with whatever shares its CPU), and
* the loop thread's CPU per answered request (``time.thread_time()``), measured over any window
  of requests that came in quickly: it is known before the first busy window, so the first
  burst is already seen.
"""

from __future__ import annotations

import time

WINDOW_MIN_REQUESTS = 20  # answered requests before a window is measured
WINDOW_S = 0.25  # ... and at least this long (or WINDOW_MAX_REQUESTS requests)
WINDOW_MAX_REQUESTS = 200
WINDOW_MAX_S = 1.0  # a slower window is not measured (the idle loop's own work would dominate)
_EWMA = 0.3


def _ewma(old: float, new: float) -> float:
    return new if old == 0.0 else old + _EWMA * (new - old)


class LoopLoad:
    """Requests in flight and what each costs (see the module docstring). Every method is called
    on the loop thread."""

    __slots__ = (
        "_busy",
        "_count",
        "_cpu",
        "_next",
        "_since",
        "_wall",
        "cpu_s",
        "inflight",
        "wall_s",
        "window_max_s",
    )

    def __init__(self, window_max_s: float = WINDOW_MAX_S) -> None:
        self.window_max_s = window_max_s
        self.inflight = 0
        self._next = 0
        self._since: dict[int, float] = {}  # in flight: token -> when admitted (oldest first)
        self.cpu_s = 0.0  # loop CPU per answered request
        self.wall_s = 0.0  # wall time per answered request while the server was never empty
        self._reset_window()

    @property
    def cost_s(self) -> float:
        """The time one request in flight adds to the wait of those behind it."""
        return max(self.cpu_s, self.wall_s)

    def wait_s(self) -> float:
        """The wait of a request admitted now: the requests in flight times what each costs, or
        the age of the oldest one in flight if that is longer (first in, first out: a newcomer
        waits about as long as the head has; this sees a burst before any window closes)."""
        if not self._since:
            return 0.0
        oldest = time.monotonic() - next(iter(self._since.values()))
        return max(self.inflight * self.cost_s, oldest)

    def started(self) -> int:
        """Count one admitted request; returns the token to pass to ``finished``."""
        if self.inflight == 0 and self._count == 0:
            self._reset_window()  # the window starts with this request, not with the idle time
            self._busy = True
        self.inflight += 1
        self._next += 1
        self._since[self._next] = time.monotonic()
        return self._next

    def finished(self, token: int) -> None:
        """The request of ``token`` was answered (or failed)."""
        self._since.pop(token, None)
        self.inflight -= 1
        self._count += 1
        if self.inflight == 0:
            self._busy = False  # the server emptied: this window's wall time includes idling
        if self._count < WINDOW_MIN_REQUESTS:
            return
        wall = time.monotonic() - self._wall
        if wall < WINDOW_S and self._count < WINDOW_MAX_REQUESTS:
            return
        if wall <= self.window_max_s:
            self.cpu_s = _ewma(self.cpu_s, (time.thread_time() - self._cpu) / self._count)
        if self._busy:
            self.wall_s = _ewma(self.wall_s, wall / self._count)
        self._reset_window()

    def _reset_window(self) -> None:
        self._count = 0
        self._cpu = time.thread_time()
        self._wall = time.monotonic()
        self._busy = self.inflight > 0


__all__ = ["LoopLoad"]
