"""The job state machine: the states a job can be in and the moves between them.

::

    queued ──> admitted ──> running ──> succeeded
      │  ^        │  │         │ ├────> failed
      │  │        │  │         │ ├────> cancelled
      │  │        │  └─> failed│ └────> preempted ──> queued (resumes from its checkpoint)
      │  └────────┴──────────<─┘ (lost: the process vanished without an exit status; requeued)
      └──> cancelled

``check_transition`` is the one place that says which moves are legal; the store applies a move
only if the row is still in the state the caller saw (optimistic concurrency), so two actors
(the scheduler and a ``cancel``) can never both win.
"""

from __future__ import annotations

import enum

from flywheel.training._errors import JobStateError


class JobState(enum.StrEnum):
    QUEUED = "queued"
    ADMITTED = "admitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PREEMPTED = "preempted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.ADMITTED, JobState.CANCELLED}),
    JobState.ADMITTED: frozenset(
        {JobState.RUNNING, JobState.QUEUED, JobState.CANCELLED, JobState.FAILED}
    ),
    JobState.RUNNING: frozenset(
        {
            JobState.SUCCEEDED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.PREEMPTED,
            JobState.QUEUED,
        }
    ),
    JobState.PREEMPTED: frozenset({JobState.QUEUED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def check_transition(job_id: str, src: JobState, dst: JobState) -> None:
    """Raise ``JobStateError`` unless ``src -> dst`` is a legal move."""
    if dst not in TRANSITIONS[src]:
        allowed = ", ".join(sorted(TRANSITIONS[src])) or "none (terminal state)"
        raise JobStateError(
            f"training job {job_id!r} cannot go from {src} to {dst}; allowed from {src}: {allowed}"
        )


__all__ = ["TERMINAL_STATES", "TRANSITIONS", "JobState", "check_transition"]
