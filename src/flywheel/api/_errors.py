"""The one place where exceptions become HTTP responses (always ``{"error": "..."}``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from flywheel.errors import AuthError, FlywheelError, OverloadedError

log = logging.getLogger("flywheel.api")


def _location(loc: tuple[object, ...] | list[object]) -> str:
    return ".".join(str(p) for p in loc)


def validation_message(exc: RequestValidationError) -> str:
    """One line naming each bad field and why, e.g. ``body.k: Input should be ...``."""
    parts = []
    for err in exc.errors()[:5]:
        parts.append(f"{_location(err.get('loc', ()))}: {err.get('msg', 'invalid')}")
    more = len(exc.errors()) - 5
    if more > 0:
        parts.append(f"and {more} more")
    return "; ".join(parts) or "invalid request"


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def _allowed_methods(request: Request) -> list[str]:
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] is Match.FULL for route in request.app.router.routes):
            allowed.append(method)
    return allowed


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(FlywheelError)
    async def _flywheel_error(_request: Request, exc: FlywheelError) -> JSONResponse:
        headers: dict[str, str] = {}
        if isinstance(exc, OverloadedError):
            headers["Retry-After"] = str(max(1, round(exc.retry_after)))
        if isinstance(exc, AuthError) and exc.status_code == 401:
            headers["WWW-Authenticate"] = "Bearer"
        if exc.status_code >= 500:
            log.error("%s: %s", type(exc).__name__, exc)
        return JSONResponse({"error": str(exc)}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names only the first route that matched the path; several routes can
            # share one path (GET and POST /experiments), and ``Allow`` must list them all.
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(
            {"error": f"internal error ({type(exc).__name__}); see the server log"},
            status_code=500,
        )
