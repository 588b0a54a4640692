"""HTTP read API for tracking, under ``/tracking`` (for the UI and scripts; readers only)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response

from flywheel.auth import require_reader
from flywheel.project import Project, current_project
from flywheel.tracking._tracker import Tracker

_errors: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such run, metric or artifact."},
    400: {"description": "Bad input."},
}

# ``flywheel.auth`` types its dependencies as ``object``; give mypy their real shape.

router = APIRouter(prefix="/tracking", tags=["tracking"], dependencies=[Depends(require_reader)])


@router.get("/experiments")
def list_experiments(project: Project = Depends(current_project)) -> list[dict[str, Any]]:
    """Every experiment with its run count."""
    return Tracker(project).list_experiments()


@router.get("/runs")
def list_runs(
    response: Response,
    project: Project = Depends(current_project),
    experiment: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    status: Literal["running", "finished", "failed", "killed"] | None = None,
    order_by: Annotated[str | None, Query(max_length=251)] = None,
) -> list[dict[str, Any]]:
    """Runs with params, tags and metric summaries (last/min/max/count): newest first, or by a
    metric's last value (``order_by=val_loss`` ascending, ``order_by=-auc`` descending).
    ``limit``/``offset`` page through them; the ``X-Total-Count`` header has how many match."""
    tracker = Tracker(project)
    runs = tracker.list_runs(experiment, limit, status=status, order_by=order_by, offset=offset)
    response.headers["X-Total-Count"] = str(tracker.count_runs(experiment, status=status))
    return [r.to_dict() for r in runs]


@router.get("/runs/{run_id}", responses=_errors)
def get_run(run_id: str, project: Project = Depends(current_project)) -> dict[str, Any]:
    """One run: params, tags, system info, git commit, metric summaries, artifacts."""
    return Tracker(project).get_run(run_id).to_dict()


@router.get("/runs/{run_id}/metrics/{key:path}", responses=_errors)
def metric_history(
    run_id: str,
    key: str,
    project: Project = Depends(current_project),
    max_points: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    since: Annotated[float | None, Query(ge=0, le=1e11, description="Unix seconds.")] = None,
    until: Annotated[float | None, Query(ge=0, le=1e11, description="Unix seconds.")] = None,
) -> dict[str, Any]:
    """The points of one metric of a run, by step (``max_points``: evenly thinned for plots;
    ``since``/``until``: only the points logged in that time range, inclusive)."""
    points = Tracker(project).metric_history(run_id, key, max_points, since=since, until=until)
    return {
        "run_id": run_id,
        "key": key,
        "steps": [p.step for p in points],
        "values": [p.value for p in points],
        "timestamps": [p.timestamp for p in points],
    }


@router.get(
    "/runs/{run_id}/artifacts/{name:path}",
    responses={**_errors, 200: {"content": {"application/octet-stream": {}}}},
    response_class=Response,
)
def get_artifact(run_id: str, name: str, project: Project = Depends(current_project)) -> Response:
    """The bytes of a run artifact (sha256-verified)."""
    data = Tracker(project).artifact_bytes(run_id, name)
    return Response(data, media_type="application/octet-stream")


@router.get("/compare", responses=_errors)
def compare_runs(
    run_ids: Annotated[list[str], Query(min_length=1, max_length=50)],
    project: Project = Depends(current_project),
) -> dict[str, Any]:
    """Params and metric summaries of several runs side by side."""
    return Tracker(project).compare_runs(run_ids)


__all__ = ["router"]
