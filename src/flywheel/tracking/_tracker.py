"""``Tracker``: start runs and read them back; ``start_run`` for scripts using the cwd project."""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any

from flywheel.environment import current_user, distributed_rank, git_commit, system_info
from flywheel.project import Project, default_project
from flywheel.tracking._errors import TrackingError
from flywheel.tracking._run import Run, _param_text
from flywheel.tracking._store import MetricPoint, RunInfo, TrackingStore

_EXPERIMENT_MAX = 200


def _check_experiment(experiment: str) -> str:
    if not isinstance(experiment, str) or not experiment.strip():
        raise TrackingError("experiment name must be a non-empty string")
    if len(experiment) > _EXPERIMENT_MAX:
        raise TrackingError(f"experiment name is longer than {_EXPERIMENT_MAX} characters")
    return experiment


class Tracker:
    """Experiment tracking over a project's metadata store and artifact store."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.store = TrackingStore(project.db)

    def start_run(
        self,
        experiment: str,
        *,
        params: dict[str, Any] | None = None,
        tags: dict[str, Any] | None = None,
        run_name: str | None = None,
        all_ranks: bool = False,
        log_system_info: bool = True,
        batch_size: int | None = None,
    ) -> Run:
        """Start a run in ``experiment`` (created on first use) and return it.

        Records params, tags, the user, host/Python/library versions and the git commit of the
        working directory (``system['git_dirty']`` when it has uncommitted changes). Under
        ``torch.distributed`` (or ``torchrun``'s ``RANK``) only rank 0 records anything unless
        ``all_ranks`` is true; then each rank gets its own run tagged with its rank.
        """
        _check_experiment(experiment)
        rank, world = distributed_rank()
        run_id = uuid.uuid4().hex
        name = run_name or f"{experiment}-{run_id[:8]}"
        if rank != 0 and not all_ranks:
            return Run.inactive(self, experiment, name)
        all_tags = {str(k): _param_text(v) for k, v in (tags or {}).items()}
        if world > 1:
            all_tags.setdefault("rank", str(rank))
            all_tags.setdefault("world_size", str(world))
        commit, dirty = git_commit() if log_system_info else (None, False)
        system = system_info() if log_system_info else {}
        if commit:
            system["git_dirty"] = dirty
        self.store.create_run(
            run_id,
            experiment,
            name,
            {str(k): _param_text(v) for k, v in (params or {}).items()},
            all_tags,
            system,
            commit,
            current_user(),
        )
        return Run(self, run_id, experiment, name, batch_size=batch_size)

    # -- artifacts ------------------------------------------------------------------------------

    def log_artifact(self, run_id: str, path: str | Path, name: str | None = None) -> list[str]:
        path = Path(path)
        if not path.exists():
            raise TrackingError(f"run {run_id}: artifact path {str(path)!r} does not exist")
        base = name or path.name
        files = (
            [(base, path)]
            if path.is_file()
            else [
                (f"{base}/{p.relative_to(path).as_posix()}", p)
                for p in sorted(path.rglob("*"))
                if p.is_file()
            ]
        )
        for artifact_name, file in files:
            digest = self.project.artifacts.put_file(file)
            self.store.add_artifact(run_id, artifact_name, digest.sha256, digest.size)
        return [n for n, _ in files]

    def log_artifact_bytes(self, run_id: str, data: bytes, name: str) -> str:
        digest = self.project.artifacts.put_bytes(data)
        self.store.add_artifact(run_id, name, digest.sha256, digest.size)
        return name

    def artifact_bytes(self, run_id: str, name: str) -> bytes:
        """The verified bytes of a run's artifact."""
        return self.project.artifacts.get_bytes(self.store.artifact(run_id, name).sha256)

    def download_artifact(self, run_id: str, name: str, dest: str | Path) -> Path:
        """Copy a run's artifact to ``dest`` (sha256-verified)."""
        return self.project.artifacts.get_file(self.store.artifact(run_id, name).sha256, dest)

    # -- reads ----------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> RunInfo:
        """The stored run with its params, tags, metric summaries and artifacts."""
        return self.store.get_run(run_id)

    def list_runs(
        self,
        experiment: str | None = None,
        limit: int = 100,
        *,
        status: str | None = None,
        order_by: str | None = None,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs, newest first, optionally of one experiment and/or status.

        ``order_by="val_loss"`` sorts by that metric's last value ascending, ``"-auc"``
        descending (runs without it come last). ``offset`` skips that many (for pages).
        """
        return self.store.list_runs(
            experiment, limit, status=status, order_by=order_by, offset=offset
        )

    def count_runs(self, experiment: str | None = None, *, status: str | None = None) -> int:
        """How many runs match (the total behind ``list_runs``' pages)."""
        return self.store.count_runs(experiment, status=status)

    def resume_run(self, run_id: str, *, batch_size: int | None = None) -> Run:
        """Reopen a run (after a restart from a checkpoint, say): status ``running`` again, and
        steps of metrics logged without ``step`` continue after the last stored one."""
        info = self.store.get_run(run_id)
        self.store.set_status(run_id, "running")
        run = Run(self, run_id, info.experiment, info.name, batch_size=batch_size)
        run._steps.update({k: m.last_step for k, m in info.metrics.items()})
        return run

    def list_experiments(self) -> list[dict[str, Any]]:
        return self.store.list_experiments()

    def metric_history(
        self,
        run_id: str,
        key: str,
        max_points: int | None = None,
        *,
        since: float | None = None,
        until: float | None = None,
    ) -> list[MetricPoint]:
        """Every point of ``key`` in ``run_id``, by step; with ``max_points``, at most that many
        evenly spaced points (the first and the last always included), for plotting.
        ``since``/``until`` (Unix seconds, inclusive) keep only the points logged in that time
        range (before thinning); ``until`` before ``since`` is a ``TrackingError``."""
        if since is not None and until is not None and until < since:
            raise TrackingError(f"until: {until} is before since: {since}")
        self.store.run_exists(run_id)
        points = self.store.metric_history(run_id, key)
        if since is not None or until is not None:
            lo = -math.inf if since is None else since
            hi = math.inf if until is None else until
            points = [p for p in points if lo <= p.timestamp <= hi]
        if max_points is None or len(points) <= max_points:
            return points
        if max_points < 2:
            return points[-1:]
        last = len(points) - 1
        picks = sorted({round(i * last / (max_points - 1)) for i in range(max_points)})
        return [points[i] for i in picks]

    def latest_metrics(self, run_id: str) -> dict[str, float]:
        """The last value (highest step) of each metric of a run."""
        return {k: m.last for k, m in self.store.metric_summaries([run_id])[run_id].items()}

    def compare_runs(self, run_ids: list[str]) -> dict[str, Any]:
        """Params and metrics (last/min/max) of several runs side by side.

        Returns ``{"runs": [...], "params": {key: [value per run]}, "metrics": {key: [summary
        per run]}}``; a run lacking a key has ``None`` there.
        """
        if not run_ids:
            raise TrackingError("compare needs at least one run id")
        infos = [self.store.get_run(r) for r in run_ids]
        param_keys = sorted({k for i in infos for k in i.params})
        metric_keys = sorted({k for i in infos for k in i.metrics})
        return {
            "runs": [
                {"id": i.id, "name": i.name, "experiment": i.experiment, "status": i.status}
                for i in infos
            ],
            "params": {k: [i.params.get(k) for i in infos] for k in param_keys},
            "metrics": {
                k: [i.metrics[k].to_dict() if k in i.metrics else None for i in infos]
                for k in metric_keys
            },
        }


def _open_project(project: Project | str | Path | None) -> Project:
    if isinstance(project, Project):
        return project
    return default_project(project, for_writing=True)


def start_run(
    experiment: str,
    *,
    params: dict[str, Any] | None = None,
    tags: dict[str, Any] | None = None,
    run_name: str | None = None,
    project: Project | str | Path | None = None,
    all_ranks: bool = False,
) -> Run:
    """Start a run in the project found from the cwd or ``$FLYWHEEL_CONFIG`` (or ``project``)."""
    tracker = Tracker(_open_project(project))
    return tracker.start_run(
        experiment, params=params, tags=tags, run_name=run_name, all_ranks=all_ranks
    )


__all__ = ["Tracker", "start_run"]
