"""``JobStore``: the persistent queue of training jobs in the metadata database.

Every state change is one transaction that (1) updates the job row only if it is still in the
state the caller expects (``UPDATE ... WHERE state = :expected``, so concurrent actors cannot
both win) and (2) appends a row to the job's event history. Nothing about a job lives only in
a process's memory: a scheduler killed at any point finds every job where it left it.
"""

from __future__ import annotations

import builtins
import json
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from flywheel.lineage import Node, record_edge
from flywheel.metadata import Database
from flywheel.training._errors import JobNotFound, JobStateError
from flywheel.training._policy import Slot
from flywheel.training._spec import JobSpec, parse_job_spec
from flywheel.training._states import JobState, check_transition

_meta = sa.MetaData()
jobs_table = sa.Table(
    "training_jobs",
    _meta,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger),
    sa.Column("name", sa.String(63)),
    sa.Column("team", sa.String(63)),
    sa.Column("priority", sa.Integer),
    sa.Column("state", sa.String(16)),
    sa.Column("spec", sa.Text),
    sa.Column("cpus", sa.Integer),
    sa.Column("gpus", sa.Integer),
    sa.Column("placement", sa.Text),
    sa.Column("attempt", sa.Integer),
    sa.Column("restarts", sa.Integer),
    sa.Column("preemptions", sa.Integer),
    sa.Column("pid", sa.Integer),
    sa.Column("exit_code", sa.Integer),
    sa.Column("reason", sa.Text),
    sa.Column("cancel_requested", sa.Boolean),
    sa.Column("preempt_requested", sa.Boolean),
    sa.Column("signalled_at", sa.DateTime(timezone=True)),
    sa.Column("run_id", sa.String(64)),
    sa.Column("model_version", sa.String(200)),
    sa.Column("submitted_at", sa.DateTime(timezone=True)),
    sa.Column("started_at", sa.DateTime(timezone=True)),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
)
events_table = sa.Table(
    "training_job_events",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(40)),
    sa.Column("at", sa.DateTime(timezone=True)),
    sa.Column("from_state", sa.String(16)),
    sa.Column("to_state", sa.String(16)),
    sa.Column("attempt", sa.Integer),
    sa.Column("reason", sa.Text),
)
metrics_table = sa.Table(
    "training_job_metrics",
    _meta,
    sa.Column("job_id", sa.String(40)),
    sa.Column("key", sa.String(200)),
    sa.Column("step", sa.BigInteger),
    sa.Column("value", sa.Float),
    sa.Column("at", sa.DateTime(timezone=True)),
)


def _now() -> datetime:
    return datetime.now(UTC)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # SQLite drops the zone; we only ever store UTC
    return value


@dataclass(frozen=True)
class JobEvent:
    """One state change in a job's history."""

    at: datetime
    from_state: JobState | None
    to_state: JobState
    attempt: int
    reason: str


@dataclass(frozen=True)
class Job:
    """A training job as stored: its spec, state and bookkeeping."""

    id: str
    seq: int
    spec: JobSpec
    state: JobState
    placement: tuple[Slot, ...]
    attempt: int
    restarts: int
    preemptions: int
    pid: int | None
    exit_code: int | None
    reason: str
    cancel_requested: bool
    preempt_requested: bool
    signalled_at: datetime | None
    run_id: str | None
    model_version: str | None
    submitted_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def team(self) -> str:
        return self.spec.team

    @property
    def priority(self) -> int:
        return self.spec.priority

    def to_dict(self) -> dict[str, Any]:
        """JSON-able view (for the HTTP API and ``jobs show --json``)."""
        return {
            "id": self.id,
            "name": self.name,
            "team": self.team,
            "priority": self.priority,
            "state": str(self.state),
            "attempt": self.attempt,
            "restarts": self.restarts,
            "preemptions": self.preemptions,
            "pid": self.pid,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "cancel_requested": self.cancel_requested,
            "preempt_requested": self.preempt_requested,
            "placement": [s.to_dict() for s in self.placement],
            "run_id": self.run_id,
            "model_version": self.model_version,
            "submitted_at": self.submitted_at.isoformat(),
            "started_at": self.started_at.isoformat() if self.started_at else None,
            "finished_at": self.finished_at.isoformat() if self.finished_at else None,
            "spec": self.spec.to_dict(),
        }


def _job_filters(states: Sequence[JobState] | None, team: str | None) -> list[Any]:
    filters: list[Any] = []
    if states is not None:
        filters.append(jobs_table.c.state.in_([s.value for s in states]))
    if team is not None:
        filters.append(jobs_table.c.team == team)
    return filters


def _row_to_job(row: Any) -> Job:
    placement = tuple(Slot.from_dict(s) for s in json.loads(row.placement or "[]"))
    return Job(
        id=row.id,
        seq=row.seq,
        spec=parse_job_spec(json.loads(row.spec), source=f"stored job {row.id}"),
        state=JobState(row.state),
        placement=placement,
        attempt=row.attempt,
        restarts=row.restarts,
        preemptions=row.preemptions,
        pid=row.pid,
        exit_code=row.exit_code,
        reason=row.reason or "",
        cancel_requested=bool(row.cancel_requested),
        preempt_requested=bool(row.preempt_requested),
        signalled_at=_aware(row.signalled_at),
        run_id=row.run_id,
        model_version=row.model_version,
        submitted_at=_aware(row.submitted_at) or _now(),
        started_at=_aware(row.started_at),
        finished_at=_aware(row.finished_at),
        updated_at=_aware(row.updated_at) or _now(),
    )


def new_job_id(name: str) -> str:
    """``<name>-<8 hex>``: readable in ``jobs list`` and unique."""
    return f"{name[:30]}-{secrets.token_hex(4)}"


class JobStore:
    """Jobs, their history and their reported metrics, in the project's metadata database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- writes ----------------------------------------------------------------------------------

    def submit(self, spec: JobSpec, *, job_id: str | None = None) -> Job:
        """Queue a job. Returns it in state ``queued``.

        Submission order (``seq``) is the next number; two concurrent submitters on Postgres
        may pick the same one, in which case the loser retries (the insert is atomic).
        """
        for attempt in range(10):
            try:
                return self._submit_once(spec, job_id or new_job_id(spec.name))
            except sa.exc.IntegrityError:
                if job_id is not None and attempt == 0 and self._exists(job_id):
                    from flywheel.errors import ConflictError

                    raise ConflictError(f"training job {job_id!r} already exists") from None
                time.sleep(0.01 * (attempt + 1))
        raise sa.exc.InvalidRequestError(
            "could not allocate a submission number"
        )  # pragma: no cover

    def _exists(self, job_id: str) -> bool:
        with self.db.read() as conn:
            return (
                conn.execute(sa.select(jobs_table.c.id).where(jobs_table.c.id == job_id)).first()
                is not None
            )

    def _submit_once(self, spec: JobSpec, job_id: str) -> Job:
        now = _now()
        with self.db.write() as conn:
            seq = conn.execute(
                sa.select(sa.func.coalesce(sa.func.max(jobs_table.c.seq), 0))
            ).scalar_one()
            conn.execute(
                jobs_table.insert().values(
                    id=job_id,
                    seq=seq + 1,
                    name=spec.name,
                    team=spec.team,
                    priority=spec.priority,
                    state=JobState.QUEUED.value,
                    spec=json.dumps(spec.to_dict(), sort_keys=True),
                    cpus=spec.resources.cpus,
                    gpus=spec.resources.gpus,
                    placement=None,
                    attempt=0,
                    restarts=0,
                    preemptions=0,
                    reason="",
                    cancel_requested=False,
                    preempt_requested=False,
                    submitted_at=now,
                    updated_at=now,
                )
            )
            self._event(conn, job_id, None, JobState.QUEUED, 0, "submitted")
            if spec.dataset:
                record_edge(conn, Node("training_dataset", spec.dataset), Node("job", job_id))
        return self.get(job_id)

    def transition(
        self,
        job_id: str,
        expected: JobState | Iterable[JobState],
        to: JobState,
        reason: str = "",
        **fields: Any,
    ) -> Job | None:
        """Move ``job_id`` to ``to`` if it is still in ``expected``; ``None`` if it was not.

        ``fields`` are other columns to set in the same transaction (placement, pid, ...).
        """
        expected_states = [expected] if isinstance(expected, JobState) else list(expected)
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(jobs_table.c.state, jobs_table.c.attempt).where(jobs_table.c.id == job_id)
            ).first()
            if row is None:
                raise JobNotFound(job_id)
            current = JobState(row.state)
            if current not in expected_states:
                return None
            check_transition(job_id, current, to)
            values = dict(fields)
            if "placement" in values and values["placement"] is not None:
                values["placement"] = json.dumps([s.to_dict() for s in values["placement"]])
            now = _now()
            values.update(state=to.value, updated_at=now)
            if to.terminal:
                values.setdefault("finished_at", now)
            if reason:
                values["reason"] = reason
            result = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state == current.value)
                .values(**values)
            )
            if result.rowcount != 1:
                return None
            attempt = values.get("attempt", row.attempt)
            self._event(conn, job_id, current, to, attempt, reason)
        return self.get(job_id)

    def admit_many(
        self, admissions: Sequence[tuple[str, Sequence[Slot]]], reason: str = ""
    ) -> list[str]:
        """Move many queued jobs to admitted with their placements in ONE transaction.

        Each job moves only if it is still queued (others are skipped); returns the ids moved.
        The rows are locked first (SQLite: the write lock taken at BEGIN; Postgres:
        ``SELECT ... FOR UPDATE``), so the batched UPDATE cannot race a concurrent cancel.
        """
        if not admissions:
            return []
        now = _now()
        with self.db.write() as conn:
            attempts: dict[str, int] = {}
            ids = [job_id for job_id, _ in admissions]
            for i in range(0, len(ids), 500):
                query = sa.select(jobs_table.c.id, jobs_table.c.attempt).where(
                    jobs_table.c.id.in_(ids[i : i + 500]),
                    jobs_table.c.state == JobState.QUEUED.value,
                )
                if self.db.dialect == "postgresql":
                    query = query.with_for_update()
                attempts.update({r.id: r.attempt for r in conn.execute(query)})
            rows: list[dict[str, Any]] = []
            events: list[dict[str, Any]] = []
            for job_id, slots in admissions:
                if job_id not in attempts:
                    continue
                why = reason or f"admitted on {', '.join(s.node for s in slots)}"
                rows.append(
                    {
                        "b_id": job_id,
                        "b_placement": json.dumps([s.to_dict() for s in slots]),
                        "b_attempt": attempts[job_id] + 1,
                        "b_reason": why,
                    }
                )
                events.append(
                    {
                        "job_id": job_id,
                        "at": now,
                        "from_state": JobState.QUEUED.value,
                        "to_state": JobState.ADMITTED.value,
                        "attempt": attempts[job_id] + 1,
                        "reason": why,
                    }
                )
            if rows:
                conn.execute(
                    jobs_table.update()
                    .where(jobs_table.c.id == sa.bindparam("b_id"))
                    .values(
                        state=JobState.ADMITTED.value,
                        placement=sa.bindparam("b_placement"),
                        attempt=sa.bindparam("b_attempt"),
                        reason=sa.bindparam("b_reason"),
                        exit_code=None,
                        updated_at=now,
                    ),
                    rows,
                )
                conn.execute(events_table.insert(), events)
        return [str(r["b_id"]) for r in rows]

    def update(self, job_id: str, expected: JobState, **fields: Any) -> bool:
        """Set columns without a state change, if the job is still in ``expected``."""
        with self.db.write() as conn:
            result = conn.execute(
                jobs_table.update()
                .where(jobs_table.c.id == job_id, jobs_table.c.state == expected.value)
                .values(**fields, updated_at=_now())
            )
            return result.rowcount == 1

    def request_cancel(self, job_id: str, reason: str = "cancelled by user") -> Job:
        """Cancel a job: queued ones at once, running ones via SIGTERM from the scheduler."""
        job = self.get(job_id)
        if job.state.terminal:
            raise JobStateError(f"training job {job_id!r} already {job.state}; nothing to cancel")
        if job.state in (JobState.QUEUED, JobState.PREEMPTED):
            done = self.transition(job_id, job.state, JobState.CANCELLED, reason)
            if done is not None:
                return done
            return self.request_cancel(job_id, reason)  # it moved meanwhile; look again
        self.update(job_id, job.state, cancel_requested=True, reason=reason)
        return self.get(job_id)

    def _event(
        self,
        conn: Connection,
        job_id: str,
        src: JobState | None,
        dst: JobState,
        attempt: int,
        reason: str,
    ) -> None:
        conn.execute(
            events_table.insert().values(
                job_id=job_id,
                at=_now(),
                from_state=src.value if src else None,
                to_state=dst.value,
                attempt=attempt,
                reason=reason,
            )
        )

    # -- metrics ---------------------------------------------------------------------------------

    def log_metrics(self, job_id: str, step: int, values: dict[str, float]) -> None:
        """Record metrics a job reports (idempotent per ``(key, step)``: the last write wins)."""
        self.log_metric_points(job_id, [(step, values)])

    def log_metric_points(self, job_id: str, points: list[tuple[int, dict[str, float]]]) -> None:
        """Record many ``(step, {key: value})`` points in one transaction (same contract as
        ``log_metrics``: idempotent per ``(key, step)``, the last write wins)."""
        if not points:
            return
        now = _now()
        with self.db.write() as conn:
            for step, values in points:
                for key, value in values.items():
                    conn.execute(
                        metrics_table.delete().where(
                            metrics_table.c.job_id == job_id,
                            metrics_table.c.key == key,
                            metrics_table.c.step == step,
                        )
                    )
                    conn.execute(
                        metrics_table.insert().values(
                            job_id=job_id, key=key, step=step, value=float(value), at=now
                        )
                    )

    def metrics(self, job_id: str, key: str | None = None) -> list[tuple[str, int, float]]:
        """``(key, step, value)`` rows, ordered by key then step."""
        query = sa.select(metrics_table.c.key, metrics_table.c.step, metrics_table.c.value).where(
            metrics_table.c.job_id == job_id
        )
        if key is not None:
            query = query.where(metrics_table.c.key == key)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(metrics_table.c.key, metrics_table.c.step))
            return [(r.key, int(r.step), float(r.value)) for r in rows]

    # -- reads -----------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job:
        with self.db.read() as conn:
            row = conn.execute(sa.select(jobs_table).where(jobs_table.c.id == job_id)).first()
        if row is None:
            raise JobNotFound(job_id)
        return _row_to_job(row)

    def list(
        self,
        *,
        states: Sequence[JobState] | None = None,
        team: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
        offset: int = 0,
    ) -> list[Job]:
        query = sa.select(jobs_table).where(*_job_filters(states, team))
        query = query.order_by(jobs_table.c.seq.desc() if newest_first else jobs_table.c.seq)
        if limit is not None:
            query = query.limit(limit)
        if offset:
            query = query.offset(offset)
        with self.db.read() as conn:
            return [_row_to_job(r) for r in conn.execute(query)]

    def count(self, *, states: Sequence[JobState] | None = None, team: str | None = None) -> int:
        """How many jobs ``list`` would page through with these filters."""
        query = sa.select(sa.func.count()).select_from(jobs_table)
        with self.db.read() as conn:
            return int(conn.execute(query.where(*_job_filters(states, team))).scalar_one())

    def events(self, job_id: str) -> builtins.list[JobEvent]:
        self.get(job_id)
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(events_table)
                .where(events_table.c.job_id == job_id)
                .order_by(events_table.c.id)
            )
            return [
                JobEvent(
                    at=_aware(r.at) or _now(),
                    from_state=JobState(r.from_state) if r.from_state else None,
                    to_state=JobState(r.to_state),
                    attempt=r.attempt,
                    reason=r.reason,
                )
                for r in rows
            ]


__all__ = ["Job", "JobEvent", "JobStore", "new_job_id"]
