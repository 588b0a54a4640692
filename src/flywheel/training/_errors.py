"""Errors of the training system.

Hierarchy::

    FlywheelError
    └── TrainingError                 400  a refused training operation
        ├── JobSpecError              400  job.yaml / JobSpec is invalid (key, allowed values)
        ├── JobNotFound               404  no job with that id (also a NotFoundError)
        ├── JobStateError             409  the job's state does not allow it (also a ConflictError)
        ├── QuotaError                400  a job can never fit its team's quota or the inventory
        └── CheckpointError           400  no valid checkpoint / a checkpoint failed its checksum
"""

from __future__ import annotations

from flywheel.errors import ConflictError, FlywheelError, NotFoundError


class TrainingError(FlywheelError):
    """Root of every deliberate error of ``flywheel.training``."""


class JobSpecError(TrainingError):
    """A job spec is invalid; names the key, the reason and the allowed values."""

    def __init__(self, key: str, reason: str, source: str = "job spec") -> None:
        self.key = key
        self.reason = reason
        self.source = source
        super().__init__(f"{source}: {key}: {reason}" if key else f"{source}: {reason}")


class JobNotFound(TrainingError, NotFoundError):
    """No job with the given id."""

    status_code = 404

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        super().__init__(f"training job {job_id!r} does not exist")


class JobStateError(TrainingError, ConflictError):
    """The operation is not allowed in the job's current state."""

    status_code = 409


class QuotaError(TrainingError):
    """A job asks for more than its team's quota or the whole inventory can ever give."""


class CheckpointError(TrainingError):
    """A checkpoint is missing, unreadable, or fails its checksum."""
