"""Sampled prediction logging to Parquet in the offline store, off the request path.

``PredictionLogger.log`` only appends to a bounded in-memory buffer (a full buffer drops the
record and counts it in ``flywheel_serving_prediction_log_dropped_total``); a background thread
writes the buffer every ``flush_seconds`` as one Parquet file per endpoint under
``<offline_store>/serving_predictions/endpoint=<name>/``, written to a temporary name and renamed,
so readers never see half a file.

Each request row becomes one Parquet row per batch row: ``request_id``, ``ts``, ``endpoint``,
``model``, ``version``, ``kind`` (``primary`` or ``shadow``), ``latency_ms``, then one column per
input feature (1-D input: its name; 2-D input of width k: the model's ``feature_names`` if given,
else ``<input>_<j>``) and per output (``pred_<output>`` or ``pred_<output>_<j>``). Shadow rows
also hold the shadow version's outputs (``shadow_pred_...``) and ``disagreement``.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.serving._metrics import PREDICTION_LOG_DROPPED

log = logging.getLogger("flywheel.serving")
PREDICTIONS_FOLDER = "serving_predictions"
MAX_BUFFERED = 50_000


@dataclass(slots=True)
class PredictionRecord:
    request_id: str
    ts: datetime
    endpoint: str
    model: str
    version: int
    kind: str
    latency_ms: float
    inputs: dict[str, np.ndarray]
    outputs: dict[str, np.ndarray]
    feature_names: Sequence[str] | None = None
    shadow_version: int | None = None
    shadow_outputs: dict[str, np.ndarray] | None = None
    disagreement: float | None = None


def flatten_tensors(
    tensors: dict[str, np.ndarray], rows: int, prefix: str = "", names: Sequence[str] | None = None
) -> dict[str, list[Any]]:
    """Tensors with ``rows`` along dim 0 as named columns (1-D and 2-D tensors only)."""
    columns: dict[str, list[Any]] = {}
    for name, arr in tensors.items():
        arr = np.asarray(arr)
        if arr.ndim == 0 or arr.shape[0] != rows or arr.ndim > 2:
            continue
        if arr.dtype.kind == "O":
            arr = np.array(
                [
                    x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)
                    for x in arr.ravel()
                ]
            ).reshape(arr.shape)
        if arr.ndim == 1:
            columns[f"{prefix}{name}"] = arr.tolist()
            continue
        width = arr.shape[1]
        labels = (
            list(names)
            if names is not None and len(names) == width and len(tensors) == 1
            else [f"{name}_{j}" for j in range(width)]
        )
        for j, label in enumerate(labels):
            columns[f"{prefix}{label}"] = arr[:, j].tolist()
    return columns


def _rows(tensors: dict[str, np.ndarray]) -> int:
    for arr in tensors.values():
        a = np.asarray(arr)
        if a.ndim:
            return int(a.shape[0])
    return 1


class PredictionLogger:
    """Buffer sampled predictions and write them to Parquet from a background thread."""

    def __init__(self, root: Path, sample_rate: float, flush_seconds: float = 2.0) -> None:
        self.root = Path(root) / PREDICTIONS_FOLDER
        self.sample_rate = sample_rate
        self.flush_seconds = flush_seconds
        self._buffer: deque[PredictionRecord] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer_id = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._seq = 0

    def sampled(self) -> bool:
        """Whether this request should be logged (a ``sample_rate`` coin flip)."""
        return self.sample_rate > 0 and (
            self.sample_rate >= 1.0 or random.random() < self.sample_rate
        )

    def log(self, record: PredictionRecord) -> None:
        """Queue one record; never blocks and never raises."""
        if len(self._buffer) >= MAX_BUFFERED:
            PREDICTION_LOG_DROPPED.inc()
            return
        self._buffer.append(record)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Stop the thread and write whatever is buffered."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self.flush()

    def _run(self) -> None:
        while not self._stop.wait(self.flush_seconds):
            try:
                self.flush()
            except Exception:  # logging must never take the server down
                log.exception("prediction log flush failed")

    def flush(self) -> int:
        """Write the buffered records now; returns how many rows were written."""
        with self._lock:
            records: list[PredictionRecord] = []
            while self._buffer:
                records.append(self._buffer.popleft())
            if not records:
                return 0
            by_endpoint: dict[str, list[PredictionRecord]] = {}
            for r in records:
                by_endpoint.setdefault(r.endpoint, []).append(r)
            written = 0
            for endpoint, group in by_endpoint.items():
                written += self._write(endpoint, group)
            return written

    def _write(self, endpoint: str, records: list[PredictionRecord]) -> int:
        import pyarrow as pa
        import pyarrow.parquet as pq

        frames: list[dict[str, list[Any]]] = []
        for r in records:
            n = _rows(r.inputs)
            cols: dict[str, list[Any]] = {
                "request_id": [r.request_id] * n,
                "ts": [r.ts] * n,
                "endpoint": [r.endpoint] * n,
                "model": [r.model] * n,
                "version": [r.version] * n,
                "kind": [r.kind] * n,
                "latency_ms": [r.latency_ms] * n,
                "row": list(range(n)),
            }
            cols.update(flatten_tensors(r.inputs, n, names=r.feature_names))
            cols.update(flatten_tensors(r.outputs, n, prefix="pred_"))
            if r.shadow_outputs is not None:
                cols["shadow_version"] = [r.shadow_version] * n
                cols["disagreement"] = [r.disagreement] * n
                cols.update(flatten_tensors(r.shadow_outputs, n, prefix="shadow_pred_"))
            frames.append(cols)
        tables = [pa.table(f) for f in frames]
        table = pa.concat_tables(tables, promote_options="permissive")
        folder = self.root / f"endpoint={endpoint}"
        folder.mkdir(parents=True, exist_ok=True)
        self._seq += 1
        name = f"part-{int(time.time() * 1000)}-{self._writer_id}-{self._seq:06d}.parquet"
        tmp = folder / f".{name}.tmp"
        pq.write_table(table, tmp)
        tmp.replace(folder / name)
        return int(table.num_rows)


def now_utc() -> datetime:
    return datetime.now(UTC)


__all__ = ["PREDICTIONS_FOLDER", "PredictionLogger", "PredictionRecord", "flatten_tensors"]
