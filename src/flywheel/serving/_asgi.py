"""The Open Inference Protocol hot path as plain ASGI apps (no per-request framework work).

Mounted as Starlette routes on the serving router (``include_in_schema=False``): the body is read
with the ``serving.max_request_bytes`` limit (413 beyond it), the few headers that matter are
picked out of the raw header list, and ``InferenceServer.infer`` does the rest.

Inference requests carry their route template in ``scope["route"]`` (an object with a ``path``,
as framework routes have), so request metrics that label by route template (the app's
``flywheel_http_*``) count them under ``/v2/models/{name}/infer`` rather than as unmatched.
"""

from __future__ import annotations

import asyncio
import math
import random
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.types import Receive, Scope, Send

from flywheel import __version__
from flywheel.auth import authorize_asgi
from flywheel.errors import AuthError
from flywheel.serving._codec import V2_DTYPES
from flywheel.serving._errors import InvalidInput, PayloadTooLarge
from flywheel.serving._server import InferenceResult, parse_timeout_header, server_for

SERVER_EXTENSIONS = ["binary_tensor_data"]
_JSON = (b"content-type", b"application/json")
_OCTET = (b"content-type", b"application/octet-stream")


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def retry_after_seconds(expected_s: float, rng: random.Random | None = None) -> int:
    """The ``Retry-After`` of a 429: whole seconds, at least the expected wait (and 1), spread
    uniformly up to twice that. Clients refused in one burst that all came back after the same
    second would arrive as one burst again; spread, each return is a fraction of it."""
    base = max(1, math.ceil(expected_s))
    return base + (rng or random).randrange(base + 1)


def _project(scope: Scope) -> Any:
    return scope["app"].state.project


async def _authorized(scope: Scope, send: Send) -> bool:
    """Checks the caller as ``require_reader`` does; answers 401/403 and returns False if not."""
    try:
        await authorize_asgi(scope)
    except AuthError as exc:
        headers = [_JSON]
        if exc.status_code == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await _send(send, exc.status_code, orjson.dumps({"error": str(exc)}), headers)
        return False
    return True


@dataclass(frozen=True)
class RouteTemplate:
    """What route-labelling middleware reads from ``scope["route"]``: the path template."""

    path: str


INFER_ROUTE = RouteTemplate("/v2/models/{name}/infer")
INFER_VERSION_ROUTE = RouteTemplate("/v2/models/{name}/versions/{version}/infer")


class InferEndpoint:
    """``POST /v2/models/{name}[/versions/{version}]/infer``."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        project = _project(scope)
        server = server_for(project)
        params = scope.get("path_params", {})
        if not isinstance(scope.get("route"), RouteTemplate):
            # Starlette's plain routes leave no "route" in the scope; label the request with
            # its template (the middleware reads it after this returns, from the same dict).
            scope["route"] = INFER_VERSION_ROUTE if "version" in params else INFER_ROUTE
        if not await _authorized(scope, send):
            return
        header_length: int | None = None
        timeout_s: float | None = None
        routing_key = request_id = encoding = None
        declared = -1
        try:
            for raw_name, raw_value in scope["headers"]:
                if raw_name == b"inference-header-content-length":
                    try:
                        header_length = int(raw_value)
                    except ValueError:
                        raise InvalidInput(
                            f"Inference-Header-Content-Length {raw_value.decode('latin-1')!r} "
                            "is not an integer"
                        ) from None
                elif raw_name in (b"timeout", b"x-request-timeout"):
                    given = parse_timeout_header(
                        raw_value.decode("latin-1"),
                        header=raw_name.decode(),
                        bare="us" if raw_name == b"timeout" else "s",
                    )
                    timeout_s = given if timeout_s is None else min(timeout_s, given)
                elif raw_name == b"x-routing-key":
                    routing_key = raw_value.decode("latin-1")
                elif raw_name == b"x-request-id":
                    request_id = raw_value.decode("latin-1")
                elif raw_name == b"content-encoding":
                    encoding = raw_value.decode("latin-1").strip().lower()
                elif raw_name == b"content-length":
                    try:
                        declared = int(raw_value)
                    except ValueError:
                        declared = -1
            limit = server.config.max_request_bytes
            if declared > limit:
                raise PayloadTooLarge(
                    f"the request body is {declared} bytes; the limit is {limit} bytes"
                )
            body = await _read_body(receive, limit)
            if encoding in ("gzip", "deflate"):
                try:
                    body = zlib.decompressobj(wbits=47).decompress(body, limit + 1)
                except zlib.error as exc:
                    raise InvalidInput(
                        f"the {encoding} body cannot be decompressed: {exc}"
                    ) from None
                if len(body) > limit:
                    raise PayloadTooLarge(f"the decompressed body is over {limit} bytes")
            elif encoding not in (None, "", "identity"):
                raise InvalidInput(f"Content-Encoding {encoding!r} is not supported")
            result = await server.infer(
                params["name"],
                params.get("version"),
                body,
                header_length,
                routing_key=routing_key,
                timeout_s=timeout_s,
                request_id=request_id,
            )
        except (InvalidInput, PayloadTooLarge) as exc:
            result = InferenceResult(exc.status_code, orjson.dumps({"error": str(exc)}))
        if result.status == 429 and server.config.shed_delay_ms:
            # Hold the refusal a moment (off by default): clients that ignore Retry-After and
            # retry at once then cannot keep the event loop busy answering 429s.
            await asyncio.sleep(server.config.shed_delay_ms / 1000)
        headers = [_OCTET if result.header_length is not None else _JSON]
        if result.header_length is not None:
            headers.append((b"inference-header-content-length", str(result.header_length).encode()))
        if result.retry_after is not None:
            headers.append((b"retry-after", str(retry_after_seconds(result.retry_after)).encode()))
        await _send(send, result.status, result.body, headers)


class InferenceFastPath:
    """Outermost ASGI wrapper: V2 inference requests skip the framework's middleware and routing.

    ``POST /v2/models/{name}[/versions/{v}]/infer`` goes straight to ``InferEndpoint``, wrapped
    only in the app's own plain-ASGI middleware (``app.user_middleware``: request metrics, body
    limit), skipping routing and the framework's exception handling; everything else reaches
    ``app`` unchanged. Shedding a request with 429 then costs little more than reading its body,
    which keeps the server responsive at many times its capacity. The serving metrics
    (``flywheel_serving_*``) count every request, and the app's request metrics see it under its
    route template.
    """

    def __init__(self, app: Any) -> None:
        self.app = app
        self._infer = InferEndpoint()
        self._stack: Any = None

    def _infer_stack(self) -> Any:
        """``InferEndpoint`` inside the app's user middleware, outermost first (built once, on
        the first request, when the app's middleware list is final)."""
        if self._stack is None:
            stack: Any = self._infer
            for middleware in reversed(list(getattr(self.app, "user_middleware", []) or [])):
                cls, args, kwargs = middleware
                stack = cls(stack, *args, **kwargs)
            self._stack = stack
        return self._stack

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            path: str = scope["path"]
            if path.startswith("/v2/models/") and path.endswith("/infer"):
                parts = path[len("/v2/models/") : -len("/infer")].split("/")
                params = None
                if len(parts) == 1 and parts[0]:
                    params = {"name": parts[0]}
                elif len(parts) == 3 and parts[1] == "versions" and parts[0] and parts[2]:
                    params = {"name": parts[0], "version": parts[2]}
                if params is not None:
                    route = INFER_VERSION_ROUTE if "version" in params else INFER_ROUTE
                    scope = {**scope, "app": self.app, "path_params": params, "route": route}
                    await self._infer_stack()(scope, receive, send)
                    return
        await self.app(scope, receive, send)

    @property
    def state(self) -> Any:
        return self.app.state


def with_inference_fast_path(app: Any) -> Any:
    """Wrap an ASGI app (``create_app(...)``) so that V2 inference skips its middleware stack."""
    return InferenceFastPath(app)


class HealthEndpoint:
    """``GET /v2/health/live`` and ``/v2/health/ready``."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.route = RouteTemplate(f"/v2/health/{kind}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("route", self.route)
        if self.kind == "live":
            await _send(send, 200, b'{"live":true}', [_JSON])
            return
        server = server_for(_project(scope))
        await server.ensure_started()
        if server.ready:
            await _send(send, 200, b'{"ready":true}', [_JSON])
        else:
            await _send(send, 503, b'{"ready":false,"error":"loading models"}', [_JSON])


class ServerMetadataEndpoint:
    """``GET /v2``: server name, version and the protocol extensions it supports."""

    route = RouteTemplate("/v2")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope.setdefault("route", self.route)
        if not await _authorized(scope, send):
            return
        body = orjson.dumps(
            {"name": "flywheel", "version": __version__, "extensions": SERVER_EXTENSIONS}
        )
        await _send(send, 200, body, [_JSON])


# -- OpenAPI description of the plain-ASGI routes (merged into the app's document by flywheel.api)

_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
_TENSOR = {
    "type": "object",
    "required": ["name", "shape", "datatype", "data"],
    "properties": {
        "name": {"type": "string"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
        "datatype": {"type": "string", "enum": list(V2_DTYPES)},
        "parameters": {"type": "object"},
        "data": {"type": "array"},
    },
}
_INFER_REQUEST = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}, "parameters": {"type": "object"}},
            },
        },
    },
}
_INFER_RESPONSE = {
    "type": "object",
    "required": ["model_name", "outputs"],
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": {"type": "object"},
        "outputs": {"type": "array", "items": _TENSOR},
    },
}


def _infer_operation(summary: str, params: list[str]) -> dict[str, Any]:
    return {
        "tags": ["serving"],
        "summary": summary,
        "operationId": "v2_infer" + ("_version" if "version" in params else ""),
        "security": [{"bearer-reader": []}],
        "parameters": [
            *(
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ),
            {
                "name": "Timeout",
                "in": "header",
                "required": False,
                "description": "The caller's deadline: 250ms, 2s, 500us (bare: microseconds); "
                "429 at once when the expected wait exceeds it, 504 once it passes.",
                "schema": {"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,6})?(us|ms|s)?$"},
            },
            {
                "name": "X-Request-Timeout",
                "in": "header",
                "required": False,
                "description": "The caller's deadline as `timeout`, a bare number in seconds "
                "(the smaller of the two applies).",
                "schema": {"type": "string", "pattern": r"^[0-9]{1,9}(\.[0-9]{1,6})?(us|ms|s)?$"},
            },
            {
                "name": "X-Routing-Key",
                "in": "header",
                "required": False,
                "description": "Sticky key for an endpoint's traffic split.",
                "schema": {"type": "string"},
            },
        ],
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": _INFER_REQUEST}},
        },
        "responses": {
            "200": {
                "description": "The outputs (binary tensor data when the request asks for it).",
                "content": {
                    "application/json": {"schema": _INFER_RESPONSE},
                    "application/octet-stream": {},
                },
            },
            "400": {"description": "The request does not match the signature.", "content": _ERROR},
            "404": {"description": "No such model, version or endpoint.", "content": _ERROR},
            "413": {
                "description": "The body is over `serving.max_request_bytes`.",
                "content": _ERROR,
            },
            "429": {
                "description": "The version's queue is full, or the request's expected wait "
                "exceeds its deadline; retry after `Retry-After` seconds.",
                "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "content": _ERROR,
            },
            "503": {"description": "The version could not be loaded.", "content": _ERROR},
            "504": {"description": "The request's deadline passed.", "content": _ERROR},
        },
    }


OPENAPI_PATHS: dict[str, dict[str, Any]] = {
    "/v2/models/{name}/infer": {
        "post": _infer_operation("V2 inference on a model or endpoint", ["name"])
    },
    "/v2/models/{name}/versions/{version}/infer": {
        "post": _infer_operation("V2 inference on one version", ["name", "version"])
    },
}


__all__ = [
    "INFER_ROUTE",
    "INFER_VERSION_ROUTE",
    "OPENAPI_PATHS",
    "SERVER_EXTENSIONS",
    "HealthEndpoint",
    "InferEndpoint",
    "InferenceFastPath",
    "RouteTemplate",
    "ServerMetadataEndpoint",
    "retry_after_seconds",
    "with_inference_fast_path",
]
