"""``TrainingService``: the one façade the CLI and the HTTP API use (submit, list, logs, ...).

Also ``scheduler_service(project)``: the async context manager that ``flywheel up`` runs for the
app's lifetime (the scheduler loop in a background thread; skipped with a log line when another
scheduler already holds the project's lock).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from typing import Any

from flywheel.errors import ConflictError
from flywheel.project import Project
from flywheel.training._doorbell import ring
from flywheel.training._executor import LocalExecutor
from flywheel.training._inventory import inventory_from_config, quotas_from_config
from flywheel.training._policy import can_ever_fit, total_capacity
from flywheel.training._scheduler import Scheduler, doorbell_path, jobs_dir
from flywheel.training._spec import JobSpec
from flywheel.training._states import JobState
from flywheel.training._store import Job, JobStore

logger = logging.getLogger("flywheel.training")


class TrainingService:
    """Submit, inspect and cancel jobs of one project; read their logs."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.store = JobStore(project.db)
        self._inventory: list[Any] | None = None

    @property
    def inventory(self) -> list[Any]:
        if self._inventory is None:
            self._inventory = inventory_from_config(self.project.config.training)
        return self._inventory

    def submit(self, spec: JobSpec) -> Job:
        """Queue ``spec`` after checking it can ever run here (``QuotaError`` if not)."""
        from flywheel.training._errors import QuotaError

        quotas, default = quotas_from_config(self.project.config.training)
        why = can_ever_fit(spec.resources, self.inventory, quotas.get(spec.team, default))
        if why:
            raise QuotaError(f"job {spec.name!r} (team {spec.team!r}) can never run: {why}")
        job = self.store.submit(spec)
        ring(doorbell_path(self.project))  # the scheduler on this host starts it now
        return job

    def get(self, job_id: str) -> Job:
        return self.store.get(job_id)

    def list(
        self,
        state: str | None = None,
        team: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[Job]:
        """Jobs, newest first, optionally of one state or team; ``offset`` skips (for pages)."""
        states = _states(state)
        return self.store.list(states=states, team=team, limit=limit, offset=offset)

    def count(self, state: str | None = None, team: str | None = None) -> int:
        """How many jobs match (the total behind ``list``'s pages)."""
        return self.store.count(states=_states(state), team=team)

    def cancel(self, job_id: str) -> Job:
        return self.store.request_cancel(job_id)

    def logs(self, job_id: str, attempt: int | None = None) -> dict[str, str]:
        """Log text per file of an attempt (default: the latest): local files while they exist,
        else the copies archived in the artifact store."""
        job = self.store.get(job_id)
        executor = LocalExecutor(jobs_dir(self.project), self.project.artifacts)
        which = attempt if attempt is not None else job.attempt
        local = executor.logs(job, which)
        if local:
            return local
        prefix = f"training/jobs/{job_id}/attempt-{which}"
        out = {}
        for key in self.project.artifacts.list_named(prefix):
            out[key[len(prefix) + 1 :]] = self.project.artifacts.get_named(key).decode(
                "utf-8", errors="replace"
            )
        return out

    def inventory_report(self) -> dict[str, Any]:
        """Nodes, capacity and what running jobs hold (for ``/training/inventory``)."""
        active = self.store.list(states=[JobState.ADMITTED, JobState.RUNNING])
        used: dict[str, list[int]] = {}
        for job in active:
            for slot in job.placement:
                u = used.setdefault(slot.node, [0, 0])
                u[0] += slot.cpus
                u[1] += len(slot.gpus)
        cpus, gpus = total_capacity(self.inventory)
        quotas, default = quotas_from_config(self.project.config.training)
        return {
            "nodes": [
                {
                    "name": n.name,
                    "host": n.host,
                    "cpus": n.cpus,
                    "gpus": list(n.gpus),
                    "cpus_used": used.get(n.name, [0, 0])[0],
                    "gpus_used": used.get(n.name, [0, 0])[1],
                }
                for n in self.inventory
            ],
            "total_cpus": cpus,
            "total_gpus": gpus,
            "quotas": {
                team: {"cpus": q.cpus, "gpus": q.gpus, "jobs": q.jobs, "weight": q.weight}
                for team, q in quotas.items()
            },
            "default_quota": {
                "cpus": default.cpus,
                "gpus": default.gpus,
                "jobs": default.jobs,
                "weight": default.weight,
            },
            "running_jobs": len(active),
            "queued_jobs": len(self.store.list(states=[JobState.QUEUED])),
        }


@contextlib.asynccontextmanager
async def scheduler_service(project: Project) -> AsyncIterator[None]:
    """Run the scheduler in a thread while ``flywheel up`` serves (see module docstring)."""
    stop = threading.Event()
    running: list[Scheduler] = []

    def loop() -> None:
        scheduler = Scheduler(project)
        running.append(scheduler)
        try:
            scheduler.run(stop)  # ticks, then sleeps until woken or poll_interval
        except ConflictError as exc:
            logger.info("not starting the in-process training scheduler: %s", exc)
        finally:
            scheduler.close()

    thread = threading.Thread(target=loop, name="flywheel-training-scheduler", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        for scheduler in running:
            scheduler.wake()
        thread.join(timeout=10)


def _states(state: str | None) -> list[JobState] | None:
    if state is None:
        return None
    try:
        return [JobState(state)]
    except ValueError:
        from flywheel.training._errors import TrainingError

        allowed = ", ".join(s.value for s in JobState)
        raise TrainingError(f"state {state!r} is not one of: {allowed}") from None


__all__ = ["TrainingService", "scheduler_service"]
