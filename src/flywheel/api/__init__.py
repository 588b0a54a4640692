"""The ASGI app: ``create_app(project)`` mounts every system's router on one FastAPI app.

``create_app_from_env(systems)`` is what every ``serve`` command runs (``flywheel up``,
``flywheel serve``, ``flywheel features serve``, ``flywheel recs serve``): systems never build
an app themselves.

``/healthz`` reports each store, ``/metrics`` is Prometheus text, ``/docs`` is the OpenAPI UI.
Errors from any route become ``{"error": "..."}`` with the status mapped in ``_errors``.
"""

from flywheel.api._app import (
    SYSTEM_ROUTERS,
    SYSTEM_SERVICES,
    SYSTEMS_ENV_VAR,
    create_app,
    create_app_from_env,
    create_server_app,
)

__all__ = [
    "SYSTEMS_ENV_VAR",
    "SYSTEM_ROUTERS",
    "SYSTEM_SERVICES",
    "create_app",
    "create_app_from_env",
    "create_server_app",
]
