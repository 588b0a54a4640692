"""HTTP API for the registry, under ``/registry`` (reads: reader; stage changes: writer)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from flywheel.auth import Principal, require_reader, require_writer
from flywheel.project import Project, current_project
from flywheel.registry._errors import RegistryError
from flywheel.registry._registry import Registry

_errors: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input."},
    404: {"description": "No such model, version or stage."},
    409: {"description": "The stage change is not possible."},
}
# ``flywheel.auth`` types its dependencies as ``object``; give mypy their real shape.
Version = Annotated[int, Path(ge=1, le=2**31 - 1)]

router = APIRouter(prefix="/registry", tags=["registry"])


class StageChange(BaseModel):
    stage: str = Field(min_length=1, max_length=64)
    reason: str = Field(default="", max_length=2000)


class Reason(BaseModel):
    reason: str = Field(default="", max_length=2000)


def _audit(entry: Any) -> dict[str, Any] | None:
    return None if entry is None else dict(entry.to_dict())


@router.get("/models", dependencies=[Depends(require_reader)])
def list_models(project: Project = Depends(current_project)) -> list[dict[str, Any]]:
    """Every registered model with its latest version and stage pointers."""
    return [m.to_dict() for m in Registry(project).list_models()]


@router.get("/models/{name}", dependencies=[Depends(require_reader)], responses=_errors)
def get_model(
    name: str,
    project: Project = Depends(current_project),
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    newest_first: bool = False,
) -> dict[str, Any]:
    """A model's versions (oldest first; ``newest_first=true`` reverses) with their stages.
    ``limit``/``offset`` page through them; ``total`` is how many versions there are."""
    versions = Registry(project).list_versions(name)
    if newest_first:
        versions.reverse()
    page = versions[offset : None if limit is None else offset + limit]
    return {"name": name, "versions": [v.to_dict() for v in page], "total": len(versions)}


@router.get(
    "/models/{name}/versions/{version}",
    dependencies=[Depends(require_reader)],
    responses=_errors,
)
def get_version(
    name: str, version: Version, project: Project = Depends(current_project)
) -> dict[str, Any]:
    """One version: flavor, hashes, signature, metrics, lineage fields, stages."""
    return Registry(project).get_version(name, version).to_dict()


@router.get(
    "/models/{name}/versions/{version}/lineage",
    dependencies=[Depends(require_reader)],
    responses=_errors,
)
def get_lineage(
    name: str, version: Version, project: Project = Depends(current_project)
) -> dict[str, Any]:
    """The lineage graph around a version (upstream and downstream)."""
    return Registry(project).lineage(name, version).to_dict()


@router.get("/resolve", dependencies=[Depends(require_reader)], responses=_errors)
def resolve(
    uri: Annotated[str, Query(max_length=300)], project: Project = Depends(current_project)
) -> dict[str, Any]:
    """The version a URI (``models:/NAME/3``, ``models:/NAME@production``) points at."""
    return Registry(project).resolve(uri).to_dict()


@router.get("/audit", dependencies=[Depends(require_reader)])
def audit_log(
    project: Project = Depends(current_project),
    name: str | None = None,
    since_id: Annotated[int, Query(ge=0, le=2**62)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    """Stage changes with ``id > since_id``, oldest first."""
    return [e.to_dict() for e in Registry(project).audit_log(name, since_id, limit)]


@router.post(
    "/models/{name}/versions",
    responses=_errors,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def register_file(
    name: str,
    request: Request,
    flavor: Annotated[Literal["onnx", "lightgbm"], Query()],
    description: Annotated[str, Query(max_length=2000)] = "",
    run_id: Annotated[str | None, Query(max_length=64)] = None,
    training_dataset: Annotated[str | None, Query(max_length=200)] = None,
    feature_service: Annotated[str | None, Query(max_length=200)] = None,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Register a model file sent as the body: an ONNX graph or a LightGBM text model.

    It is verified like any registration (loaded back and run on inputs made from its own
    input description); a file that fails is refused with 400 and the reason.
    """
    body = await request.body()
    if not body:
        raise RegistryError(f"model {name!r}: the request body (the model file) is empty")
    registry = Registry(project)
    mv = await run_in_threadpool(
        lambda: registry.register_model(
            name,
            body,
            flavor=flavor,
            description=description,
            run=run_id,
            training_dataset=training_dataset,
            feature_service=feature_service,
            actor=principal.name,
        )
    )
    return mv.to_dict()


@router.post("/models/{name}/versions/{version}/stage", responses=_errors)
def set_stage(
    name: str,
    version: Version,
    body: StageChange,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Point a stage at this version (``archived`` archives it). Returns the audit entry."""
    entry = Registry(project).set_stage(
        name, version, body.stage, reason=body.reason, actor=principal.name
    )
    return {"changed": entry is not None, "audit": _audit(entry)}


@router.post("/models/{name}/rollback", responses=_errors)
def rollback(
    name: str,
    body: StageChange,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Return a stage to the version it held before the current one."""
    entry = Registry(project).rollback(name, body.stage, reason=body.reason, actor=principal.name)
    return {"changed": True, "audit": _audit(entry)}


@router.post("/models/{name}/versions/{version}/archive", responses=_errors)
def archive(
    name: str,
    version: Version,
    body: Reason,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Archive a version: it leaves every stage and can no longer be promoted."""
    entry = Registry(project).archive(name, version, reason=body.reason, actor=principal.name)
    return {"changed": True, "audit": _audit(entry)}


__all__ = ["router"]
