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


def _column(arr: np.ndarray) -> Any:
    """One column as Parquet stores it: floats as float64 and integers as int64 (the types the
    columns have always had), strings as strings."""
    if arr.dtype.kind == "f":
        return arr.astype(np.float64, copy=False)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind in "bU":
        return arr
    return arr.tolist()


def flatten_tensors(
    tensors: dict[str, np.ndarray],
    rows: int,
    prefix: str = "",
    names: Sequence[str] | None = None,
    whole: int | None = None,
) -> dict[str, Any]:
    """Tensors with ``rows`` along dim 0 as named columns (1-D and 2-D tensors only).

    ``names`` label the columns of a 2-D tensor that is the only tensor of its set (``whole``:
    how many tensors the set had, if ``tensors`` holds only some of them)."""
    columns: dict[str, Any] = {}
    alone = (len(tensors) if whole is None else whole) == 1
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
            columns[f"{prefix}{name}"] = _column(arr)
            continue
        width = arr.shape[1]
        labels = (
            list(names)
            if names is not None and len(names) == width and alone
            else [f"{name}_{j}" for j in range(width)]
        )
        for j, label in enumerate(labels):
            columns[f"{prefix}{label}"] = _column(np.ascontiguousarray(arr[:, j]))
    return columns


def _tensor_layout(tensors: dict[str, np.ndarray] | None, rows: int) -> tuple[Any, ...] | None:
    """What decides a tensor set's columns: each tensor's name, trailing shape and kind, and
    whether ``flatten_tensors`` keeps it (1-D or 2-D with ``rows`` along dim 0)."""
    if tensors is None:
        return None
    layout = []
    for name, arr in tensors.items():
        a = np.asarray(arr)
        kept = 0 < a.ndim <= 2 and a.shape[0] == rows
        layout.append((name, kept, a.shape[1:] if kept else (), a.dtype.kind if kept else ""))
    return tuple(layout)


def _layout(r: PredictionRecord) -> tuple[Any, ...]:
    n = _rows(r.inputs)
    names = tuple(r.feature_names) if r.feature_names is not None else None
    return (
        _tensor_layout(r.inputs, n),
        _tensor_layout(r.outputs, n),
        _tensor_layout(r.shadow_outputs, n),
        names,
    )


def _joined(tensor_sets: list[dict[str, np.ndarray]], layout: tuple[Any, ...]) -> dict[str, Any]:
    """The kept tensors of records of one layout, concatenated along dim 0."""
    return {
        name: np.concatenate([np.asarray(t[name]) for t in tensor_sets])
        for name, kept, _, _ in layout
        if kept
    }


def _columns(group: list[PredictionRecord]) -> dict[str, Any]:
    """The Parquet columns of records that share one layout (``_layout``), as one table would
    have them if each record were flattened alone (``flatten_tensors``) and the tables joined."""
    import pyarrow as pa

    counts = np.array([_rows(r.inputs) for r in group], dtype=np.int64)
    total = int(counts.sum())
    owner = pa.array(np.repeat(np.arange(len(group)), counts))  # the record of each row

    def per_record(values: list[Any]) -> Any:
        return pa.array(values).take(owner)

    first = group[0]
    cols: dict[str, Any] = {
        "request_id": per_record([r.request_id for r in group]),
        "ts": per_record([r.ts for r in group]),
        "endpoint": per_record([r.endpoint for r in group]),
        "model": per_record([r.model for r in group]),
        "version": per_record([r.version for r in group]),
        "kind": per_record([r.kind for r in group]),
        "latency_ms": per_record([r.latency_ms for r in group]),
        "row": np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts),
    }
    in_layout, out_layout, shadow_layout, _ = _layout(first)
    inputs = _joined([r.inputs for r in group], in_layout)
    cols.update(flatten_tensors(inputs, total, names=first.feature_names, whole=len(first.inputs)))
    outputs = _joined([r.outputs for r in group], out_layout)
    cols.update(flatten_tensors(outputs, total, prefix="pred_", whole=len(first.outputs)))
    if shadow_layout is not None:
        cols["shadow_version"] = per_record([r.shadow_version for r in group])
        cols["disagreement"] = per_record([r.disagreement for r in group])
        shadows = _joined([r.shadow_outputs or {} for r in group], shadow_layout)
        cols.update(flatten_tensors(shadows, total, prefix="shadow_pred_"))
    return cols


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

        # Records of one layout (the same tensors, widths and kinds) become one table with one
        # concatenation per tensor: building a table per record held the GIL for about as long
        # as the event loop spent answering the requests (a sixth of a core at 400 records/s).
        groups: dict[tuple[Any, ...], list[PredictionRecord]] = {}
        for r in records:
            groups.setdefault(_layout(r), []).append(r)
        tables = [pa.table(_columns(group)) for group in groups.values()]
        table = (
            tables[0]
            if len(tables) == 1
            else pa.concat_tables(tables, promote_options="permissive")
        )
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
