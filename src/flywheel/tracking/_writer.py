"""The background metric writer: the caller appends to a queue, one thread writes in batches.

``log_metric`` costs one ``deque.append`` on the caller's thread. The writer thread wakes every
``interval`` seconds, or as soon as ``batch_size`` points are waiting, and writes everything
queued in transactions of up to ``batch_size`` rows. ``flush()`` puts a barrier in the queue and
waits until the writer has stored every point queued before it, so a flush in ``finally`` loses
nothing that was logged. A failed write is retried (the rows stay queued on the writer's side);
the error is raised to the caller at the next ``flush()``.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from flywheel.tracking._errors import MetricWriteError
from flywheel.tracking._store import MetricRow

DEFAULT_BATCH_SIZE = 50_000
DEFAULT_INTERVAL_S = 0.5
# Beyond this many queued points the caller waits for a flush (bounded memory, ~100 B/point).
DEFAULT_MAX_QUEUED = 2_000_000
_RETRY_DELAY_S = 0.2


class _Barrier:
    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None


class _Stop:
    __slots__ = ()


_STOP = _Stop()


class MetricWriter:
    """Writes queued metric rows with ``write(rows)`` on a daemon thread."""

    def __init__(
        self,
        write: Callable[[Sequence[MetricRow]], None],
        *,
        name: str = "flywheel-metrics",
        batch_size: int = DEFAULT_BATCH_SIZE,
        interval: float = DEFAULT_INTERVAL_S,
        max_queued: int = DEFAULT_MAX_QUEUED,
    ) -> None:
        self._write = write
        self.batch_size = batch_size
        self.interval = interval
        self.max_queued = max_queued
        self.queue: deque[MetricRow | _Barrier | _Stop] = deque()
        self._wake = threading.Event()
        self._pending: list[MetricRow] = []
        self._error: BaseException | None = None
        self.written = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        if not self._wake.is_set():
            self._wake.set()

    def flush(self, timeout: float | None = None) -> None:
        """Block until every point queued before this call is stored; raise if it cannot be."""
        if not self._thread.is_alive():
            for barrier in self._drain()[0]:
                barrier.done.set()
            if self._pending:
                raise MetricWriteError(f"{len(self._pending)} metric points could not be written")
            return
        barrier = _Barrier()
        self.queue.append(barrier)
        self._wake.set()
        if not barrier.done.wait(timeout):
            raise MetricWriteError(f"metric flush did not finish within {timeout} s")
        if barrier.error is not None:
            raise MetricWriteError(
                f"{len(self._pending)} metric points are not written yet: {barrier.error}"
            ) from barrier.error

    def close(self) -> None:
        """Flush and stop the thread."""
        try:
            self.flush()
        finally:
            self.queue.append(_STOP)
            self._wake.set()
            self._thread.join(timeout=30)

    # -- the writer thread ---------------------------------------------------------------------

    def _write_pending(self) -> None:
        while self._pending:
            chunk = self._pending[: self.batch_size]
            self._write(chunk)
            del self._pending[: len(chunk)]
            self.written += len(chunk)

    def _drain(self) -> tuple[list[_Barrier], bool]:
        """Move queued rows to ``_pending`` and write; return the barriers met and stop flag."""
        barriers: list[_Barrier] = []
        queue, pending = self.queue, self._pending
        stop = False
        while queue:
            item = queue.popleft()
            if type(item) is tuple:
                pending.append(item)
                if len(pending) >= self.batch_size:
                    self._try_write()
            elif isinstance(item, _Barrier):
                self._try_write()
                item.error = self._error if self._pending else None
                barriers.append(item)
            else:
                stop = True
        self._try_write()
        return barriers, stop

    def _try_write(self) -> None:
        try:
            self._write_pending()
            self._error = None
        except Exception as exc:  # retried on the next cycle; surfaced at flush
            self._error = exc

    def _loop(self) -> None:
        while True:
            self._wake.wait(self.interval)
            self._wake.clear()
            barriers, stop = self._drain()
            for barrier in barriers:
                barrier.done.set()
            if stop:
                return
            if self._error is not None:
                time.sleep(_RETRY_DELAY_S)


__all__ = ["MetricWriter"]
