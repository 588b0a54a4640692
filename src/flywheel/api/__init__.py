"""The ASGI app: ``create_app(project)`` mounts every system's router on one FastAPI app.

``/healthz`` reports each store, ``/metrics`` is Prometheus text, ``/docs`` is the OpenAPI UI.
Errors from any route become ``{"error": "..."}`` with the status mapped in ``_errors``.
"""

from flywheel.api._app import (
    SYSTEM_ROUTERS,
    SYSTEM_SERVICES,
    create_app,
    create_app_from_env,
    create_server_app,
)

__all__ = [
    "SYSTEM_ROUTERS",
    "SYSTEM_SERVICES",
    "create_app",
    "create_app_from_env",
    "create_server_app",
]
