"""HTTP API for training, under ``/training`` (reads: reader; submit and cancel: writer).

``GET /training/jobs`` · ``GET /training/jobs/{id}`` (with history and metrics) ·
``GET /training/jobs/{id}/logs`` · ``POST /training/jobs`` (a job spec as JSON, like job.yaml) ·
``POST /training/jobs/{id}/cancel`` · ``GET /training/inventory``.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from flywheel.auth import require_reader, require_writer
from flywheel.project import Project, current_project
from flywheel.training._service import TrainingService
from flywheel.training._spec import parse_job_spec

_errors: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid job spec or query."},
    404: {"description": "No such job."},
    409: {"description": "The job's state does not allow it."},
}

router = APIRouter(prefix="/training", tags=["training"])


class SubmitRequest(BaseModel):
    """A job spec with the same keys as ``job.yaml`` (``name``, ``entrypoint``, ...)."""

    spec: dict[str, Any]


@router.get("/jobs", dependencies=[Depends(require_reader)], responses=_errors)
def list_jobs(
    response: Response,
    state: str | None = None,
    team: str | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    project: Project = Depends(current_project),
) -> list[dict[str, Any]]:
    """Jobs, newest first, optionally only one state or team. ``limit``/``offset`` page through
    them; the ``X-Total-Count`` header has how many match."""
    service = TrainingService(project)
    jobs = service.list(state, team, limit, offset)
    response.headers["X-Total-Count"] = str(service.count(state, team))
    return [j.to_dict() for j in jobs]


@router.get("/jobs/{job_id}", dependencies=[Depends(require_reader)], responses=_errors)
def get_job(job_id: str, project: Project = Depends(current_project)) -> dict[str, Any]:
    """One job with its state history and reported metrics."""
    service = TrainingService(project)
    data = service.get(job_id).to_dict()
    data["events"] = [
        {
            "at": e.at.isoformat(),
            "from": e.from_state,
            "to": e.to_state,
            "attempt": e.attempt,
            "reason": e.reason,
        }
        for e in service.store.events(job_id)
    ]
    data["metrics"] = [
        {"key": k, "step": s, "value": v} for k, s, v in service.store.metrics(job_id)
    ]
    return data


@router.get("/jobs/{job_id}/logs", dependencies=[Depends(require_reader)], responses=_errors)
def job_logs(
    job_id: str,
    attempt: Annotated[int | None, Query(ge=1, le=1_000_000)] = None,
    project: Project = Depends(current_project),
) -> dict[str, Any]:
    """Log text per file (agent and every rank of every torchrun restart) of one attempt."""
    return {"job_id": job_id, "files": TrainingService(project).logs(job_id, attempt)}


@router.post(
    "/jobs",
    status_code=201,
    dependencies=[Depends(require_writer)],
    responses=_errors,
)
def submit_job(body: SubmitRequest, project: Project = Depends(current_project)) -> JSONResponse:
    """Queue a job (checked against the inventory and the team's quota)."""
    spec = parse_job_spec(body.spec, source="request body: spec")
    job = TrainingService(project).submit(spec)
    return JSONResponse(job.to_dict(), status_code=201)


@router.post("/jobs/{job_id}/cancel", dependencies=[Depends(require_writer)], responses=_errors)
def cancel_job(job_id: str, project: Project = Depends(current_project)) -> dict[str, Any]:
    """Cancel: at once if queued; a running job gets SIGTERM, checkpoints and stops."""
    return TrainingService(project).cancel(job_id).to_dict()


@router.get("/inventory", dependencies=[Depends(require_reader)])
def inventory(project: Project = Depends(current_project)) -> dict[str, Any]:
    """Nodes, their CPUs/GPUs and what running jobs hold; quotas; queue length."""
    return TrainingService(project).inventory_report()


__all__ = ["router"]
