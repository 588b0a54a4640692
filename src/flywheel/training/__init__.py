"""Distributed training: job specs, a persistent scheduler, torchrun launch, tuning.

PyTorch's own engine (``torch.distributed``, DDP/FSDP, ``torchrun`` elastic launch) does the
distributed work; this package adds scheduling (queue, quotas, priorities with fair share,
gang scheduling, preemption), launching, logs, checkpoints, tracking and registration around
it. Training code uses ``flywheel.training.runtime`` (imported separately: it needs torch).

Errors: see ``flywheel.training._errors`` (``TrainingError`` and below).
"""

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
from flywheel.training._inventory import discover_gpus, inventory_from_config
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
from flywheel.training._scheduler import Scheduler, TickReport, scheduler_lock, wait_for
from flywheel.training._spec import (
    CheckpointPolicy,
    JobSpec,
    Resources,
    TuneParam,
    load_job_spec,
    parse_job_spec,
)
from flywheel.training._states import TRANSITIONS, JobState
from flywheel.training._store import Job, JobEvent, JobStore

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
    "TuneParam",
    "can_ever_fit",
    "discover_gpus",
    "inventory_from_config",
    "load_job_spec",
    "parse_job_spec",
    "plan",
    "scheduler_lock",
    "torchrun_argv",
    "wait_for",
]
