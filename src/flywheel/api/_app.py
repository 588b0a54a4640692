"""Building the one ASGI app that ``flywheel up`` serves."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest
from pydantic import BaseModel

import flywheel
from flywheel._plugins import load_target
from flywheel.api._errors import install_error_handlers
from flywheel.api._health import health_report
from flywheel.api._middleware import BodyLimitMiddleware, MetricsMiddleware
from flywheel.api._openapi import install_openapi
from flywheel.auth import Principal, TokenStore, require_admin, require_metrics_reader
from flywheel.config import CONFIG_ENV_VAR
from flywheel.project import Project, current_project

# System name -> "module:attribute" of its APIRouter. One line per system, imported lazily so
# that ``flywheel up`` pays only for the systems it serves.
SYSTEM_ROUTERS: dict[str, str] = {
    "features": "flywheel.features._api:router",
    "tracking": "flywheel.tracking._api:router",
    "registry": "flywheel.registry._api:router",
    "ui": "flywheel.ui:router",
    "serving": "flywheel.serving._api:router",
    "llm": "flywheel.serving.llm._openai:router",
    "experiments": "flywheel.experiments._api:router",
    "training": "flywheel.training._api:router",
    "recsys": "flywheel.recsys._api:router",
    "telemetry": "flywheel.telemetry._api:router",
    "agent": "flywheel.agent._api:router",
}

# System name -> "module:attribute" of ``(project) -> async context manager``, run for the app's
# lifetime (the in-process scheduler, stream processors, endpoint reconcilers, ...).
SYSTEM_SERVICES: dict[str, str] = {
    "features": "flywheel.features._api:stream_service",
    "serving": "flywheel.serving._server:serving_service",
    "llm": "flywheel.serving.llm._service:llm_service",
    "experiments": "flywheel.experiments._api:bandit_updater",
    "training": "flywheel.training._service:scheduler_service",
    "recsys": "flywheel.recsys._api:recsys_service",
    "telemetry": "flywheel.telemetry._api:tracing_service",
    "agent": "flywheel.agent._api:mcp_service",
}

# The systems a ``serve`` command's worker processes mount (comma-separated; unset: all).
SYSTEMS_ENV_VAR = "FLYWHEEL_SYSTEMS"

ServiceFactory = Callable[[Project], contextlib.AbstractAsyncContextManager[Any]]


def _load(dotted: str) -> Any:
    return load_target(dotted)


class StoreHealth(BaseModel):
    ok: bool
    detail: str


class Health(BaseModel):
    status: str
    project: str
    version: str
    stores: dict[str, StoreHealth]


def _core_router() -> APIRouter:
    router = APIRouter(tags=["core"])

    @router.get(
        "/healthz",
        response_model=Health,
        responses={503: {"model": Health, "description": "A store is unreachable."}},
    )
    def healthz(project: Project = Depends(current_project)) -> JSONResponse:
        """The status of every configured store; 503 when any is down."""
        report = health_report(project)
        report["version"] = flywheel.__version__
        status = 200 if report["status"] == "ok" else 503
        return JSONResponse(report, status_code=status)

    @router.get("/metrics", response_class=Response, dependencies=[Depends(require_metrics_reader)])
    def metrics() -> Response:
        """Prometheus text exposition (all processes when PROMETHEUS_MULTIPROC_DIR is set)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            data = generate_latest(registry)
        else:
            data = generate_latest(REGISTRY)
        return Response(data, media_type=CONTENT_TYPE_LATEST)

    @router.get("/tokens", responses={403: {"description": "Needs an admin token."}})
    def list_tokens(
        project: Project = Depends(current_project),
        _admin: Principal = Depends(require_admin),
    ) -> dict[str, Any]:
        """API tokens: id, name, role, created, revoked (never a secret). Admin only."""
        return {
            "tokens": [
                {
                    "id": t.id,
                    "name": t.name,
                    "role": t.role.name,
                    "created_at": t.created_at.isoformat(),
                    "revoked_at": t.revoked_at.isoformat() if t.revoked_at else None,
                }
                for t in TokenStore(project.db).list()
            ]
        }

    return router


def create_app(project: Project, systems: Iterable[str] | None = None) -> FastAPI:
    """The FastAPI app for ``project``.

    Args:
        project: the project to serve.
        systems: the systems whose routers and services to mount (default: all registered).
    """
    chosen = list(SYSTEM_ROUTERS) if systems is None else list(systems)
    unknown = [s for s in chosen if s not in SYSTEM_ROUTERS and s not in SYSTEM_SERVICES]
    if unknown:
        raise ValueError(f"unknown systems {unknown}; known: {sorted(SYSTEM_ROUTERS)}")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            for name in chosen:
                if name in SYSTEM_SERVICES:
                    factory: ServiceFactory = _load(SYSTEM_SERVICES[name])
                    await stack.enter_async_context(factory(project))
            yield
        project.close()

    app = FastAPI(
        title="Flywheel",
        version=flywheel.__version__,
        description="Features, training, registry, serving, experiments and recommendations.",
        lifespan=lifespan,
    )
    app.state.project = project
    install_error_handlers(app)
    app.include_router(_core_router())
    # Plain-ASGI routes (V2 inference) are described by their router's ``openapi_paths``.
    extra_paths: dict[str, dict[str, Any]] = {}
    for name in chosen:
        if name in SYSTEM_ROUTERS:
            router = _load(SYSTEM_ROUTERS[name])
            app.include_router(router)
            extra_paths.update(getattr(router, "openapi_paths", {}))
    install_openapi(app, extra_paths)
    app.add_middleware(BodyLimitMiddleware, max_bytes=project.config.server.max_body_bytes)
    app.add_middleware(MetricsMiddleware)
    return app


def create_server_app(project: Project, systems: Iterable[str] | None = None) -> Any:
    """``create_app`` as a server runs it: with serving among ``systems`` (default: all), V2
    inference takes serving's fast path, which skips the framework middleware (serving records
    its own metrics and limits)."""
    from flywheel.serving import server_for, with_inference_fast_path

    chosen = None if systems is None else list(systems)
    app = create_app(project, chosen)
    if chosen is None or "serving" in chosen:
        # This process is the server: its loaded models may leave the collector's full passes.
        server_for(project).owns_process = project.config.serving.gc_freeze
        return with_inference_fast_path(app)
    return app


def create_app_from_env(systems: Iterable[str] | None = None) -> Any:
    """The app of every ``serve`` command: the project in ``$FLYWHEEL_CONFIG``, its schema
    brought up to date, and ``create_server_app`` over ``systems``.

    ``systems`` defaults to ``$FLYWHEEL_SYSTEMS`` (comma-separated), else every system. Called
    without arguments it is the ``uvicorn --factory`` target of ``flywheel up --workers N``,
    ``flywheel serve``, ``flywheel features serve`` and ``flywheel recs serve``, which put the
    config path and their systems in those two variables for the worker processes.
    """
    if systems is None:
        listed = os.environ.get(SYSTEMS_ENV_VAR, "").strip()
        systems = [s.strip() for s in listed.split(",") if s.strip()] if listed else None
    project = Project.open(os.environ.get(CONFIG_ENV_VAR))
    project.prepare()
    return create_server_app(project, systems)
