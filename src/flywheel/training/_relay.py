"""Metrics and tracking of a running job, kept by the scheduler instead of by rank 0.

Rank 0's ``runtime.log_metrics`` in a scheduled job appends one JSON line per call to
``$FLYWHEEL_METRICS_FILE`` (``metrics.jsonl`` in the attempt's folder; on the shared mount for
the Ray executor) and returns: no database, no SQLAlchemy, no project in the worker. The
scheduler, which has all of that open anyway, does the rest in its reconcile step:

* ``start(job)`` after a launch: the attempt's tracking run (experiment = the spec's
  ``experiment`` or name, params = hyperparameters, tags ``job_id``/``attempt``), recorded as
  ``job.run_id`` with the lineage edge ``job -> run``;
* ``ingest(job)`` every tick while it runs and once more before it is finished: the new complete
  lines into the job's metric series (what ``jobs show`` and the tuner read) and the run;
* ``end(job, status)`` when the attempt is over: the run's final status.

Why: opening the project and importing the metadata and tracking stack in rank 0 cost about a
second of CPU per attempt, on the critical path of every job and of every restart (issue 17,
item 20). ``FLYWHEEL_METRICS_FILE`` unset (an executor without attempt folders) keeps the old
path: rank 0 writes to the database itself.

How far a file has been read is kept beside it (``metrics.jsonl.read``, a byte offset), so a
restarted scheduler neither loses nor repeats points; the job's series is idempotent per
``(key, step)`` in any case. A partial last line (the worker is mid-write) waits for the next
tick.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the worker imports ``append_metrics`` alone: keep this module light
    from flywheel.project import Project
    from flywheel.training._store import Job, JobStore

ENV_METRICS_FILE = "FLYWHEEL_METRICS_FILE"
METRICS_FILE = "metrics.jsonl"
logger = logging.getLogger("flywheel.training")


def append_metrics(path: str | Path, step: int, values: dict[str, float]) -> None:
    """Append one point (worker side; one ``write`` of one line, so readers see whole lines
    or a partial last line, never interleaved ones)."""
    line = json.dumps({"step": int(step), "values": values}, allow_nan=True)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


def read_new_points(path: Path) -> tuple[list[tuple[int, dict[str, float]]], int]:
    """The complete lines after the recorded offset, and the offset after them."""
    offset_file = path.with_name(path.name + ".read")
    try:
        offset = int(offset_file.read_text(encoding="utf-8") or 0)
    except (OSError, ValueError):
        offset = 0
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return [], offset
    complete = data[: data.rfind(b"\n") + 1]
    points = []
    for raw in complete.splitlines():
        try:
            item = json.loads(raw)
            points.append((int(item["step"]), {k: float(v) for k, v in item["values"].items()}))
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("training metrics: skipped a malformed line in %s: %r", path, raw[:200])
    return points, offset + len(complete)


class MetricsRelay:
    """The scheduler's side (see the module docstring). Stateless between calls: the run is
    ``job.run_id`` and the read position is on disk, so a restarted scheduler carries on.

    It writes through the tracking store, never through a ``Run`` object: a ``Run`` ends its
    run when the process that holds it exits, and the scheduler's exit does not end a job.
    """

    def __init__(self, project: Project, store: JobStore) -> None:
        self.project = project
        self.store = store
        self._tracker: Any = None

    def _tracking(self) -> Any:
        if self._tracker is None:
            from flywheel.tracking import Tracker

            self._tracker = Tracker(self.project)
        return self._tracker

    def start(self, job: Job) -> str:
        """Open the attempt's tracking run, record it on the job; returns the run id."""
        from flywheel.lineage import Node, record_edge
        from flywheel.training._states import JobState

        tracker = self._tracking()
        run = tracker.start_run(
            job.spec.experiment or job.spec.name or "training",
            params=dict(job.spec.hyperparameters),
            tags={"job_id": job.id, "attempt": str(job.attempt)},
            run_name=f"{job.id}-a{job.attempt}",
        )
        run.end("finished")  # drop the Run object (its writer thread and its exit hook) ...
        tracker.store.set_status(run.id, "running")  # ... the run itself runs with the job
        self.store.update(job.id, JobState.RUNNING, run_id=run.id)
        record_edge(self.project.db, Node("job", job.id), Node("run", run.id))
        return str(run.id)

    def ingest(self, job: Job, path: Path | None) -> int:
        """Store the points rank 0 appended since the last call; returns how many."""
        if path is None:
            return 0
        points, offset = read_new_points(path)
        if not points:
            return 0
        self.store.log_metric_points(job.id, points)
        run_id = self.store.get(job.id).run_id
        if run_id:
            now = time.time()
            rows = [(run_id, k, v, step, now) for step, values in points for k, v in values.items()]
            try:
                self._tracking().store.write_metrics(rows)
            except Exception:  # tracking is a copy; the job's own series is stored
                logger.exception("training: metrics of %s not copied to run %s", job.id, run_id)
        path.with_name(path.name + ".read").write_text(str(offset), encoding="utf-8")
        return len(points)

    def end(self, job: Job, status: str) -> None:
        """Close the attempt's run as ``finished``, ``failed`` or ``killed``."""
        run_id = self.store.get(job.id).run_id
        if run_id:
            from flywheel.tracking import RunNotFound

            with contextlib.suppress(RunNotFound):
                self._tracking().store.set_status(run_id, status)


__all__ = ["ENV_METRICS_FILE", "METRICS_FILE", "MetricsRelay", "append_metrics", "read_new_points"]
