"""The OpenAI-compatible API under ``/v1``: models, chat completions, completions, embeddings.

Every route answers errors in OpenAI's shape (``_protocol.OpenAIError``). Calls need a
``reader`` token (``Authorization: Bearer fw_...``; the OpenAI client's ``api_key``), except
from loopback when ``auth.required`` is false, where a non-Flywheel key (``"unused"``) is
ignored. Streams are Server-Sent Events ending with ``data: [DONE]``; an error after the first
byte is one ``data: {"error": ...}`` event and the stream ends. A client that goes away
mid-stream aborts its request in the engine (its KV blocks are freed at once). Each chat and
text completion request is one ``SERVER`` span under the GenAI conventions (``_spans``).

This module holds ``/v1/models`` and ``/v1/chat/completions``; ``/v1/completions`` and
``/v1/embeddings`` live in ``_completions`` and the shared plumbing in ``_http``, all on the one
``router``. Only these paths are claimed (``/v1/traces`` and others belong to other systems).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from starlette.responses import Response

from flywheel.serving.llm import _completions  # noqa: F401  (registers its routes)
from flywheel.serving.llm._chat import (
    ToolCall,
    ToolCallStream,
    normalize_messages,
    split_tool_calls,
)
from flywheel.serving.llm._http import (
    DONE,
    ERRORS,
    EventStream,
    Run,
    as_openai,
    authorize,
    chat_logprobs,
    check_not_aborted,
    json_response,
    max_tokens_for,
    parse_body,
    router,
    routing_key,
    sampling_params,
    service_of,
    sse,
    usage_of,
)
from flywheel.serving.llm._protocol import ChatCompletionRequest, OpenAIError, invalid
from flywheel.serving.llm._service import LLMService, Target
from flywheel.serving.llm._spans import GenerationSpan

# -- /v1/models ------------------------------------------------------------------------------------


@router.get("/v1/models", responses=ERRORS)
async def list_models(request: Request) -> Response:
    """Chat models (by name and ``name@stage``) and the endpoints that serve them."""
    project, service = service_of(request)
    try:
        await authorize(request, project)
        data = await asyncio.to_thread(service.list_models)
    except Exception as exc:
        return as_openai(exc).to_response()
    return json_response({"object": "list", "data": data})


@router.get("/v1/models/{model:path}", responses=ERRORS)
async def retrieve_model(model: str, request: Request) -> Response:
    """One entry of ``/v1/models``."""
    project, service = service_of(request)
    try:
        await authorize(request, project)
        data = await asyncio.to_thread(service.list_models)
    except Exception as exc:
        return as_openai(exc).to_response()
    for entry in data:
        if entry["id"] == model:
            return json_response(entry)
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


@router.post("/v1/chat/completions", responses=ERRORS)
async def chat_completions(request: Request) -> Response:
    """OpenAI chat completions (streamed or not), tools, structured output, logprobs."""
    started = time.perf_counter()
    project, service = service_of(request)
    target: Target | None = None
    span = GenerationSpan("chat", request.headers)
    try:
        await authorize(request, project)
        req: ChatCompletionRequest = await parse_body(request, ChatCompletionRequest)
        span.request(req)
        req.refuse_unsupported()
        target = await service.resolve(req.model, routing_key(request, req.user))
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
        max_tokens = max_tokens_for(target, len(prompt_ids), req.token_limit(), "max_tokens")
        top_n = req.top_logprobs or 0
        params = sampling_params(req, max_tokens, top_n if req.logprobs else None)
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        span.request(req, params)
        span.target(target, request_id)
        run, first = await Run.start(target, prompt_ids, params, constraint, request_id, "messages")
        span.first_token()
    except Exception as exc:
        err = as_openai(exc, "messages")
        if target is not None:
            service.record(target, err.status, time.perf_counter() - started)
        span.end(err.status, err)
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
            span,
        )
        return EventStream(events, headers, cleanup=run.close)
    status, error = 500, None
    try:
        async with service.using(target.chat):
            logprobs: list[dict[str, Any]] = []
            async for event in run.all_events(first):
                if req.logprobs:
                    logprobs.extend(chat_logprobs(target.chat.backend, event, top_n))
        check_not_aborted(run.final)
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
            "usage": usage_of(run.final),
        }
        status = 200
        span.usage([run.final], [finish])
        elapsed = time.perf_counter() - started
        service.log_exchange(target, prompt_text, text, elapsed, request_id)
        return json_response(body, headers=headers)
    except Exception as exc:
        error = as_openai(exc)
        status = error.status
        return error.to_response()
    finally:
        await run.close()
        service.record(target, status, time.perf_counter() - started)
        span.end(status, error)


async def _chat_stream(
    service: LLMService,
    target: Target,
    run: Run,
    first: Any,
    head: dict[str, Any],
    mode: str,
    req: ChatCompletionRequest,
    top_n: int,
    include_usage: bool,
    started: float,
    prompt_text: str,
    constrained: bool,
    span: GenerationSpan,
) -> AsyncIterator[bytes]:
    """The SSE chunks of one streamed chat completion."""
    base = {**head, "object": "chat.completion.chunk"}
    extra = {"usage": None} if include_usage else {}
    backend = target.chat.backend
    parser = ToolCallStream() if mode != "none" else None
    status = 499  # until it ends one way or the other: the client went away
    error = None

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
        return sse({**base, "choices": [choice], **extra})

    try:
        async with service.using(target.chat):
            yield chunk({"role": "assistant", "content": ""})
            n_calls = 0
            async for event in run.all_events(first):
                lp = chat_logprobs(backend, event, top_n) if req.logprobs else None
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
            check_not_aborted(run.final)
            full = "".join(run.text)
            calls_made = parser.calls if parser is not None else []
            finish = run.final.finish_reason if run.final is not None else "stop"
            content = split_tool_calls(full)[0] if calls_made else full
            _check_forced(req, mode, content, calls_made, constrained, finish)
            if calls_made and finish == "stop":
                finish = "tool_calls"
            span.usage([run.final], [finish])
            yield chunk({}, None, finish)
            if include_usage:
                yield sse({**base, "choices": [], "usage": usage_of(run.final)})
            yield DONE
            status = 200
            service.log_exchange(
                target, prompt_text, full, time.perf_counter() - started, head["id"]
            )
    except Exception as exc:
        error = as_openai(exc)
        status = error.status
        yield sse(error.body())
    finally:
        await run.close()
        service.record(target, status, time.perf_counter() - started)
        span.end(status, error)


__all__ = ["EventStream", "router"]
