"""Exposure logging off the hot path: ``assign`` appends to a buffer, a thread writes batches.

``add`` costs a list append. A daemon thread flushes the buffer every ``flush_seconds`` or as soon
as ``batch_size`` exposures wait, in one transaction per batch; rows carry a client-made
``decision_id`` and are inserted idempotently, so a failed flush is retried whole without
duplicates. An exposure is *acknowledged* once ``flush()`` returns (``close()`` flushes too):
a process killed before that loses at most the last ``flush_seconds`` of exposures, never any
that were flushed. The buffer is bounded (``max_pending``); beyond it the oldest exposures are
dropped and counted in ``dropped``, so a database outage cannot exhaust memory.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)

Writer = Callable[[Sequence[tuple[Any, ...]]], int]


class ExposureLogger:
    """Buffers exposure rows and writes them in batches with ``writer`` (see module docstring)."""

    def __init__(
        self,
        writer: Writer,
        *,
        flush_seconds: float = 1.0,
        batch_size: int = 2_000,
        max_pending: int = 1_000_000,
    ) -> None:
        self._writer = writer
        self._flush_seconds = flush_seconds
        self._batch_size = batch_size
        self._max_pending = max_pending
        self._pending: collections.deque[tuple[Any, ...]] = collections.deque()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.written = 0
        self.dropped = 0
        self.failures = 0

    def add(self, row: tuple[Any, ...]) -> None:
        """Queue one exposure row (a tuple in ``EXPOSURE_COLUMNS`` order; never blocks on I/O).

        ``deque.append`` and ``popleft`` are atomic, so ``add`` needs no lock against the writer.
        """
        pending = self._pending
        pending.append(row)
        if self._thread is None:
            self._start()
        size = len(pending)
        if size >= self._batch_size and not self._wake.is_set():
            self._wake.set()
        if size > self._max_pending:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        with self._lock:
            while len(self._pending) > self._max_pending:
                self._pending.popleft()
                self.dropped += 1

    def _start(self) -> None:
        with self._lock:
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(
                    target=self._run, name="flywheel-exposures", daemon=True
                )
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._flush_seconds)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # keep the thread alive; the rows stay queued
                self.failures += 1
                log.warning("flushing exposures failed (will retry): %s", exc)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def flush(self) -> int:
        """Write every queued exposure now; returns how many rows were written."""
        with self._flush_lock:
            pending = self._pending
            batch = [pending.popleft() for _ in range(len(pending))]
            if not batch:
                return 0
            try:
                for start in range(0, len(batch), self._batch_size):
                    self._writer(batch[start : start + self._batch_size])
            except Exception:
                pending.extendleft(reversed(batch))  # retried whole: inserts are idempotent
                self._drop_oldest()
                raise
            self.written += len(batch)
            return len(batch)

    def close(self) -> None:
        """Stop the thread and flush what is left."""
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout=10)
        self.flush()


__all__ = ["ExposureLogger"]
