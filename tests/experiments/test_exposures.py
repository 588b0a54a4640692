"""The exposure buffer: batched writes off the hot path, retried without loss or duplicates."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from flywheel.experiments._exposures import ExposureLogger


class FlakyWriter:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.rows: dict[str, tuple[Any, ...]] = {}

    def __call__(self, rows: Sequence[tuple[Any, ...]]) -> int:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("database down")
        for row in rows:
            self.rows.setdefault(row[0], row)  # idempotent on the decision id
        return len(rows)


def test_background_thread_writes_batches() -> None:
    writer = FlakyWriter(0)
    logger = ExposureLogger(writer, flush_seconds=0.05, batch_size=100)
    for i in range(250):
        logger.add((f"d{i}", "exp", f"u{i}"))
    deadline = time.time() + 5
    while len(writer.rows) < 250 and time.time() < deadline:
        time.sleep(0.02)
    assert len(writer.rows) == 250
    logger.close()


def test_failed_flush_keeps_rows_and_retries() -> None:
    writer = FlakyWriter(1)
    logger = ExposureLogger(writer, flush_seconds=3600, batch_size=10_000)
    logger.add(("d1", "exp", "u1"))
    with pytest.raises(ConnectionError):
        logger.flush()
    assert logger.pending == 1
    assert logger.flush() == 1
    assert set(writer.rows) == {"d1"}
    logger.close()


def test_buffer_is_bounded_during_an_outage() -> None:
    writer = FlakyWriter(10)
    logger = ExposureLogger(writer, flush_seconds=3600, batch_size=10_000, max_pending=5)
    for i in range(8):
        logger.add((f"d{i}", "exp", "u"))
    with pytest.raises(ConnectionError):
        logger.flush()
    assert logger.pending == 5 and logger.dropped == 3
    writer.failures = 0
    logger.close()
    assert set(writer.rows) == {f"d{i}" for i in range(3, 8)}
