"""The app's OpenAPI document, adjusted to describe the API as it behaves.

FastAPI marks every route that reads a bearer token as needing it. Here:

- an open read (``require_reader``: open on 127.0.0.1 unless ``auth.required``) lists the token
  as optional (``security: [{bearer: []}, {}]``); writes and admin routes as required;
- every route that checks a token documents 401 (missing, malformed or unknown token), and routes
  that need more than a reader document 403 (a token with too low a role);
- routes served as plain ASGI (V2 inference) are described by the path items their router
  publishes in ``openapi_paths`` (see ``flywheel.serving``), so clients and fuzzers see them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

BEARER = "bearer"
ERROR_SCHEMA = {
    "type": "object",
    "properties": {"error": {"type": "string"}},
    "required": ["error"],
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
UNAUTHORIZED = {
    "description": "No token where one is needed, or an Authorization header that is not "
    "'Bearer <token>', or an unknown or revoked token.",
    "content": _ERROR_CONTENT,
}
FORBIDDEN = {
    "description": "The token's role is too low for this operation.",
    "content": _ERROR_CONTENT,
}
BAD_REQUEST = {
    "description": "Bad input or a refused operation; the message names the field and why.",
    "content": _ERROR_CONTENT,
}
_READ = "bearer-reader"


def _adjust(schema: dict[str, Any], extra_paths: dict[str, dict[str, Any]]) -> dict[str, Any]:
    for path, item in extra_paths.items():
        schema.setdefault("paths", {}).setdefault(path, {}).update(item)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    schemes = components.setdefault("securitySchemes", {})
    used = False
    for item in schema.get("paths", {}).values():
        for op in item.values():
            if op.get("parameters") or op.get("requestBody"):
                # Any FlywheelError is a 400 naming the field and the reason, and so is a body
                # that cannot be parsed: every operation that takes input can answer it.
                op.setdefault("responses", {}).setdefault("400", BAD_REQUEST)
            names = {name for requirement in op.get("security", []) for name in requirement}
            if not names:
                continue
            used = True
            responses = op.setdefault("responses", {})
            responses.setdefault("401", UNAUTHORIZED)
            if names <= {_READ, BEARER}:
                # Open reads: the token is optional (on 127.0.0.1 unless auth.required).
                op["security"] = [{BEARER: []}, {}]
            else:
                op["security"] = [{BEARER: []}]
                responses.setdefault("403", FORBIDDEN)
    for name in [n for n in schemes if n.startswith("bearer-")]:
        del schemes[name]
    if used:
        schemes[BEARER] = {
            "type": "http",
            "scheme": "bearer",
            "description": "A token from `flywheel tokens create` "
            "(reads are open on 127.0.0.1 unless auth.required is true).",
        }
    if not schemes:
        components.pop("securitySchemes", None)
    return schema


def install_openapi(app: FastAPI, extra_paths: dict[str, dict[str, Any]]) -> None:
    """Replace ``app.openapi`` with the adjusted document (rebuilt when FastAPI rebuilds its own,
    i.e. when routes were added)."""
    generate: Callable[[], dict[str, Any]] = app.openapi
    cached: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def openapi() -> dict[str, Any]:
        base = generate()
        if not cached or cached[0][0] is not base:
            cached[:] = [(base, _adjust(copy.deepcopy(base), extra_paths))]
        return cached[0][1]

    app.openapi = openapi  # type: ignore[method-assign]
