"""Distributed training: job specs, a persistent scheduler, torchrun launch, tuning.

PyTorch's own engine (``torch.distributed``, DDP/FSDP, ``torchrun`` elastic launch) does the
distributed work; this package adds scheduling (queue, quotas, priorities with fair share,
gang scheduling, preemption), launching, logs, checkpoints, tracking and registration around
it. Training code uses ``flywheel.training.runtime`` (imported separately: it needs torch).

Public API::

    load_job_spec(path) / parse_job_spec(data) -> JobSpec   # a job.yaml, validated
    JobSpec, Resources, CheckpointPolicy, TuneParam        # what a job asks for
    TrainingService(project)           # submit / cancel / list / logs (CLI, HTTP, examples)
    Scheduler(project, executor=..., inventory=[NodeCapacity], quotas={team: Quota})
    scheduler.tick() -> TickReport; scheduler.run(stop)    # one decision round; the loop
    scheduler_lock(project)            # one scheduler per project (the lock file)
    JobStore, Job, JobState            # the persistent queue and its states
    Executor, ProcessStatus, ProcessState   # the process-launch seam (tests and benchmarks fake it)
    run_study(...) -> TuneResult, TrialOutcome   # hyper-parameter studies (Optuna)

Errors: ``TrainingError`` and below: ``JobSpecError``, ``JobNotFound``, ``JobStateError``,
``QuotaError``, ``CheckpointError`` (``flywheel.training._errors``).

Names are imported on first use (PEP 562), so a training worker that imports
``flywheel.training.runtime`` does not pay for the scheduler, SQLAlchemy or FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flywheel._plugins import lazy_exports

if TYPE_CHECKING:
    from flywheel.training._errors import (
        CheckpointError,
        JobNotFound,
        JobSpecError,
        JobStateError,
        QuotaError,
        TrainingError,
    )
    from flywheel.training._executor import Executor, ProcessState, ProcessStatus
    from flywheel.training._policy import NodeCapacity, Quota
    from flywheel.training._scheduler import (
        Scheduler,
        TickReport,
        scheduler_lock,
    )
    from flywheel.training._service import (
        TrainingService,
    )
    from flywheel.training._spec import (
        CheckpointPolicy,
        JobSpec,
        Resources,
        TuneParam,
        load_job_spec,
        parse_job_spec,
    )
    from flywheel.training._states import JobState
    from flywheel.training._store import Job, JobStore
    from flywheel.training._tuning import (
        TrialOutcome,
        TuneResult,
        run_study,
    )

_EXPORTS: dict[str, str] = {
    "CheckpointError": "flywheel.training._errors",
    "JobNotFound": "flywheel.training._errors",
    "JobSpecError": "flywheel.training._errors",
    "JobStateError": "flywheel.training._errors",
    "QuotaError": "flywheel.training._errors",
    "TrainingError": "flywheel.training._errors",
    "Executor": "flywheel.training._executor",
    "ProcessState": "flywheel.training._executor",
    "ProcessStatus": "flywheel.training._executor",
    "NodeCapacity": "flywheel.training._policy",
    "Quota": "flywheel.training._policy",
    "Scheduler": "flywheel.training._scheduler",
    "TickReport": "flywheel.training._scheduler",
    "scheduler_lock": "flywheel.training._scheduler",
    "TrainingService": "flywheel.training._service",
    "CheckpointPolicy": "flywheel.training._spec",
    "JobSpec": "flywheel.training._spec",
    "Resources": "flywheel.training._spec",
    "TuneParam": "flywheel.training._spec",
    "load_job_spec": "flywheel.training._spec",
    "parse_job_spec": "flywheel.training._spec",
    "JobState": "flywheel.training._states",
    "Job": "flywheel.training._store",
    "JobStore": "flywheel.training._store",
    "TrialOutcome": "flywheel.training._tuning",
    "TuneResult": "flywheel.training._tuning",
    "run_study": "flywheel.training._tuning",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "CheckpointError",
    "CheckpointPolicy",
    "Executor",
    "Job",
    "JobNotFound",
    "JobSpec",
    "JobSpecError",
    "JobState",
    "JobStateError",
    "JobStore",
    "NodeCapacity",
    "ProcessState",
    "ProcessStatus",
    "Quota",
    "QuotaError",
    "Resources",
    "Scheduler",
    "TickReport",
    "TrainingError",
    "TrainingService",
    "TrialOutcome",
    "TuneParam",
    "TuneResult",
    "load_job_spec",
    "parse_job_spec",
    "run_study",
    "scheduler_lock",
]
