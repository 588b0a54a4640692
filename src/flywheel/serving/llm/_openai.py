"""The OpenAI-compatible API under ``/v1``: models, chat completions, completions, embeddings.

Every route answers errors in OpenAI's shape (``_protocol.OpenAIError``). Calls need a
``reader`` token (``Authorization: Bearer fw_...``; the OpenAI client's ``api_key``), except
from loopback when ``auth.required`` is false, where a non-Flywheel key (``"unused"``) is
ignored. Streams are Server-Sent Events ending with ``data: [DONE]``; an error after the first
byte is one ``data: {"error": ...}`` event and the stream ends. A client that goes away
mid-stream aborts its request in the engine (its KV blocks are freed at once).

Only these paths are claimed (``/v1/traces`` and others belong to other systems).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flywheel.errors import AuthError, FlywheelError
from flywheel.project import Project
from flywheel.serving.llm._chat import (
    ToolCall,
    ToolCallStream,
    normalize_messages,
    split_tool_calls,
)
from flywheel.serving.llm._errors import (
    EngineFailed,
    EngineOverloaded,
    EngineStopped,
    PromptTooLong,
)
from flywheel.serving.llm._protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    OpenAIError,
    from_validation,
    invalid,
)
from flywheel.serving.llm._service import LLMService, NotAChatModel, Target, llm_service_for

log = logging.getLogger("flywheel.serving.llm")
router = APIRouter(tags=["llm"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad parameter; `error.param` names it."},
    401: {"description": "No or unknown token."},
    404: {"description": "No such model or endpoint (`code: model_not_found`)."},
    429: {"description": "The engine's queue is full; see Retry-After."},
}


# -- plumbing --------------------------------------------------------------------------------------


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


async def _authorize(request: Request, project: Project) -> None:
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


async def _body(request: Request, model: type[BaseModel]) -> Any:
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


def _as_openai(exc: BaseException, param: str | None = None) -> OpenAIError:
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


def _service(request: Request) -> tuple[Project, LLMService]:
    project: Project = request.app.state.project
    return project, llm_service_for(project)


def _routing_key(request: Request, user: str | None) -> str | None:
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


def _sse(data: Any) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


# -- generation shared by chat and completions -----------------------------------------------------


def _sampling(req: Any, max_tokens: int, logprobs: int | None) -> Any:
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


def _max_tokens(target: Target, prompt_len: int, asked: int | None, param: str) -> int:
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


class _Run:
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
    ) -> tuple[_Run, Any]:
        """Start generating; errors the engine raises before the first event are raised here."""
        events = target.chat.backend.generate(prompt_ids, params, constraint, request_id)
        try:
            first = await events.__anext__()
        except StopAsyncIteration:
            raise OpenAIError(500, "the model produced no event", type="server_error") from None
        except BaseException as exc:
            await events.aclose()
            raise _as_openai(exc, param) from exc
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


def _usage(final: Any) -> dict[str, Any]:
    if final is None:
        return {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": final.cached_prompt_tokens},
    }


def _token_entry(backend: Any, token_id: int, logprob: float) -> dict[str, Any]:
    text = backend.decode([token_id])
    return {"token": text, "logprob": logprob, "bytes": list(text.encode())}


def _chat_logprobs(backend: Any, event: Any, top_n: int) -> list[dict[str, Any]]:
    if event.token_id is None or event.logprob is None:
        return []
    entry = _token_entry(backend, event.token_id, event.logprob)
    entry["top_logprobs"] = [
        _token_entry(backend, tid, lp) for tid, lp in (event.top_logprobs or [])[:top_n]
    ]
    return [entry]


def _abort_reason(final: Any) -> None:
    if final is not None and final.finish_reason == "abort":
        raise OpenAIError(
            503,
            "the engine stopped before the answer was complete",
            type="server_error",
            code="engine_stopped",
        )


# -- /v1/models ------------------------------------------------------------------------------------


@router.get("/v1/models", responses=_ERRORS)
async def list_models(request: Request) -> Response:
    """Chat models (by name and ``name@stage``) and the endpoints that serve them."""
    project, service = _service(request)
    try:
        await _authorize(request, project)
        data = await asyncio.to_thread(service.list_models)
    except Exception as exc:
        return _as_openai(exc).to_response()
    return _json({"object": "list", "data": data})


@router.get("/v1/models/{model:path}", responses=_ERRORS)
async def retrieve_model(model: str, request: Request) -> Response:
    """One entry of ``/v1/models``."""
    project, service = _service(request)
    try:
        await _authorize(request, project)
        data = await asyncio.to_thread(service.list_models)
    except Exception as exc:
        return _as_openai(exc).to_response()
    for entry in data:
        if entry["id"] == model:
            return _json(entry)
    return OpenAIError(
        404, f"model {model!r} is not served here", param="model", code="model_not_found"
    ).to_response()


# -- /v1/chat/completions --------------------------------------------------------------------------


def _tool_setup(
    req: ChatCompletionRequest, target: Target
) -> tuple[list[dict[str, Any]] | None, str, Any]:
    """(tools for the template, mode, constraint) for the request's tools and formats."""
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    choice = req.tool_choice
    mode = "none"
    forced: list[dict[str, Any]] = []
    if tools:
        if choice is None or choice == "auto":
            mode = "auto"
        elif choice == "required":
            mode, forced = "required", tools
        elif choice == "none":
            mode = "none"
        else:
            name = choice.function.name
            forced = [t for t in tools if t["function"]["name"] == name]
            if not forced:
                raise invalid("tool_choice", f"tool_choice names {name!r}, which is not in tools")
            mode = "named"
    elif choice not in (None, "none", "auto"):
        raise invalid("tool_choice", "tool_choice needs tools")
    grammars = target.chat.grammars()
    constraint = None
    if forced:
        if grammars is not None:
            try:
                constraint = grammars.constraint(grammars.tool_call(forced))
            except ValueError as exc:
                raise invalid("tools", str(exc)) from None
    elif req.response_format is not None and req.response_format.type != "text":
        fmt = req.response_format
        if fmt.type == "json_schema" and fmt.json_schema is None:
            raise invalid("response_format.json_schema", "json_schema is required for this type")
        if grammars is not None:
            try:
                if fmt.type == "json_object":
                    compiled = grammars.json_object()
                else:
                    compiled = grammars.json_schema(fmt.json_schema.schema_)  # type: ignore[union-attr]
            except ValueError as exc:
                raise invalid("response_format.json_schema.schema", str(exc)) from None
            constraint = grammars.constraint(compiled)
    # "none" still shows the tools (the conversation may hold earlier calls); nothing is parsed.
    return (tools or None), mode, constraint


def _check_forced(
    req: ChatCompletionRequest,
    mode: str,
    content: str,
    calls: list[ToolCall],
    constrained: bool,
    finish: str | None,
) -> None:
    """A backend that was not constrained must still have produced what was asked for."""
    if constrained or finish == "length":
        return  # the grammar guaranteed it, or the answer was cut (finish_reason says so)
    if mode in ("required", "named") and not calls:
        raise OpenAIError(
            500, "the model did not produce the required tool call", type="server_error"
        )
    fmt = req.response_format
    if mode in ("none", "auto") and fmt is not None and fmt.type != "text" and not calls:
        try:
            json.loads(content)
        except json.JSONDecodeError:
            raise OpenAIError(
                500, "the model's answer is not valid JSON", type="server_error"
            ) from None


@router.post("/v1/chat/completions", responses=_ERRORS)
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions (streamed or not), tools, structured output, logprobs."""
    started = time.perf_counter()
    project, service = _service(request)
    target: Target | None = None
    try:
        await _authorize(request, project)
        req: ChatCompletionRequest = await _body(request, ChatCompletionRequest)
        req.refuse_unsupported()
        target = await service.resolve(req.model, _routing_key(request, req.user))
        try:
            messages = normalize_messages(req.messages)
        except ValueError as exc:
            raise invalid("messages", str(exc)) from None
        tools, mode, constraint = _tool_setup(req, target)
        try:
            prompt_ids = target.chat.backend.render_chat(messages, tools)
        except ValueError as exc:
            raise invalid("messages", str(exc)) from None
        except Exception as exc:  # a template that cannot render these messages
            raise invalid("messages", f"the chat template cannot render them: {exc}") from None
        max_tokens = _max_tokens(target, len(prompt_ids), req.token_limit(), "max_tokens")
        top_n = req.top_logprobs or 0
        params = _sampling(req, max_tokens, top_n if req.logprobs else None)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        run, first = await _Run.start(
            target, prompt_ids, params, constraint, request_id, "messages"
        )
    except Exception as exc:
        err = _as_openai(exc, "messages")
        if target is not None:
            service.record(target, err.status, time.perf_counter() - started)
        return err.to_response()
    head = {
        "id": request_id,
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": target.chat.label,
    }
    headers = {"x-flywheel-model-version": f"{target.chat.model}/{target.chat.version}"}
    prompt_text = json.dumps(messages, ensure_ascii=False)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        events = _chat_stream(
            service,
            target,
            run,
            first,
            head,
            mode,
            req,
            top_n,
            include_usage,
            started,
            prompt_text,
            constraint is not None,
        )
        return EventStream(events, headers, cleanup=run.close)
    status = 500
    try:
        async with service.using(target.chat):
            logprobs: list[dict[str, Any]] = []
            async for event in run.all_events(first):
                if req.logprobs:
                    logprobs.extend(_chat_logprobs(target.chat.backend, event, top_n))
        _abort_reason(run.final)
        text = "".join(run.text)
        content, calls = split_tool_calls(text) if mode != "none" else (text, [])
        finish = run.final.finish_reason if run.final is not None else "stop"
        _check_forced(req, mode, content, calls, constraint is not None, finish)
        if calls and finish == "stop":
            finish = "tool_calls"
        message: dict[str, Any] = {"role": "assistant", "content": content or None}
        if calls:
            message["tool_calls"] = [c.to_openai() for c in calls]
        elif not content:
            message["content"] = ""
        body = {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": {"content": logprobs} if req.logprobs else None,
                    "finish_reason": finish,
                }
            ],
            "usage": _usage(run.final),
        }
        status = 200
        elapsed = time.perf_counter() - started
        service.log_exchange(target, prompt_text, text, elapsed, request_id)
        return _json(body, headers=headers)
    except Exception as exc:
        err = _as_openai(exc)
        status = err.status
        return err.to_response()
    finally:
        await run.close()
        service.record(target, status, time.perf_counter() - started)


async def _chat_stream(
    service: LLMService,
    target: Target,
    run: _Run,
    first: Any,
    head: dict[str, Any],
    mode: str,
    req: ChatCompletionRequest,
    top_n: int,
    include_usage: bool,
    started: float,
    prompt_text: str,
    constrained: bool,
) -> AsyncIterator[bytes]:
    """The SSE chunks of one streamed chat completion."""
    base = {**head, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}
    backend = target.chat.backend
    parser = ToolCallStream() if mode != "none" else None
    status = 499  # until it ends one way or the other: the client went away

    def chunk(
        delta: dict[str, Any],
        logprobs: list[dict[str, Any]] | None = None,
        finish: str | None = None,
    ) -> bytes:
        choice = {
            "index": 0,
            "delta": delta,
            "logprobs": {"content": logprobs} if logprobs is not None else None,
            "finish_reason": finish,
        }
        return _sse({**base, "choices": [choice], **extra})

    try:
        async with service.using(target.chat):
            yield chunk({"role": "assistant", "content": ""})
            n_calls = 0
            async for event in run.all_events(first):
                lp = _chat_logprobs(backend, event, top_n) if req.logprobs else None
                text = event.text
                if parser is not None:
                    text, calls = parser.feed(text)
                    for call in calls:
                        yield chunk({"tool_calls": [call.to_openai(n_calls)]})
                        n_calls += 1
                if text or lp:
                    yield chunk({"content": text} if text else {}, lp)
            rest = parser.finish() if parser is not None else ""
            if rest:
                yield chunk({"content": rest})
            _abort_reason(run.final)
            full = "".join(run.text)
            calls_made = parser.calls if parser is not None else []
            finish = run.final.finish_reason if run.final is not None else "stop"
            content = split_tool_calls(full)[0] if calls_made else full
            _check_forced(req, mode, content, calls_made, constrained, finish)
            if calls_made and finish == "stop":
                finish = "tool_calls"
            yield chunk({}, None, finish)
            if include_usage:
                yield _sse({**base, "choices": [], "usage": _usage(run.final)})
            yield _DONE
            status = 200
            service.log_exchange(
                target, prompt_text, full, time.perf_counter() - started, head["id"]
            )
    except Exception as exc:
        err = _as_openai(exc)
        status = err.status
        yield _sse(err.body())
    finally:
        await run.close()
        service.record(target, status, time.perf_counter() - started)


# -- /v1/completions -------------------------------------------------------------------------------


def _prompts(req: CompletionRequest, target: Target) -> list[list[int]]:
    prompt = req.prompt
    backend = target.chat.backend
    if isinstance(prompt, str):
        prompts = [backend.encode(prompt)]
    elif prompt and all(isinstance(p, int) for p in prompt):
        prompts = [list(prompt)]  # type: ignore[arg-type]
    elif prompt and all(isinstance(p, str) for p in prompt):
        prompts = [backend.encode(p) for p in prompt]  # type: ignore[arg-type]
    elif prompt and all(isinstance(p, list) for p in prompt):
        prompts = [list(p) for p in prompt]  # type: ignore[arg-type]
    else:
        raise invalid("prompt", "prompt must be a string, a list of strings or token ids")
    if len(prompts) > 64:
        raise invalid("prompt", "at most 64 prompts per request")
    for i, ids in enumerate(prompts):
        if not ids:
            raise invalid("prompt", f"prompt {i} is empty")
        if any(t < 0 or t >= backend.vocab_size for t in ids):
            raise invalid("prompt", f"prompt {i} has a token id outside [0, {backend.vocab_size})")
    return prompts


def _completion_logprobs(backend: Any, events: list[Any], top_n: int) -> dict[str, Any]:
    tokens: list[str] = []
    token_logprobs: list[float] = []
    top: list[dict[str, float]] = []
    offsets: list[int] = []
    offset = 0
    for event in events:
        if event.token_id is None or event.logprob is None:
            continue
        text = backend.decode([event.token_id])
        tokens.append(text)
        token_logprobs.append(event.logprob)
        top.append({backend.decode([t]): lp for t, lp in (event.top_logprobs or [])[:top_n]})
        offsets.append(offset)
        offset += len(text)
    return {
        "tokens": tokens,
        "token_logprobs": token_logprobs,
        "top_logprobs": top,
        "text_offset": offsets,
    }


@router.post("/v1/completions", responses=_ERRORS)
async def completions(request: Request) -> Response:
    """OpenAI (legacy) text completions, streamed or not; several prompts give several choices."""
    started = time.perf_counter()
    project, service = _service(request)
    target: Target | None = None
    runs: list[tuple[_Run, Any]] = []
    try:
        await _authorize(request, project)
        req: CompletionRequest = await _body(request, CompletionRequest)
        req.refuse_unsupported()
        target = await service.resolve(req.model, _routing_key(request, req.user))
        prompts = _prompts(req, target)
        constraint_for = _completion_constraint(req, target)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        for i, ids in enumerate(prompts):
            max_tokens = _max_tokens(target, len(ids), req.max_tokens, "max_tokens")
            params = _sampling(req, max_tokens, req.logprobs)
            runs.append(
                await _Run.start(
                    target, ids, params, constraint_for(), f"{request_id}-{i}", "prompt"
                )
            )
    except Exception as exc:
        for run, _ in runs:
            await run.close()
        err = _as_openai(exc, "prompt")
        if target is not None:
            service.record(target, err.status, time.perf_counter() - started)
        return err.to_response()
    head = {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": req.model,
        "system_fingerprint": target.chat.label,
    }
    headers = {"x-flywheel-model-version": f"{target.chat.model}/{target.chat.version}"}
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return EventStream(
            _completion_stream(service, target, runs, head, req, include_usage, started),
            headers,
            cleanup=lambda: asyncio.gather(*(run.close() for run, _ in runs)),
        )
    status = 500
    try:
        async with service.using(target.chat):
            results = await asyncio.gather(*(_collect(run, first) for run, first in runs))
        choices = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for index, ((run, _), events) in enumerate(zip(runs, results, strict=True)):
            _abort_reason(run.final)
            u = _usage(run.final)
            for key in usage:
                usage[key] += u[key]
            choices.append(
                {
                    "index": index,
                    "text": "".join(run.text),
                    "logprobs": None
                    if req.logprobs is None
                    else _completion_logprobs(target.chat.backend, events, req.logprobs),
                    "finish_reason": run.final.finish_reason if run.final else "stop",
                }
            )
        status = 200
        return _json({**head, "choices": choices, "usage": usage}, headers=headers)
    except Exception as exc:
        err = _as_openai(exc)
        status = err.status
        return err.to_response()
    finally:
        for run, _ in runs:
            await run.close()
        service.record(target, status, time.perf_counter() - started)


def _completion_constraint(req: CompletionRequest, target: Target) -> Any:
    fmt = req.response_format
    if fmt is None or fmt.type == "text":
        return lambda: None
    grammars = target.chat.grammars()
    if grammars is None:
        raise invalid("response_format", "this model cannot be constrained")
    try:
        if fmt.type == "json_object":
            compiled = grammars.json_object()
        elif fmt.json_schema is None:
            raise invalid("response_format.json_schema", "json_schema is required for this type")
        else:
            compiled = grammars.json_schema(fmt.json_schema.schema_)
    except ValueError as exc:
        raise invalid("response_format.json_schema.schema", str(exc)) from None
    return lambda: grammars.constraint(compiled)


async def _collect(run: _Run, first: Any) -> list[Any]:
    return [event async for event in run.all_events(first)]


async def _completion_stream(
    service: LLMService,
    target: Target,
    runs: list[tuple[_Run, Any]],
    head: dict[str, Any],
    req: CompletionRequest,
    include_usage: bool,
    started: float,
) -> AsyncIterator[bytes]:
    extra = {"usage": None} if include_usage else {}
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    status = 499

    async def pump(index: int, run: _Run, first: Any) -> None:
        try:
            async for event in run.all_events(first):
                await queue.put((index, event))
        except Exception as exc:
            await queue.put((index, exc))
        finally:
            await queue.put((index, None))

    tasks = [asyncio.ensure_future(pump(i, run, first)) for i, (run, first) in enumerate(runs)]
    try:
        async with service.using(target.chat):
            remaining = len(tasks)
            while remaining:
                index, item = await queue.get()
                if item is None:
                    remaining -= 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                _abort_reason(item if item.finish_reason else None)
                logprobs = None
                if req.logprobs is not None:
                    logprobs = _completion_logprobs(target.chat.backend, [item], req.logprobs)
                if item.text or item.finish_reason or logprobs:
                    choice = {
                        "index": index,
                        "text": item.text,
                        "logprobs": logprobs,
                        "finish_reason": item.finish_reason,
                    }
                    yield _sse({**head, "choices": [choice], **extra})
            if include_usage:
                usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
                for run, _ in runs:
                    u = _usage(run.final)
                    for key in usage:
                        usage[key] += u[key]
                yield _sse({**head, "choices": [], "usage": usage})
            yield _DONE
            status = 200
    except Exception as exc:
        err = _as_openai(exc)
        status = err.status
        yield _sse(err.body())
    finally:
        for task in tasks:
            task.cancel()
        for run, _ in runs:
            await run.close()
        service.record(target, status, time.perf_counter() - started)


# -- /v1/embeddings --------------------------------------------------------------------------------


@router.post("/v1/embeddings", responses=_ERRORS)
async def embeddings(request: Request) -> Response:
    """Mean-pooled, L2-normalised embeddings; ``dimensions`` keeps the first N (renormalised);
    ``encoding_format: base64`` is little-endian float32."""
    started = time.perf_counter()
    project, service = _service(request)
    target: Target | None = None
    status = 500
    try:
        await _authorize(request, project)
        req: EmbeddingRequest = await _body(request, EmbeddingRequest)
        target = await service.resolve(req.model, _routing_key(request, req.user))
        backend: Any = target.chat.backend
        if not hasattr(backend, "embed"):
            raise invalid("model", f"model {req.model!r} does not embed", "model_not_supported")
        size = int(backend.embedding_size)
        if req.dimensions is not None and req.dimensions > size:
            raise invalid("dimensions", f"dimensions must be at most {size} for this model")
        inputs = req.input
        if isinstance(inputs, str):
            batch = [backend.encode(inputs)]
        elif inputs and all(isinstance(x, int) for x in inputs):
            batch = [list(inputs)]
        elif inputs and all(isinstance(x, str) for x in inputs):
            batch = [backend.encode(x) for x in inputs]
        elif inputs and all(isinstance(x, list) for x in inputs):
            batch = [list(x) for x in inputs]  # type: ignore[arg-type]
        else:
            raise invalid("input", "input must be a string, a list of strings or token ids")
        if len(batch) > 2048:
            raise invalid("input", "at most 2048 inputs per request")
        for i, ids in enumerate(batch):
            if not ids:
                raise invalid("input", f"input {i} is empty")
            if len(ids) > backend.max_model_len:
                raise invalid(
                    "input",
                    f"input {i} is longer than the model's context",
                    "context_length_exceeded",
                )
            if any(t < 0 or t >= backend.vocab_size for t in ids):
                raise invalid("input", f"input {i} has a token id outside the vocabulary")
        async with service.using(target.chat):
            vectors = np.asarray(await backend.embed(batch), dtype=np.float32)
        if req.dimensions is not None:
            vectors = vectors[:, : req.dimensions]
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        vectors = (vectors / np.maximum(norms, 1e-12)).astype("<f4")
        data = []
        for i, vec in enumerate(vectors):
            value: Any = (
                base64.b64encode(vec.tobytes()).decode()
                if req.encoding_format == "base64"
                else vec.tolist()
            )
            data.append({"object": "embedding", "index": i, "embedding": value})
        tokens = sum(len(ids) for ids in batch)
        status = 200
        return _json(
            {
                "object": "list",
                "data": data,
                "model": req.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
    except Exception as exc:
        err = _as_openai(exc, "input")
        status = err.status
        return err.to_response()
    finally:
        if target is not None:
            service.record(target, status, time.perf_counter() - started)


__all__ = ["EventStream", "router"]
