"""Hyper-parameter search with Optuna: each trial is a scheduled training job.

* **Sampler and pruner.** TPE (seeded) proposes hyperparameters from the spec's ``tune:``
  space; a median pruner watches the metric the trials report with
  ``runtime.log_metrics(step, val_loss=...)`` and cancels a trial whose intermediate value is
  worse than the median of finished trials at the same step (its job gets SIGTERM).
* **Storage.** The study lives in the project's metadata database, in Optuna's journal format
  (``training_tune_journal``, one row per log entry). Appends are serialised by the database
  (SQLite's write lock, a table lock on Postgres), so parallel tuners on SQLite never hit
  "database is locked" (optuna/optuna#820) and Optuna's own tables never mix with ours.
* **Trials as jobs.** The tuner submits one job per trial (``<name>-t<number>``) with the
  trial's hyperparameters merged in; the scheduler admits them under the same quotas and
  priorities as any job. The tuner runs the scheduler itself unless one is already running.
* **Best model.** When the study ends, the best hyperparameters are re-run as one more job with
  the spec's ``register`` name, which registers the model with lineage (``refit``). Training is
  deterministic given the seed, so that model is the best trial's model.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import sqlalchemy as sa

from flywheel.errors import ConflictError
from flywheel.metadata import Database
from flywheel.project import Project
from flywheel.training._errors import JobSpecError, TrainingError
from flywheel.training._scheduler import Scheduler, scheduler_lock
from flywheel.training._spec import JobSpec, TuneParam
from flywheel.training._states import JobState
from flywheel.training._store import JobStore

_journal = sa.table(
    "training_tune_journal", sa.column("seq", sa.BigInteger), sa.column("body", sa.Text)
)


class MetadataJournalBackend:
    """Optuna's ``BaseJournalBackend`` over the metadata database (log numbers from 0, dense)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def read_logs(self, log_number_from: int) -> Iterable[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(_journal.c.body)
                .where(_journal.c.seq >= log_number_from)
                .order_by(_journal.c.seq)
            )
            return [json.loads(r.body) for r in rows]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with self.db.write() as conn:
            if self.db.dialect == "postgresql":
                conn.execute(sa.text("LOCK TABLE training_tune_journal IN EXCLUSIVE MODE"))
            start = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(_journal.c.seq) + 1, 0))
            ).scalar_one()
            conn.execute(
                _journal.insert(),
                [{"seq": start + i, "body": json.dumps(log)} for i, log in enumerate(logs)],
            )


def study_storage(project: Project) -> Any:
    """An Optuna storage keeping studies in this project's metadata database."""
    from optuna.storages.journal import BaseJournalBackend, JournalStorage

    BaseJournalBackend.register(MetadataJournalBackend)
    return JournalStorage(MetadataJournalBackend(project.db))


def suggest(trial: Any, space: dict[str, TuneParam]) -> dict[str, Any]:
    """Draw one value per dimension of ``space`` from an Optuna trial."""
    params: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "categorical":
            params[name] = trial.suggest_categorical(name, list(p.choices))
        elif p.type == "int":
            step = int(p.step or 1)
            params[name] = trial.suggest_int(
                name, int(p.low or 0), int(p.high or 0), step=step, log=p.log
            )
        else:
            params[name] = trial.suggest_float(
                name, float(p.low or 0), float(p.high or 0), step=p.step, log=p.log
            )
    return params


@dataclass
class TrialOutcome:
    number: int
    job_id: str
    params: dict[str, Any]
    state: str  # complete | pruned | fail
    value: float | None


@dataclass
class TuneResult:
    study: str
    best_trial: int
    best_value: float
    best_params: dict[str, Any]
    best_job: str
    trials: list[TrialOutcome] = field(default_factory=list)
    refit_job: str | None = None
    model_version: str | None = None


def run_study(
    project: Project,
    spec: JobSpec,
    *,
    trials: int,
    parallel: int = 1,
    metric: str = "val_loss",
    direction: str = "minimize",
    study_name: str | None = None,
    run_scheduler: bool = True,
    on_trial: Callable[[TrialOutcome], None] | None = None,
    seed: int = 0,
    pruner_startup_trials: int = 2,
    pruner_warmup_steps: int = 0,
    enqueue: Sequence[dict[str, Any]] = (),
    refit: bool = True,
    poll: float = 0.3,
    timeout: float | None = None,
) -> TuneResult:
    """Run ``trials`` trials of ``spec`` (``parallel`` at a time); see the module docstring."""
    import optuna

    if not spec.tune:
        raise JobSpecError("tune", "is empty; add a search space to tune (e.g. lr: {type: float, "
                           "low: 1.0e-4, high: 1.0e-1, log: true})")  # fmt: skip
    if direction not in ("minimize", "maximize"):
        raise TrainingError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    name = study_name or spec.name
    study = optuna.create_study(
        study_name=name,
        storage=study_storage(project),
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(
            n_startup_trials=pruner_startup_trials, n_warmup_steps=pruner_warmup_steps
        ),
        direction=direction,
        load_if_exists=True,
    )
    for params in enqueue:
        study.enqueue_trial(params)
    store = JobStore(project.db)
    scheduler = Scheduler(project) if run_scheduler else None
    lock = scheduler_lock(project) if scheduler is not None else None
    if lock is not None:
        try:
            lock.__enter__()
        except ConflictError:  # a scheduler is already running (flywheel up / scheduler run)
            scheduler, lock = None, None
    trial_spec = replace(spec, register=None)
    running: dict[int, tuple[Any, str, dict[str, Any], int]] = {}  # number -> trial, job, params
    outcomes: list[TrialOutcome] = []
    asked = 0
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        while len(outcomes) < trials:
            if deadline is not None and time.monotonic() > deadline:
                raise TrainingError(f"tuning {name!r} did not finish within {timeout:.0f}s")
            while len(running) < parallel and asked < trials:
                trial = study.ask()
                params = suggest(trial, spec.tune)
                job_spec = replace(
                    trial_spec.with_hyperparameters(**params),
                    name=f"{spec.name[:50]}-t{trial.number}",
                    env={**spec.env, "FLYWHEEL_TUNE_TRIAL": str(trial.number)},
                )
                job = store.submit(job_spec)
                running[trial.number] = (trial, job.id, params, -1)
                asked += 1
            if scheduler is not None:
                scheduler.tick()
            for number in list(running):
                trial, job_id, params, last_step = running[number]
                for _key, step, value in store.metrics(job_id, metric):
                    if step > last_step:
                        trial.report(value, step)
                        last_step = step
                running[number] = (trial, job_id, params, last_step)
                job = store.get(job_id)
                outcome: TrialOutcome | None = None
                if not job.state.terminal and trial.should_prune():
                    store.request_cancel(job_id, f"pruned by the tuner at step {last_step}")
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    outcome = TrialOutcome(number, job_id, params, "pruned", None)
                elif job.state is JobState.SUCCEEDED:
                    values = store.metrics(job_id, metric)
                    if values:
                        study.tell(trial, values[-1][2])
                        outcome = TrialOutcome(number, job_id, params, "complete", values[-1][2])
                    else:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                        outcome = TrialOutcome(number, job_id, params, "fail", None)
                elif job.state.terminal:
                    study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    outcome = TrialOutcome(number, job_id, params, "fail", None)
                if outcome is not None:
                    outcomes.append(outcome)
                    del running[number]
                    if on_trial is not None:
                        on_trial(outcome)
            time.sleep(poll)
        completed = [o for o in outcomes if o.state == "complete" and o.value is not None]
        if not completed:
            raise TrainingError(f"tuning {name!r}: no trial completed with metric {metric!r}")
        best = study.best_trial
        best_job = next(o.job_id for o in outcomes if o.number == best.number)
        result = TuneResult(
            study=name,
            best_trial=best.number,
            best_value=float(best.value) if best.value is not None else float("nan"),
            best_params=dict(best.params),
            best_job=best_job,
            trials=outcomes,
        )
        if refit and spec.register:
            refit_spec = replace(
                spec.with_hyperparameters(**best.params), name=f"{spec.name[:50]}-best"
            )
            job = store.submit(refit_spec)
            result.refit_job = job.id
            while not (job := store.get(job.id)).state.terminal:
                if deadline is not None and time.monotonic() > deadline:
                    raise TrainingError(f"refit job {job.id} did not finish in time")
                if scheduler is not None:
                    scheduler.tick()
                time.sleep(poll)
            if job.state is not JobState.SUCCEEDED:
                raise TrainingError(f"refit job {job.id} ended {job.state}: {job.reason}")
            result.model_version = job.model_version
        return result
    finally:
        for _trial, job_id, _params, _step in running.values():
            with contextlib.suppress(TrainingError):
                store.request_cancel(job_id, "tuning stopped")
        if lock is not None:
            lock.__exit__(None, None, None)


__all__ = [
    "MetadataJournalBackend",
    "TrialOutcome",
    "TuneResult",
    "run_study",
    "study_storage",
    "suggest",
]
