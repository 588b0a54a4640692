"""The background metric writer: batching, flush barriers, retries and surfaced errors."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from flywheel.tracking import MetricWriteError
from flywheel.tracking._store import MetricRow
from flywheel.tracking._writer import MetricWriter


class FlakyStore:
    """Stores rows in memory; the first ``failures`` writes raise."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.rows: list[MetricRow] = []
        self.batches: list[int] = []
        self.threads: set[str] = set()

    def write(self, rows: Sequence[MetricRow]) -> None:
        self.threads.add(threading.current_thread().name)
        if self.failures > 0:
            self.failures -= 1
            raise OSError("disk full")
        self.rows.extend(rows)
        self.batches.append(len(rows))


def _row(i: int) -> MetricRow:
    return ("run", "loss", float(i), i, 0.0)


def test_flush_waits_for_every_point_written_in_batches_off_thread() -> None:
    store = FlakyStore()
    writer = MetricWriter(store.write, batch_size=1000, interval=5.0)
    for i in range(4500):
        writer.queue.append(_row(i))
    writer.flush()
    assert [r[3] for r in store.rows] == list(range(4500))
    assert max(store.batches) <= 1000
    assert store.threads == {"flywheel-metrics"}
    writer.close()


def test_a_failed_write_is_retried_and_the_error_surfaces_at_flush() -> None:
    store = FlakyStore(failures=1)
    # A long interval: the writer wakes only for the flush, so rows and barrier meet in one pass.
    writer = MetricWriter(store.write, batch_size=100, interval=5.0)
    for i in range(50):
        writer.queue.append(_row(i))
    with pytest.raises(MetricWriteError, match="disk full"):
        writer.flush()
    writer.flush()  # the retry succeeds: nothing was dropped
    assert len(store.rows) == 50
    writer.close()


def test_close_after_the_thread_stopped_still_drains() -> None:
    store = FlakyStore()
    writer = MetricWriter(store.write, batch_size=10, interval=0.05)
    writer.close()
    writer.queue.append(_row(1))
    writer.flush()
    assert len(store.rows) == 1
