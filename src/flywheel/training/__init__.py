"""Distributed training: job specs, a persistent scheduler, torchrun launch, tuning.

PyTorch's own engine (``torch.distributed``, DDP/FSDP, ``torchrun`` elastic launch) does the
distributed work; this package adds scheduling (queue, quotas, priorities with fair share,
gang scheduling, preemption), launching, logs, checkpoints, tracking and registration around
it. Training code uses ``flywheel.training.runtime`` (imported separately: it needs torch).

Errors: see ``flywheel.training._errors`` (``TrainingError`` and below).

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
    from flywheel.training._executor import (
        Executor,
        LocalExecutor,
        ProcessState,
        ProcessStatus,
        torchrun_argv,
    )
    from flywheel.training._inventory import (
        discover_gpus,
        inventory_from_config,
    )
    from flywheel.training._policy import (
        Allocation,
        Candidate,
        NodeCapacity,
        Plan,
        Quota,
        Slot,
        can_ever_fit,
        plan,
    )
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
    from flywheel.training._states import (
        TRANSITIONS,
        JobState,
    )
    from flywheel.training._store import (
        Job,
        JobEvent,
        JobStore,
    )
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
    "LocalExecutor": "flywheel.training._executor",
    "ProcessState": "flywheel.training._executor",
    "ProcessStatus": "flywheel.training._executor",
    "torchrun_argv": "flywheel.training._executor",
    "discover_gpus": "flywheel.training._inventory",
    "inventory_from_config": "flywheel.training._inventory",
    "Allocation": "flywheel.training._policy",
    "Candidate": "flywheel.training._policy",
    "NodeCapacity": "flywheel.training._policy",
    "Plan": "flywheel.training._policy",
    "Quota": "flywheel.training._policy",
    "Slot": "flywheel.training._policy",
    "can_ever_fit": "flywheel.training._policy",
    "plan": "flywheel.training._policy",
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
    "TRANSITIONS": "flywheel.training._states",
    "Job": "flywheel.training._store",
    "JobEvent": "flywheel.training._store",
    "JobStore": "flywheel.training._store",
    "TrialOutcome": "flywheel.training._tuning",
    "TuneResult": "flywheel.training._tuning",
    "run_study": "flywheel.training._tuning",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "TRANSITIONS",
    "Allocation",
    "Candidate",
    "CheckpointError",
    "CheckpointPolicy",
    "Executor",
    "Job",
    "JobEvent",
    "JobNotFound",
    "JobSpec",
    "JobSpecError",
    "JobState",
    "JobStateError",
    "JobStore",
    "LocalExecutor",
    "NodeCapacity",
    "Plan",
    "ProcessState",
    "ProcessStatus",
    "Quota",
    "QuotaError",
    "Resources",
    "Scheduler",
    "Slot",
    "TickReport",
    "TrainingError",
    "TrainingService",
    "TrialOutcome",
    "TuneParam",
    "TuneResult",
    "can_ever_fit",
    "discover_gpus",
    "inventory_from_config",
    "load_job_spec",
    "parse_job_spec",
    "plan",
    "run_study",
    "scheduler_lock",
    "torchrun_argv",
]
