"""Metrics, tracking and registration from inside a training job (rank 0 only).

``log_metrics(step, **values)`` in a scheduled job appends the point to the attempt's metrics
file (``$FLYWHEEL_METRICS_FILE``) and returns at once; the scheduler moves it into the job's
metric series (what ``flywheel jobs show`` and the tuner's median pruner read) and into the
attempt's tracking run, which the scheduler opened at launch (see ``training._relay``). So a
worker that only logs metrics never opens the project nor imports the metadata stack. Without
that variable (an executor without attempt folders) rank 0 writes both itself, as before.
``register(model, ...)`` registers the trained model with lineage
``training_dataset -> run -> model_version`` (the attempt's run) and records it on the job.
Outside a scheduled job (no ``$FLYWHEEL_JOB_ID``) metrics only go to tracking, if configured.
"""

from __future__ import annotations

import os
from typing import Any

from flywheel.training._relay import ENV_METRICS_FILE, append_metrics
from flywheel.training.runtime._context import current

_STATE: dict[str, Any] = {}


def _project() -> Any | None:
    if "project" not in _STATE:
        config = os.environ.get("FLYWHEEL_CONFIG")
        if not config:
            _STATE["project"] = None
        else:
            from flywheel.project import Project

            _STATE["project"] = Project.open(config)
    return _STATE["project"]


def warm_up() -> None:
    """Open the project and import tracking ahead of the first metric (rank 0, off-thread)."""
    _project()
    import flywheel.tracking
    import flywheel.training._store  # noqa: F401


def tracking_run() -> Any | None:
    """The job's tracking run (rank 0; started on first use), or ``None`` without tracking."""
    ctx = current()
    if not ctx.is_main:
        return None
    if "run" in _STATE:
        return _STATE["run"]
    run = None
    project = _project()
    if project is not None and ctx.job_id and os.environ.get(ENV_METRICS_FILE):
        run = _scheduler_run(project, ctx.job_id)
    elif project is not None:
        from flywheel.tracking import Tracker

        if ctx.spec.get("track", True):
            experiment = ctx.spec.get("experiment") or ctx.spec.get("name") or "training"
            tags = {"job_id": ctx.job_id or "", "attempt": str(ctx.attempt)}
            run = Tracker(project).start_run(
                experiment,
                params=ctx.hyperparameters,
                tags=tags,
                run_name=f"{ctx.job_id or experiment}-a{ctx.attempt}",
            )
            if ctx.job_id:
                _record_run(project, ctx.job_id, run.id)
    _STATE["run"] = run
    return run


def _scheduler_run(project: Any, job_id: str) -> Any | None:
    """The run the scheduler opened for this attempt (``job.run_id``), reopened here."""
    from flywheel.tracking import RunNotFound, Tracker
    from flywheel.training._store import JobStore

    run_id = JobStore(project.db).get(job_id).run_id
    if not run_id:
        return None
    try:
        return Tracker(project).resume_run(run_id)
    except RunNotFound:
        return None


def _record_run(project: Any, job_id: str, run_id: str) -> None:
    from flywheel.lineage import Node, record_edge
    from flywheel.training._states import JobState
    from flywheel.training._store import JobStore

    JobStore(project.db).update(job_id, JobState.RUNNING, run_id=run_id)
    record_edge(project.db, Node("job", job_id), Node("run", run_id))


def log_metrics(step: int, **values: float) -> None:
    """Record metrics for ``step`` (rank 0 only; other ranks return at once)."""
    ctx = current()
    if not ctx.is_main:
        return
    floats = {k: float(v) for k, v in values.items()}
    relay_file = os.environ.get(ENV_METRICS_FILE)
    if ctx.job_id and relay_file:
        append_metrics(relay_file, step, floats)  # the scheduler stores it (training._relay)
        return
    project = _project()
    if project is not None and ctx.job_id:
        from flywheel.training._store import JobStore

        JobStore(project.db).log_metrics(ctx.job_id, step, floats)
    run = tracking_run()
    if run is not None:
        run.log_metrics(floats, step=step)


def finish(status: str = "finished") -> None:
    """End the tracking run (flushes buffered metrics). Called by ``register`` too."""
    run = _STATE.get("run")
    if run is not None:
        run.end(status)
        _STATE.pop("run", None)


def register(
    model: Any,
    *,
    name: str | None = None,
    input_example: Any = None,
    flavor: str = "pytorch",
    metrics: dict[str, float] | None = None,
    **kwargs: Any,
) -> Any | None:
    """Register ``model`` (rank 0) as a new version of ``name`` (default: the spec's
    ``register``); returns the ``ModelVersion`` or ``None`` on other ranks / with no name.

    The version is linked to the job's tracking run and training dataset, whose files are
    recorded in the version's ``config["training_dataset_files"]`` (serving's drift reference).
    """
    ctx = current()
    name = name or ctx.spec.get("register")
    if not ctx.is_main or not name:
        return None
    project = _project()
    if project is None:
        from flywheel.project import Project

        project = Project.open()
        project.prepare()
    from flywheel.registry import Registry

    run = tracking_run()
    if run is not None and metrics:
        run.log_metrics({k: float(v) for k, v in metrics.items()})
    inner = getattr(model, "module", model)
    dataset = ctx.spec.get("dataset")
    if ctx.dataset_files:
        # Where the training data is, for serving's drift reference (it reads it through the
        # registry, not through the feature store).
        config = dict(kwargs.pop("config", None) or {})
        config.setdefault("training_dataset_files", [str(f) for f in ctx.dataset_files])
        kwargs["config"] = config
    mv = Registry(project).register_model(
        name,
        inner,
        flavor=flavor,
        input_example=input_example,
        run=run,
        training_dataset=dataset,
        tags={"job_id": ctx.job_id or ""},
        **kwargs,
    )
    if ctx.job_id:
        from flywheel.training._states import JobState
        from flywheel.training._store import JobStore

        JobStore(project.db).update(
            ctx.job_id, JobState.RUNNING, model_version=f"{mv.name}/{mv.version}"
        )
    finish()
    return mv


__all__ = ["finish", "log_metrics", "register", "tracking_run"]
