"""Plumbing shared by the ``/v1`` routes: the router, auth, bodies, OpenAI-shaped errors,
Server-Sent Events and one request's run through a chat backend."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flywheel.errors import AuthError, FlywheelError
from flywheel.project import Project
from flywheel.serving.llm._errors import (
    EngineFailed,
    EngineOverloaded,
    EngineStopped,
    PromptTooLong,
)
from flywheel.serving.llm._protocol import OpenAIError, from_validation, invalid
from flywheel.serving.llm._service import LLMService, NotAChatModel, Target, llm_service_for

log = logging.getLogger("flywheel.serving.llm")
router = APIRouter(tags=["llm"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad parameter; `error.param` names it."},
    401: {"description": "No or unknown token."},
    404: {"description": "No such model or endpoint (`code: model_not_found`)."},
    429: {"description": "The engine's queue is full; see Retry-After."},
}


# -- plumbing --------------------------------------------------------------------------------------


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


async def authorize(request: Request, project: Project) -> None:
    """A reader token, or an open loopback read (then a non-Flywheel key is ignored)."""
    from flywheel.auth import Role, bearer_token, is_loopback_host, token_store

    try:
        token = bearer_token(request.headers.get("authorization"))
    except AuthError as exc:
        raise OpenAIError(401, str(exc), code="invalid_api_key") from None
    host = request.client.host if request.client else ""
    open_read = not project.config.auth.required and is_loopback_host(host)
    if token is not None and (token.startswith("fw_") or not open_read):
        store = token_store(request)
        principal = store.cached(token) or await asyncio.to_thread(store.verify, token)
        if principal is None:
            raise OpenAIError(
                401,
                "the API key is not a valid Flywheel token; create one with "
                "`flywheel tokens create --role reader`",
                code="invalid_api_key",
            )
        if principal.role < Role.reader:
            raise OpenAIError(403, "this token cannot read", type="permission_error")
        return
    if not open_read:
        raise OpenAIError(
            401,
            "this API needs a reader token: pass it as the client's api_key "
            "(Authorization: Bearer <token>)",
            code="invalid_api_key",
        )


async def parse_body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise invalid(None, f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise invalid(None, "the body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None


def as_openai(exc: BaseException, param: str | None = None) -> OpenAIError:
    """Any error from resolving or generating as an ``OpenAIError``."""
    if isinstance(exc, OpenAIError):
        return exc
    name = type(exc).__name__
    if isinstance(exc, PromptTooLong):
        return OpenAIError(400, str(exc), param=param, code="context_length_exceeded")
    if isinstance(exc, EngineOverloaded):
        return OpenAIError(
            429,
            str(exc),
            type="rate_limit_error",
            code="rate_limit_exceeded",
            retry_after=exc.retry_after_s,
        )
    if isinstance(exc, EngineStopped):
        return OpenAIError(503, str(exc), type="server_error", code="engine_stopped")
    if isinstance(exc, EngineFailed):
        return OpenAIError(500, f"the engine failed: {exc}", type="server_error")
    if isinstance(exc, NotAChatModel):
        return OpenAIError(400, str(exc), param="model", code="model_not_supported")
    if isinstance(exc, AuthError):
        return OpenAIError(exc.status_code, str(exc), code="invalid_api_key")
    if isinstance(exc, FlywheelError):
        status = exc.status_code
        if status == 404:
            return OpenAIError(404, str(exc), param="model", code="model_not_found")
        if status == 429:
            retry = float(getattr(exc, "retry_after", 1.0) or 1.0)
            return OpenAIError(
                429,
                str(exc),
                type="rate_limit_error",
                code="rate_limit_exceeded",
                retry_after=retry,
            )
        kind = "server_error" if status >= 500 else "invalid_request_error"
        return OpenAIError(status, str(exc), type=kind, param=None if status >= 500 else param)
    if isinstance(exc, ValueError):
        return OpenAIError(400, str(exc), param=param)
    log.exception("unexpected error in /v1", exc_info=exc)
    return OpenAIError(500, f"internal error ({name}); see the server log", type="server_error")


def service_of(request: Request) -> tuple[Project, LLMService]:
    project: Project = request.app.state.project
    return project, llm_service_for(project)


def routing_key(request: Request, user: str | None) -> str | None:
    return request.headers.get("x-routing-key") or user or None


class EventStream(Response):
    """Server-Sent Events from an async generator of ``bytes``.

    Listens for the client's disconnect while streaming (also while no event is due, e.g.
    during a long prefill) and always closes the generator, so its ``finally`` (which aborts
    the engine request) runs at once.
    """

    media_type = "text/event-stream"

    def __init__(
        self, events: Any, headers: dict[str, str] | None = None, cleanup: Any = None
    ) -> None:
        self.events = events
        self.cleanup = cleanup  # awaited last: frees what a never-started generator holds
        self.status_code = 200
        self.background = None
        self.init_headers({"cache-control": "no-cache", **(headers or {})})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stream() -> None:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})

        async def listen() -> None:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return

        streamer = asyncio.ensure_future(stream())
        listener = asyncio.ensure_future(listen())
        try:
            await asyncio.wait({streamer, listener}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (listener, streamer):
                task.cancel()
            for task in (listener, streamer):
                with contextlib.suppress(asyncio.CancelledError, OSError, Exception):
                    await task
            await self.events.aclose()
            if self.cleanup is not None:
                await self.cleanup()


def sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


DONE = b"data: [DONE]\n\n"


# -- generation shared by chat and completions -----------------------------------------------------


def sampling_params(req: Any, max_tokens: int, logprobs: int | None) -> Any:
    from flywheel.serving.llm._types import SamplingParams

    seed = req.seed
    if seed is not None and seed < 0:
        seed = seed % (2**63)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if req.temperature is None else float(req.temperature),
        top_p=1.0 if req.top_p is None else float(req.top_p),
        top_k=req.top_k or 0,
        seed=seed,
        stop=req.stop_list(),
        logprobs=logprobs,
    )


def max_tokens_for(target: Target, prompt_len: int, asked: int | None, param: str) -> int:
    room = target.chat.backend.max_model_len - prompt_len
    if room < 1:
        raise OpenAIError(
            400,
            f"the prompt is {prompt_len} tokens; this model's context is "
            f"{target.chat.backend.max_model_len} tokens",
            param=param,
            code="context_length_exceeded",
        )
    return room if asked is None else asked


class Run:
    """One request's event stream from the backend, with what the response needs."""

    def __init__(self, target: Target, events: Any) -> None:
        self.target = target
        self.events = events
        self.final: Any = None
        self.text: list[str] = []

    @classmethod
    async def start(
        cls,
        target: Target,
        prompt_ids: list[int],
        params: Any,
        constraint: Any,
        request_id: str,
        param: str,
    ) -> tuple[Run, Any]:
        """Start generating; errors the engine raises before the first event are raised here."""
        events = target.chat.backend.generate(prompt_ids, params, constraint, request_id)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            raise OpenAIError(500, "the model produced no event", type="server_error") from None
        except BaseException as exc:
            await events.aclose()
            raise as_openai(exc, param) from exc
        return cls(target, events), first

    async def all_events(self, first: Any) -> AsyncIterator[Any]:
        event = first
        while True:
            self.text.append(event.text)
            if event.finish_reason is not None:
                self.final = event
                self.target.chat.gauges.finished(event)
            yield event
            if event.finish_reason is not None:
                return
            try:
                event = await self.events.__anext__()
            except StopAsyncIteration:
                return

    async def close(self) -> None:
        await self.events.aclose()


def usage_of(final: Any) -> dict[str, Any]:
    if final is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": final.cached_prompt_tokens},
    }


def token_entry(backend: Any, token_id: int, logprob: float) -> dict[str, Any]:
    text = backend.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def chat_logprobs(backend: Any, event: Any, top_n: int) -> list[dict[str, Any]]:
    if event.token_id is None or event.logprob is None:
        return []
    entry = token_entry(backend, event.token_id, event.logprob)
    entry["top_logprobs"] = [
        token_entry(backend, tid, lp) for tid, lp in (event.top_logprobs or [])[:top_n]
    ]
    return [entry]


def check_not_aborted(final: Any) -> None:
    if final is not None and final.finish_reason == "abort":
        raise OpenAIError(
            503,
            "the engine stopped before the answer was complete",
            type="server_error",
            code="engine_stopped",
        )
