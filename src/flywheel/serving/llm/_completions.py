"""``POST /v1/completions`` (legacy text completions, streamed or not) and
``POST /v1/embeddings``; registered on the ``/v1`` router that ``_openai`` exports."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from fastapi import Request
from starlette.responses import Response

from flywheel.serving.llm._http import (
    DONE,
    ERRORS,
    EventStream,
    Run,
    as_openai,
    authorize,
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
from flywheel.serving.llm._protocol import CompletionRequest, EmbeddingRequest, invalid
from flywheel.serving.llm._service import LLMService, Target
from flywheel.serving.llm._spans import GenerationSpan

# -- /v1/completions -------------------------------------------------------------------------------


def _token_batch(value: Any, backend: Any, field: str, limit: int) -> list[list[int]]:
    """OpenAI's text-or-tokens field (a string, token ids, strings, or lists of token ids) as
    one token list per item; at most ``limit`` items, none empty (errors name ``field``)."""
    if isinstance(value, str):
        batch = [backend.encode(value)]
    elif value and all(isinstance(x, int) for x in value):
        batch = [list(value)]
    elif value and all(isinstance(x, str) for x in value):
        batch = [backend.encode(x) for x in value]
    elif value and all(isinstance(x, list) for x in value):
        batch = [list(x) for x in value]
    else:
        raise invalid(field, f"{field} must be a string, a list of strings or token ids")
    if len(batch) > limit:
        raise invalid(field, f"at most {limit} {field}s per request")
    for i, ids in enumerate(batch):
        if not ids:
            raise invalid(field, f"{field} {i} is empty")
    return batch


def _prompts(req: CompletionRequest, target: Target) -> list[list[int]]:
    backend = target.chat.backend
    prompts = _token_batch(req.prompt, backend, "prompt", 64)
    for i, ids in enumerate(prompts):
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


@router.post("/v1/completions", responses=ERRORS)
async def completions(request: Request) -> Response:
    """OpenAI (legacy) text completions, streamed or not; several prompts give several choices."""
    started = time.perf_counter()
    project, service = service_of(request)
    target: Target | None = None
    runs: list[tuple[Run, Any]] = []
    span = GenerationSpan("text_completion", request.headers)
    try:
        await authorize(request, project)
        req: CompletionRequest = await parse_body(request, CompletionRequest)
        span.request(req)
        req.refuse_unsupported()
        target = await service.resolve(req.model, routing_key(request, req.user))
        prompts = _prompts(req, target)
        constraint_for = _completion_constraint(req, target)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        span.target(target, request_id)
        for i, ids in enumerate(prompts):
            max_tokens = max_tokens_for(target, len(ids), req.max_tokens, "max_tokens")
            params = sampling_params(req, max_tokens, req.logprobs)
            span.request(req, params)
            runs.append(
                await Run.start(
                    target, ids, params, constraint_for(), f"{request_id}-{i}", "prompt"
                )
            )
        span.first_token()
    except Exception as exc:
        for run, _ in runs:
            await run.close()
        err = as_openai(exc, "prompt")
        if target is not None:
            service.record(target, err.status, time.perf_counter() - started)
        span.end(err.status, err)
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
            _completion_stream(service, target, runs, head, req, include_usage, started, span),
            headers,
            cleanup=lambda: asyncio.gather(*(run.close() for run, _ in runs)),
        )
    status, error = 500, None
    try:
        async with service.using(target.chat):
            results = await asyncio.gather(*(_collect(run, first) for run, first in runs))
        choices = []
        usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
        for index, ((run, _), events) in enumerate(zip(runs, results, strict=True)):
            check_not_aborted(run.final)
            u = usage_of(run.final)
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
        finals = [run.final for run, _ in runs]
        span.usage(finals, [f.finish_reason if f else "stop" for f in finals])
        return json_response({**head, "choices": choices, "usage": usage}, headers=headers)
    except Exception as exc:
        error = as_openai(exc)
        status = error.status
        return error.to_response()
    finally:
        for run, _ in runs:
            await run.close()
        service.record(target, status, time.perf_counter() - started)
        span.end(status, error)


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


async def _collect(run: Run, first: Any) -> list[Any]:
    return [event async for event in run.all_events(first)]


async def _completion_stream(
    service: LLMService,
    target: Target,
    runs: list[tuple[Run, Any]],
    head: dict[str, Any],
    req: CompletionRequest,
    include_usage: bool,
    started: float,
    span: GenerationSpan,
) -> AsyncIterator[bytes]:
    extra = {"usage": None} if include_usage else {}
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
    status, error = 499, None

    async def pump(index: int, run: Run, first: Any) -> None:
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
                check_not_aborted(item if item.finish_reason else None)
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
                    yield sse({**head, "choices": [choice], **extra})
            if include_usage:
                usage = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
                for run, _ in runs:
                    u = usage_of(run.final)
                    for key in usage:
                        usage[key] += u[key]
                yield sse({**head, "choices": [], "usage": usage})
            finals = [run.final for run, _ in runs]
            span.usage(finals, [f.finish_reason if f else "stop" for f in finals])
            yield DONE
            status = 200
    except Exception as exc:
        error = as_openai(exc)
        status = error.status
        yield sse(error.body())
    finally:
        for task in tasks:
            task.cancel()
        for run, _ in runs:
            await run.close()
        service.record(target, status, time.perf_counter() - started)
        span.end(status, error)


# -- /v1/embeddings --------------------------------------------------------------------------------


@router.post("/v1/embeddings", responses=ERRORS)
async def embeddings(request: Request) -> Response:
    """Mean-pooled, L2-normalised embeddings; ``dimensions`` keeps the first N (renormalised);
    ``encoding_format: base64`` is little-endian float32."""
    started = time.perf_counter()
    project, service = service_of(request)
    target: Target | None = None
    status = 500
    try:
        await authorize(request, project)
        req: EmbeddingRequest = await parse_body(request, EmbeddingRequest)
        target = await service.resolve(req.model, routing_key(request, req.user))
        backend: Any = target.chat.backend
        if not hasattr(backend, "embed"):
            raise invalid("model", f"model {req.model!r} does not embed", "model_not_supported")
        size = int(backend.embedding_size)
        if req.dimensions is not None and req.dimensions > size:
            raise invalid("dimensions", f"dimensions must be at most {size} for this model")
        batch = _token_batch(req.input, backend, "input", 2048)
        for i, ids in enumerate(batch):
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
        return json_response(
            {
                "object": "list",
                "data": data,
                "model": req.model,
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
            }
        )
    except Exception as exc:
        err = as_openai(exc, "input")
        status = err.status
        return err.to_response()
    finally:
        if target is not None:
            service.record(target, status, time.perf_counter() - started)


__all__ = ["completions", "embeddings"]
