"""Experiment tracking: experiments, runs, params, tags, metric series and run artifacts.

```python
from flywheel import tracking
with tracking.start_run("two-tower", params={"lr": 0.01}) as run:
    run.log_metric("loss", 0.31, step=10)
```

Metrics are queued on the caller's thread and written in batches by a background thread
(``executemany`` on SQLite, ``COPY`` on PostgreSQL); leaving the ``with`` block flushes them.
"""

from flywheel.tracking._errors import MetricWriteError, ParamConflict, RunNotFound, TrackingError
from flywheel.tracking._run import Run
from flywheel.tracking._store import MetricPoint, MetricSummary, RunArtifact, RunInfo
from flywheel.tracking._tracker import Tracker, start_run

__all__ = [
    "MetricPoint",
    "MetricSummary",
    "MetricWriteError",
    "ParamConflict",
    "Run",
    "RunArtifact",
    "RunInfo",
    "RunNotFound",
    "Tracker",
    "TrackingError",
    "start_run",
]
