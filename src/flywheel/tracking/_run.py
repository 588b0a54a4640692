"""``Run``: the handle a training script logs through (params, tags, metrics, artifacts)."""

from __future__ import annotations

import atexit
import json
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from flywheel.tracking._errors import TrackingError
from flywheel.tracking._store import RUN_STATUSES
from flywheel.tracking._writer import MetricWriter

if TYPE_CHECKING:
    from flywheel.tracking._tracker import Tracker

MAX_KEY_LENGTH = 250
_INT64 = 2**63


def _param_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict | list | tuple):
        return json.dumps(value, default=str, sort_keys=True)
    return str(value)


class Run:
    """One tracked run. Use it as a context manager (``with tracking.start_run(...) as run``).

    Metric points are queued on the caller's thread and written in batches by a background
    thread; ``flush()`` waits for them, and leaving the ``with`` block (normally or by an
    exception) flushes and ends the run (``finished``, ``failed`` on an exception, ``killed`` on
    Ctrl-C). A run that is not on rank 0 of a distributed job (``active`` false) drops
    everything it is given, unless it was started with ``all_ranks=True``.

    ``log_metric`` with no ``step`` uses the next step of that key (0, 1, 2, ...).
    """

    def __init__(
        self,
        tracker: Tracker,
        run_id: str,
        experiment: str,
        name: str,
        *,
        active: bool = True,
        batch_size: int | None = None,
    ) -> None:
        self.tracker = tracker
        self.id = run_id
        self.experiment = experiment
        self.name = name
        self.active = active
        self.status = "running" if active else "inactive"
        self._steps: dict[str, int] = {}
        self._keys: set[str] = set()
        self._writer: MetricWriter | None = None
        if active:
            kwargs = {"batch_size": batch_size} if batch_size else {}
            self._writer = MetricWriter(
                tracker.store.write_metrics, name=f"flywheel-metrics-{run_id[:8]}", **kwargs
            )
            atexit.register(self._at_exit)

    @classmethod
    def inactive(cls, tracker: Tracker, experiment: str, name: str) -> Run:
        return cls(tracker, uuid.uuid4().hex, experiment, name, active=False)

    def __repr__(self) -> str:
        return f"Run({self.id!r}, experiment={self.experiment!r}, status={self.status!r})"

    @property
    def uri(self) -> str:
        return f"runs:/{self.id}"

    # -- logging ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self.status != "running":
            raise TrackingError(f"run {self.id} is {self.status}; it takes no more logging")

    def _check_key(self, key: str) -> None:
        if not isinstance(key, str) or not key or len(key) > MAX_KEY_LENGTH:
            raise TrackingError(
                f"metric key {key!r} must be a non-empty string of at most {MAX_KEY_LENGTH} chars"
            )
        self._check_open()
        self._keys.add(key)

    def log_metric(
        self, key: str, value: float, step: int | None = None, timestamp: float | None = None
    ) -> None:
        """Queue one point of ``key`` (written in the background; see the class docstring).

        ``value`` may be NaN or infinite; it is stored as given.
        """
        writer = self._writer
        if writer is None:
            return
        if key not in self._keys:
            self._check_key(key)
        elif self.status != "running":
            self._check_open()
        steps = self._steps
        if step is None:
            step = steps.get(key, -1) + 1
        elif not -_INT64 <= step < _INT64:
            raise TrackingError(f"metric {key!r}: step {step} does not fit in 64 bits")
        steps[key] = step
        queue = writer.queue
        queue.append(
            (
                self.id,
                key,
                float(value),
                int(step),
                time.time() if timestamp is None else float(timestamp),
            )
        )
        n = len(queue)
        if n >= writer.batch_size:
            writer.wake()
            if n >= writer.max_queued:
                writer.flush()

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Queue one point per key, all with the same ``step`` and timestamp."""
        ts = time.time()
        for key, value in metrics.items():
            self.log_metric(key, value, step=step, timestamp=ts)

    def log_param(self, key: str, value: Any) -> None:
        self.log_params({key: value})

    def log_params(self, params: dict[str, Any]) -> None:
        """Record params (stored as text; immutable: a different value for a key is refused)."""
        if not self.active:
            return
        self._check_open()
        self.tracker.store.merge_params(
            self.id, {str(k): _param_text(v) for k, v in params.items()}
        )

    def set_tag(self, key: str, value: Any) -> None:
        self.set_tags({key: value})

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Add or overwrite tags (stored as text)."""
        if not self.active:
            return
        self.tracker.store.merge_tags(self.id, {str(k): _param_text(v) for k, v in tags.items()})

    def log_artifact(self, path: str | Path, name: str | None = None) -> list[str]:
        """Store a file, or every file under a folder, in the artifact store under this run.

        Returns the artifact names recorded (``name``, or the file name; ``name/relative`` for a
        folder's files).
        """
        if not self.active:
            return []
        self._check_open()
        return self.tracker.log_artifact(self.id, path, name)

    def log_dict(self, data: dict[str, Any], name: str) -> str:
        """Store ``data`` as a JSON artifact called ``name``."""
        if not self.active:
            return name
        self._check_open()
        return self.tracker.log_artifact_bytes(
            self.id, json.dumps(data, indent=2, default=str).encode(), name
        )

    # -- lifecycle ----------------------------------------------------------------------------

    def flush(self, timeout: float | None = None) -> None:
        """Block until every metric point logged so far is stored."""
        if self._writer is not None:
            self._writer.flush(timeout)

    def end(self, status: str = "finished") -> None:
        """Flush, stop the writer and mark the run ``finished``, ``failed`` or ``killed``."""
        if status not in RUN_STATUSES or status == "running":
            raise TrackingError(f"a run ends as finished, failed or killed, not {status!r}")
        if self._writer is None or self.status != "running":
            return
        try:
            self._writer.close()
        finally:
            self.status = status
            self.tracker.store.set_status(self.id, status)
            atexit.unregister(self._at_exit)

    def _at_exit(self) -> None:
        if self.status == "running":
            self.end("finished")

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            status = "finished"
        elif issubclass(exc_type, KeyboardInterrupt):
            status = "killed"
        else:
            status = "failed"
        self.end(status)


__all__ = ["Run"]
