"""The scheduler: a reconcile loop over the job store, the inventory and the executor.

Each ``tick()``:

1. **Reconcile** every job that holds resources with what its process is really doing
   (``Executor.status``): admitted jobs are launched (or adopted if a previous scheduler
   launched them just before dying); running jobs that exited become succeeded / failed /
   cancelled / preempted (preempted ones are requeued at once and resume from their checkpoint);
   a job whose process vanished without an exit status (its supervisor was killed with -9)
   is requeued; cancel and preempt requests are turned into SIGTERM, then SIGKILL after
   ``grace_period``.
2. **Plan** with the pure ``policy.plan`` and apply it: admit (one transaction per job, guarded
   by the job's state), mark victims for preemption and signal them.
3. **Launch** what was admitted.

Because every decision is re-derived from the database and the processes, killing the scheduler
at any point and starting it again loses nothing and runs nothing twice: a running job's
supervisor keeps running without it, and the new scheduler adopts it through its lock file.
Only one scheduler may run per project (a file lock on SQLite, an advisory lock on Postgres).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from flywheel.config import CONFIG_FILENAME
from flywheel.errors import ConflictError, FlywheelError
from flywheel.project import Project
from flywheel.training._doorbell import Doorbell
from flywheel.training._errors import QuotaError
from flywheel.training._executor import (
    ENV_ATTEMPT,
    ENV_CHECKPOINT_DIR,
    ENV_DATASET,
    ENV_JOB_ID,
    ENV_SPEC,
    Executor,
    LocalExecutor,
    ProcessState,
)
from flywheel.training._inventory import inventory_from_config, quotas_from_config
from flywheel.training._policy import (
    Allocation,
    Candidate,
    NodeCapacity,
    Plan,
    Quota,
    can_ever_fit,
    plan,
)
from flywheel.training._relay import ENV_METRICS_FILE, METRICS_FILE, MetricsRelay
from flywheel.training._spec import JobSpec
from flywheel.training._states import JobState
from flywheel.training._store import Job, JobStore

ACTIVE = (JobState.ADMITTED, JobState.RUNNING)
logger = logging.getLogger("flywheel.training")


@dataclass
class TickReport:
    """What one scheduling round did (for logs, tests and the benchmark)."""

    admitted: list[str] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    finished: dict[str, JobState] = field(default_factory=dict)
    preempting: list[str] = field(default_factory=list)
    requeued: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)


def jobs_dir(project: Project) -> Path:
    """Where attempts keep their files: ``.flywheel/training/jobs`` for the local executor,
    the shared artifact mount for the Ray executor (every node reads and writes there)."""
    if project.config.training.executor == "ray":
        from flywheel.training._ray import shared_root

        return shared_root(project.config) / "training" / "attempts"
    return project.config.state_dir / "training" / "jobs"


def doorbell_path(project: Project) -> Path:
    """The named pipe a running scheduler listens on (``training._doorbell``)."""
    return project.config.state_dir / "training" / "doorbell"


def executor_from_config(project: Project) -> Executor:
    """The executor ``training.executor`` names (``ray`` is imported only when chosen)."""
    if project.config.training.executor == "ray":
        from flywheel.training._ray import RayExecutor

        return RayExecutor(project.config, project.artifacts)
    return LocalExecutor(jobs_dir(project), project.artifacts)


def resolve_dataset(project: Project, dataset: str | None) -> str:
    """A spec's ``dataset`` as a JSON list of Parquet files (or ``""``).

    A path (file or folder of ``*.parquet``) is used as is; any other name is looked up as a
    feature-store training dataset when ``flywheel.features`` provides one.
    """
    if not dataset:
        return ""
    path = project.config.resolve_path(dataset)
    if path.is_file():
        return json.dumps([str(path)])
    if path.is_dir():
        return json.dumps([str(p) for p in sorted(path.rglob("*.parquet"))])
    try:
        from flywheel import features

        store = features.FeatureStore(project)
        td = store.get_training_dataset(dataset)
        return json.dumps([str(p) for p in td.files])
    except (ImportError, AttributeError):
        return json.dumps([dataset])


class Scheduler:
    """Admits, launches, watches, preempts and requeues training jobs of one project."""

    def __init__(
        self,
        project: Project,
        *,
        executor: Executor | None = None,
        inventory: list[NodeCapacity] | None = None,
        quotas: dict[str, Quota] | None = None,
        default_quota: Quota | None = None,
        preemption: bool | None = None,
        grace_period: float | None = None,
    ) -> None:
        cfg = project.config.training
        self.project = project
        self.store = JobStore(project.db)
        self.executor: Executor = executor or executor_from_config(project)
        if inventory is None:
            from_executor = getattr(self.executor, "inventory", None)
            inventory = from_executor() if from_executor else inventory_from_config(cfg)
        self.inventory = inventory
        # Ray places each job node on its own Ray node (STRICT_SPREAD): the plan must too.
        self.spread = bool(getattr(self.executor, "distinct_nodes", False))
        cfg_quotas, cfg_default = quotas_from_config(cfg)
        self.quotas = quotas if quotas is not None else cfg_quotas
        self.default_quota = default_quota if default_quota is not None else cfg_default
        self.preemption = cfg.preemption if preemption is None else preemption
        self.grace_period = cfg.grace_period if grace_period is None else grace_period
        self.relay = MetricsRelay(project, self.store)
        self._doorbell: Doorbell | None = None
        if hasattr(self.executor, "on_exit"):
            self.executor.on_exit = self.wake

    # -- submission (validated against this inventory) -------------------------------------------

    def check_fits(self, spec: JobSpec) -> None:
        """Raise ``QuotaError`` if ``spec`` could never run here."""
        why = can_ever_fit(
            spec.resources,
            self.inventory,
            self.quotas.get(spec.team, self.default_quota),
            spread=self.spread,
        )
        if why:
            raise QuotaError(f"job {spec.name!r} (team {spec.team!r}) can never run: {why}")

    # -- the loop --------------------------------------------------------------------------------

    def tick(self) -> TickReport:
        report = TickReport()
        self._reconcile(report)
        self._schedule(report)
        self._launch_admitted(report)
        return report

    def run(self, stop: threading.Event | None = None, interval: float | None = None) -> None:
        """Tick until ``stop`` is set (holding the one-scheduler-per-project lock).

        Between rounds it sleeps in ``wait``: a submission on this host, an attempt exiting or
        ``wake()`` starts the next round at once; ``interval`` bounds the sleep. Whoever sets
        ``stop`` should call ``wake()`` too, or the loop notices at the end of its sleep.
        """
        stop = stop or threading.Event()
        interval = interval or self.project.config.training.poll_interval
        with scheduler_lock(self.project):
            self.listen()
            while not stop.is_set():
                try:
                    self.tick()
                except Exception:  # keep running; the next round re-derives everything
                    logger.exception("training scheduler round failed")
                self.wait(interval)

    def listen(self) -> None:
        """Start listening on the doorbell (``run`` does; call it before the first ``tick``
        of a hand-written loop so an early ``wake`` is not lost)."""
        if self._doorbell is None:
            self._doorbell = Doorbell(doorbell_path(self.project))

    def wake(self) -> None:
        """End the current ``wait`` now (thread-safe; a no-op before ``listen``)."""
        if self._doorbell is not None:
            self._doorbell.ring()

    def wait(self, timeout: float) -> bool:
        """Sleep until woken (a job submitted on this host, an attempt exited, ``wake()``) or
        ``timeout`` seconds; ``True`` if woken."""
        self.listen()
        return self._doorbell.wait(timeout) if self._doorbell is not None else False

    def close(self) -> None:
        """Stop listening on the doorbell."""
        if self._doorbell is not None:
            self._doorbell.close()
            self._doorbell = None

    # -- 1. reconcile ----------------------------------------------------------------------------

    def _reconcile(self, report: TickReport) -> None:
        for job in self.store.list(states=ACTIVE, newest_first=False):
            status = self.executor.status(job)
            if job.state is JobState.ADMITTED:
                if status.state is ProcessState.NOT_STARTED:
                    if job.cancel_requested:
                        self.store.transition(
                            job.id, JobState.ADMITTED, JobState.CANCELLED, job.reason
                        )
                    continue  # launched in step 3
                # A previous scheduler launched it and died before recording that.
                moved = self.store.transition(
                    job.id,
                    JobState.ADMITTED,
                    JobState.RUNNING,
                    "adopted after scheduler restart",
                    started_at=datetime.now(UTC),
                )
                if moved is None:
                    continue
                job = moved
                report.adopted.append(job.id)
            if status.state is ProcessState.RUNNING:
                self.relay.ingest(job, self.metrics_file(job))
                if status.restarts != job.restarts:
                    self.store.update(job.id, JobState.RUNNING, restarts=status.restarts)
                if job.cancel_requested or job.preempt_requested:
                    self._signal(job)
            elif status.state is ProcessState.EXITED:
                self._finish(job, status.exit_code or 0, status.restarts, status.stopped, report)
            elif status.state is ProcessState.LOST:
                leftovers = getattr(self.executor, "kill_leftovers", None)
                if leftovers is not None:
                    leftovers(job)  # never let an orphaned worker run beside the next attempt
                self.relay.ingest(job, self.metrics_file(job))
                self.relay.end(job, "killed")
                self._archive(job)
                self._release(job)
                self.store.transition(
                    job.id,
                    JobState.RUNNING,
                    JobState.QUEUED,
                    f"attempt {job.attempt} lost (its processes died without an exit status); "
                    "requeued to resume from its last checkpoint",
                    placement=None,
                    pid=None,
                    signalled_at=None,
                    preempt_requested=False,
                )
                report.requeued.append(job.id)
            elif status.state is ProcessState.NOT_STARTED:
                self.store.transition(
                    job.id,
                    JobState.RUNNING,
                    JobState.QUEUED,
                    "no process found for the running attempt; requeued",
                    placement=None,
                    pid=None,
                )
                report.requeued.append(job.id)

    def _signal(self, job: Job) -> None:
        now = datetime.now(UTC)
        if job.signalled_at is None:
            self.executor.signal(job, signal.SIGTERM)
            self.store.update(job.id, job.state, signalled_at=now)
        elif (now - job.signalled_at).total_seconds() > self.grace_period:
            self.executor.signal(job, signal.SIGKILL)

    def _archive(self, job: Job) -> None:
        archive = getattr(self.executor, "archive_logs", None)
        if archive is not None:
            with contextlib.suppress(OSError):  # logs stay on local disk; never block a move
                archive(job)

    def _release(self, job: Job) -> None:
        """Give the attempt's cluster resources back (Ray: actors and placement group)."""
        release = getattr(self.executor, "release", None)
        if release is not None:
            release(job)

    def _finish(
        self, job: Job, exit_code: int, restarts: int, stopped: bool, report: TickReport
    ) -> None:
        self.relay.ingest(job, self.metrics_file(job))  # every point is in before "succeeded"
        self._archive(job)
        self._release(job)
        common: dict[str, Any] = {"exit_code": exit_code, "restarts": restarts, "pid": None}
        # A job that finished on its own before a stop request reached it simply succeeded.
        finished_anyway = exit_code == 0 and not stopped
        if job.cancel_requested and not finished_anyway:
            self.store.transition(
                job.id, JobState.RUNNING, JobState.CANCELLED, job.reason or "cancelled", **common
            )
            report.finished[job.id] = JobState.CANCELLED
        elif job.preempt_requested and not finished_anyway:
            moved = self.store.transition(
                job.id,
                JobState.RUNNING,
                JobState.PREEMPTED,
                "preempted by a higher-priority job; checkpointed and stopped",
                preemptions=job.preemptions + 1,
                **common,
            )
            if moved is not None:
                self.store.transition(
                    job.id,
                    JobState.PREEMPTED,
                    JobState.QUEUED,
                    "requeued after preemption; resumes from its checkpoint",
                    placement=None,
                    preempt_requested=False,
                    signalled_at=None,
                    finished_at=None,
                )
            report.finished[job.id] = JobState.PREEMPTED
            report.requeued.append(job.id)
        elif exit_code == 0:
            self.store.transition(job.id, JobState.RUNNING, JobState.SUCCEEDED, "exit 0", **common)
            report.finished[job.id] = JobState.SUCCEEDED
        else:
            why = f"exit code {exit_code} after {restarts} restart(s)"
            self.store.transition(job.id, JobState.RUNNING, JobState.FAILED, why, **common)
            report.finished[job.id] = JobState.FAILED
        outcome = report.finished.get(job.id)
        run_status = {JobState.SUCCEEDED: "finished", JobState.FAILED: "failed"}
        self.relay.end(job, run_status.get(outcome, "killed") if outcome else "killed")

    def metrics_file(self, job: Job) -> Path | None:
        """Where the attempt's rank 0 appends its metrics (``None``: the executor keeps no
        attempt folders, and rank 0 writes to the database itself)."""
        attempt_dir = getattr(self.executor, "attempt_dir", None)
        return attempt_dir(job) / METRICS_FILE if attempt_dir is not None else None

    # -- 2. plan ---------------------------------------------------------------------------------

    def snapshot(self) -> tuple[list[Allocation], list[Candidate]]:
        """The allocations and the queue, read in one transaction (no spec parsing)."""
        from flywheel.training._store import jobs_table

        t = jobs_table
        with self.project.db.read() as conn:
            rows = conn.execute(
                sa.select(
                    t.c.id,
                    t.c.seq,
                    t.c.team,
                    t.c.priority,
                    t.c.state,
                    t.c.spec,
                    t.c.placement,
                    t.c.preempt_requested,
                ).where(t.c.state.in_([JobState.QUEUED.value, *[s.value for s in ACTIVE]]))
            ).all()
        from flywheel.training._policy import Slot
        from flywheel.training._spec import Resources

        allocations, queue = [], []
        for r in rows:
            spec = json.loads(r.spec)
            if r.state == JobState.QUEUED.value:
                res = spec["resources"]
                queue.append(
                    Candidate(
                        job_id=r.id,
                        team=r.team,
                        priority=r.priority,
                        resources=Resources(
                            nodes=res["nodes"],
                            procs_per_node=res["procs_per_node"],
                            cpus_per_proc=res["cpus_per_proc"],
                            gpus_per_proc=res["gpus_per_proc"],
                        ),
                        seq=r.seq,
                    )
                )
            else:
                allocations.append(
                    Allocation(
                        job_id=r.id,
                        team=r.team,
                        priority=r.priority,
                        slots=tuple(Slot.from_dict(s) for s in json.loads(r.placement or "[]")),
                        preemptible=bool(spec.get("preemptible", True)),
                        seq=r.seq,
                        preempting=bool(r.preempt_requested),
                    )
                )
        return allocations, queue

    def plan(self) -> Plan:
        allocations, queue = self.snapshot()
        return plan(
            self.inventory,
            allocations,
            queue,
            self.quotas,
            self.default_quota,
            preemption=self.preemption,
            spread=self.spread,
        )

    def _schedule(self, report: TickReport) -> None:
        decided = self.plan()
        report.waiting = dict(decided.waiting)
        report.admitted.extend(self.store.admit_many(decided.admit))
        for victim, for_job in decided.preempt:
            if self.store.update(
                victim,
                JobState.RUNNING,
                preempt_requested=True,
                reason=f"preempting for higher-priority job {for_job}",
            ):
                report.preempting.append(victim)
                self._signal(self.store.get(victim))
            elif self.store.update(victim, JobState.ADMITTED, preempt_requested=True):
                report.preempting.append(victim)

    # -- 3. launch -------------------------------------------------------------------------------

    def job_env(self, job: Job) -> dict[str, str]:
        """The environment of a job's workers (read by ``flywheel.training.runtime``)."""
        env = dict(os.environ)
        env.update(job.spec.env)
        config_file = self.project.config.root / CONFIG_FILENAME
        if config_file.exists():
            env["FLYWHEEL_CONFIG"] = str(config_file)
        executor_dirs = getattr(self.executor, "checkpoint_dir", None)
        checkpoint_dir = (
            str(executor_dirs(job.id)) if executor_dirs else str(jobs_dir(self.project) / job.id)
        )
        pythonpath = [p for p in (job.spec.workdir, env.get("PYTHONPATH")) if p]
        env.update(
            {
                ENV_JOB_ID: job.id,
                ENV_ATTEMPT: str(job.attempt),
                ENV_SPEC: json.dumps(job.spec.to_dict()),
                ENV_CHECKPOINT_DIR: checkpoint_dir,
                ENV_DATASET: resolve_dataset(self.project, job.spec.dataset),
                "OMP_NUM_THREADS": str(job.spec.resources.cpus_per_proc),
                "PYTHONUNBUFFERED": "1",
                "PYTHONPATH": os.pathsep.join(pythonpath),
            }
        )
        if job.spec.resources.nodes > 1:
            # The gloo restart fix (runtime.init()): a single-node job builds its process group
            # on the agent's store, which is up before any worker starts, under a per-restart
            # prefix. Agents of several nodes count restarts independently, so their workers
            # could disagree on that prefix: there, one fresh store per rendezvous round, hosted
            # by worker rank 0 (the other ranks retry connecting until it is up, with backoff).
            env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
        metrics_file = self.metrics_file(job)
        if metrics_file is not None:
            env[ENV_METRICS_FILE] = str(metrics_file)
        return env

    def _launch_admitted(self, report: TickReport) -> None:
        for job in self.store.list(states=[JobState.ADMITTED], newest_first=False):
            if job.preempt_requested or job.cancel_requested:
                # Never started: give the room back without running it.
                self.store.transition(
                    job.id,
                    JobState.ADMITTED,
                    JobState.CANCELLED if job.cancel_requested else JobState.QUEUED,
                    job.reason,
                    placement=None,
                    preempt_requested=False,
                )
                continue
            try:
                pid = self.executor.launch(job, self.job_env(job))
            except (FlywheelError, OSError) as exc:
                self.store.transition(
                    job.id, JobState.ADMITTED, JobState.FAILED, f"could not launch: {exc}"
                )
                report.finished[job.id] = JobState.FAILED
                continue
            moved = self.store.transition(
                job.id,
                JobState.ADMITTED,
                JobState.RUNNING,
                f"attempt {job.attempt} started (supervisor pid {pid})",
                pid=pid,
                started_at=datetime.now(UTC),
            )
            if moved is not None:
                report.launched.append(job.id)
                try:
                    self.relay.start(moved)
                except Exception:  # tracking is a record of the job, never a reason to stop it
                    logger.exception("training: could not open the tracking run of %s", job.id)


@contextlib.contextmanager
def scheduler_lock(project: Project) -> Iterator[None]:
    """Hold the one-scheduler-per-project lock; ``ConflictError`` if another scheduler has it."""
    db = project.db
    if db.dialect == "sqlite":
        path = project.config.state_dir / "training" / "scheduler.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConflictError(
                    f"another training scheduler is running for project "
                    f"{project.config.project!r} (lock {path})"
                ) from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    key = int.from_bytes(
        hashlib.sha256(f"flywheel-training-scheduler:{db.url}".encode()).digest()[:7], "big"
    )
    with db.engine.connect() as conn:
        got = conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar()
        conn.commit()
        if not got:
            raise ConflictError(
                f"another training scheduler is running for project {project.config.project!r}"
            )
        try:
            yield
        finally:
            conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            conn.commit()


__all__ = [
    "Scheduler",
    "TickReport",
    "doorbell_path",
    "executor_from_config",
    "jobs_dir",
    "resolve_dataset",
    "scheduler_lock",
]
