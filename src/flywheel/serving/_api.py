"""HTTP routes: the Open Inference Protocol under ``/v2`` and the control API under ``/serving``.

Inference, health and ``GET /v2`` are plain ASGI (see ``_asgi``); model metadata and the control
API are FastAPI routes. Control writes need a ``writer`` token; reads a ``reader`` (open on
loopback unless ``auth.required``).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from flywheel.auth import Principal, require_reader, require_writer
from flywheel.project import Project, current_project
from flywheel.serving import _control
from flywheel.serving._asgi import (
    OPENAPI_PATHS,
    HealthEndpoint,
    InferEndpoint,
    ServerMetadataEndpoint,
)
from flywheel.serving._drift import alert, drift_report
from flywheel.serving._endpoints import EndpointStore
from flywheel.serving._history import traffic_history
from flywheel.serving._server import server_for

MAX_VERSION = 2**31 - 1
NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"
_errors: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input; the message names the field."},
    404: {"description": "No such endpoint, model or version."},
    409: {"description": "Conflicts with the endpoint's state (e.g. a canary is running)."},
}


router = APIRouter(tags=["serving"])
# The plain-ASGI inference routes, described for the app's OpenAPI document (flywheel.api).
router.openapi_paths = OPENAPI_PATHS  # type: ignore[attr-defined]
_infer: Any = InferEndpoint()
router.add_route(
    "/v2", cast(Any, ServerMetadataEndpoint()), methods=["GET"], include_in_schema=False
)
router.add_route(
    "/v2/health/live", cast(Any, HealthEndpoint("live")), methods=["GET"], include_in_schema=False
)
router.add_route(
    "/v2/health/ready", cast(Any, HealthEndpoint("ready")), methods=["GET"], include_in_schema=False
)
router.add_route("/v2/models/{name}/infer", _infer, methods=["POST"], include_in_schema=False)
router.add_route(
    "/v2/models/{name}/versions/{version}/infer", _infer, methods=["POST"], include_in_schema=False
)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


def _whole_number(value: Any) -> Any:
    # JSON Schema's "integer" includes 3.0; strict mode alone would refuse it (true stays refused).
    return int(value) if isinstance(value, float) and value.is_integer() else value


Version = Annotated[int, Field(ge=1, le=MAX_VERSION), BeforeValidator(_whole_number)]
Percent = Annotated[int, Field(ge=1, le=100), BeforeValidator(_whole_number)]


@router.get("/v2/models/{name}", dependencies=[Depends(require_reader)], responses=_errors)
async def model_metadata(name: str, project: Project = Depends(current_project)) -> dict[str, Any]:
    """V2 model metadata: inputs, outputs, versions, the runtime and device that serve it."""
    return await server_for(project).model_metadata(name, None)


@router.get(
    "/v2/models/{name}/versions/{version}",
    dependencies=[Depends(require_reader)],
    responses=_errors,
)
async def model_version_metadata(
    name: str, version: str, project: Project = Depends(current_project)
) -> dict[str, Any]:
    """V2 metadata of one version."""
    return await server_for(project).model_metadata(name, version)


@router.get("/v2/models/{name}/ready", dependencies=[Depends(require_reader)], responses=_errors)
async def model_ready(name: str, project: Project = Depends(current_project)) -> dict[str, Any]:
    """200 once the model (or endpoint) is loaded and warm; loads it if needed."""
    meta = await server_for(project).model_metadata(name, None)
    return {"name": name, "ready": True, "version": meta["parameters"]["version"]}


@router.get(
    "/v2/models/{name}/versions/{version}/ready",
    dependencies=[Depends(require_reader)],
    responses=_errors,
)
async def model_version_ready(
    name: str, version: str, project: Project = Depends(current_project)
) -> dict[str, Any]:
    """200 once the version is loaded and warm."""
    await server_for(project).model_metadata(name, version)
    return {"name": name, "version": version, "ready": True}


class RouteBody(_Body):
    version: Version
    weight: float = Field(ge=0, le=1e6)


class ShadowBody(_Body):
    version: Version
    share: float = Field(default=1.0, gt=0, le=1)


class EndpointBody(_Body):
    model: str = Field(pattern=NAME)
    routes: list[RouteBody] = Field(min_length=1, max_length=100)
    shadow: ShadowBody | None = None


class DeployBody(_Body):
    version: Version
    model: str | None = Field(default=None, pattern=NAME)
    canary: list[Percent] | None = Field(default=None, max_length=20)
    step_requests: Annotated[int, BeforeValidator(_whole_number)] = Field(
        default=100, ge=1, le=10_000_000
    )
    max_error_rate: float = Field(default=0.01, ge=0, le=1)
    max_p99_ms: float | None = Field(default=None, gt=0, le=3_600_000)


class RollbackBody(_Body):
    reason: str = Field(default="", max_length=1000)


class ShadowUpdate(_Body):
    version: Version | None = None
    share: float = Field(default=1.0, gt=0, le=1)


@router.get("/serving/endpoints", dependencies=[Depends(require_reader)])
def list_endpoints(project: Project = Depends(current_project)) -> list[dict[str, Any]]:
    """Every endpoint with its routes, shadow and canary state."""
    return [ep.to_dict() for ep in EndpointStore(project.db).list()]


@router.get("/serving/endpoints/{name}", dependencies=[Depends(require_reader)], responses=_errors)
def get_endpoint(name: str, project: Project = Depends(current_project)) -> dict[str, Any]:
    """One endpoint and its latest events (deploys, canary steps, rollbacks with reasons)."""
    return _control.describe(project, name)


@router.put("/serving/endpoints/{name}", responses=_errors)
def put_endpoint(
    name: str,
    body: EndpointBody,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Create or replace an endpoint: a weighted split of versions and an optional shadow."""
    ep = _control.set_routes(
        project,
        name,
        model=body.model,
        routes=[(r.version, r.weight) for r in body.routes],
        shadow=None if body.shadow is None else (body.shadow.version, body.shadow.share),
        actor=principal.name,
        source=server_for(project).source,
    )
    return ep.to_dict()


@router.post("/serving/endpoints/{name}/deploy", responses=_errors)
def deploy_endpoint(
    name: str,
    body: DeployBody,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Deploy a version at once, or as a canary rollout with automatic rollback."""
    ep = _control.deploy(
        project,
        name,
        version=body.version,
        model=body.model,
        canary=tuple(body.canary) if body.canary else None,
        step_requests=body.step_requests,
        max_error_rate=body.max_error_rate,
        max_p99_ms=body.max_p99_ms,
        actor=principal.name,
        source=server_for(project).source,
    )
    return ep.to_dict()


@router.post("/serving/endpoints/{name}/shadow", responses=_errors)
def shadow_endpoint(
    name: str,
    body: ShadowUpdate,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Mirror a share of the endpoint's traffic to a version (``version: null`` stops it)."""
    ep = _control.set_shadow(
        project,
        name,
        version=body.version,
        share=body.share,
        actor=principal.name,
        source=server_for(project).source,
    )
    return ep.to_dict()


@router.post("/serving/endpoints/{name}/rollback", responses=_errors)
def rollback_endpoint(
    name: str,
    body: RollbackBody,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Abort the running (or paused) canary: all traffic back to the baseline, reason recorded."""
    return _control.rollback(project, name, reason=body.reason, actor=principal.name).to_dict()


@router.post("/serving/endpoints/{name}/pause", responses=_errors)
def pause_endpoint(
    name: str,
    body: RollbackBody,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Pause the running canary: its traffic share is kept, its gates stop (no advance, no
    automatic rollback) until resumed; reason recorded."""
    return _control.pause(project, name, reason=body.reason, actor=principal.name).to_dict()


@router.post("/serving/endpoints/{name}/resume", responses=_errors)
def resume_endpoint(
    name: str,
    body: RollbackBody,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Resume a paused canary at its step; reason recorded."""
    return _control.resume(project, name, reason=body.reason, actor=principal.name).to_dict()


@router.delete("/serving/endpoints/{name}", responses=_errors)
def delete_endpoint(
    name: str,
    project: Project = Depends(current_project),
    principal: Principal = Depends(require_writer),
) -> dict[str, str]:
    """Delete an endpoint (its name then falls back to the model's production version)."""
    EndpointStore(project.db).delete(name, actor=principal.name)
    return {"deleted": name}


@router.get(
    "/serving/endpoints/{name}/drift", dependencies=[Depends(require_reader)], responses=_errors
)
async def endpoint_drift(
    name: str,
    window: str = Query(default="1h", pattern=r"^[0-9]{1,6}(\.[0-9]{1,3})?[smhd]$"),
    notify: bool = Query(default=False, description="Record an alert and call the webhook."),
    project: Project = Depends(current_project),
) -> dict[str, Any]:
    """Drift of logged inputs/predictions against the reference (PSI, chi-square, KS)."""
    report = await asyncio.to_thread(drift_report, project, name, window=window)
    sent = False
    if notify:
        sent = await asyncio.to_thread(alert, project, report)
    return {**report.to_dict(), "webhook_sent": sent}


@router.get(
    "/serving/endpoints/{name}/history", dependencies=[Depends(require_reader)], responses=_errors
)
async def endpoint_history(
    name: str,
    since: float | None = Query(default=None, ge=0, le=1e11, description="Unix seconds."),
    until: float | None = Query(default=None, ge=0, le=1e11, description="Unix seconds."),
    buckets: int = Query(default=60, ge=1, le=500),
    project: Project = Depends(current_project),
) -> dict[str, Any]:
    """Logged requests and p50/p99 latency per version over time, from the prediction log."""
    EndpointStore(project.db).get(name)  # 404 for an unknown endpoint
    return await asyncio.to_thread(
        traffic_history, project, name, since=since, until=until, buckets=buckets
    )


@router.get("/serving/loaded", dependencies=[Depends(require_reader)])
async def loaded_versions(project: Project = Depends(current_project)) -> dict[str, Any]:
    """The versions this replica has loaded, with runtime, device and queue depth."""
    server = server_for(project)
    await server.ensure_started()
    return {"replica": server.replica_id, "versions": server.loaded()}
