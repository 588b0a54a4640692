"""Operating LLMs behind ``/v1``: canaries, back-pressure (429), KV exhaustion, disconnects, auth.

One live server for the module serves the tiny model (trained here) as several registered
versions and models, each with its own engine settings (``config["engine"]``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pandas as pd
import pytest

from flywheel.auth import TokenStore
from flywheel.project import Project
from flywheel.registry import Registry
from flywheel.serving import deploy
from flywheel.serving._endpoints import EndpointStore
from flywheel.serving._prediction_log import PREDICTIONS_FOLDER
from flywheel.serving.llm import llm_service_for
from flywheel.telemetry import (
    TraceStore,
    TracingSettings,
    build_query,
    configure_tracing,
    disable_tracing,
)
from tests.conftest import make_project
from tests.serving.llm.openai_server import fast, llm_server, register_tiny

pytestmark = pytest.mark.integration
QUESTION = [{"role": "user", "content": "What is a canary?"}]


@pytest.fixture(scope="module")
def ops(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Any]:
    project: Project = fast(make_project(tmp_path_factory.mktemp("llm-ops") / "proj"))
    register_tiny(project, tiny_model_dir, "tiny")  # v1, production
    register_tiny(project, tiny_model_dir, "tiny", stage=None, description="candidate")  # v2
    register_tiny(  # v3: a candidate that cannot be loaded (an unknown engine setting)
        project, tiny_model_dir, "tiny", stage=None, config={"engine": {"warp_speed": 9}}
    )
    register_tiny(
        project, tiny_model_dir, "narrow", config={"engine": {"max_num_seqs": 1, "max_waiting": 1}}
    )
    register_tiny(
        project, tiny_model_dir, "small-kv", config={"engine": {"num_blocks": 8, "block_size": 16}}
    )
    register_tiny(
        project, tiny_model_dir, "logged", config={"log_prompts": True, "redact": "builtin"}
    )
    with llm_server(project) as url:
        yield project, url
    project.close()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def _endpoint_state(project: Project, name: str) -> Any:
    ep = EndpointStore(project.db).find(name)
    assert ep is not None and ep.canary is not None
    return ep.canary.state.value


def _wait_until_routed(client: Any, name: str) -> str:
    """The first answer through an endpoint just written to the store (the server's reconciler
    sees it on its next tick; on a loaded machine the first request can beat it: a 404)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            resp = client.chat.completions.create(
                model=name, messages=QUESTION, max_tokens=4, temperature=0
            )
            return str(resp.system_fingerprint or "")
        except openai.NotFoundError:
            assert time.monotonic() < deadline, f"the server never saw endpoint {name!r}"
            time.sleep(0.2)


def test_llm_canary_promotes_then_a_broken_candidate_rolls_back(ops: Any) -> None:
    project, url = ops
    client = _client(url)
    deploy(project, "chat", version=2, model="tiny", canary=(50,), step_requests=4,
           max_error_rate=0.0)  # fmt: skip
    served = {_wait_until_routed(client, "chat")}
    deadline = time.monotonic() + 120
    while _endpoint_state(project, "chat") == "running":
        assert time.monotonic() < deadline, "the canary never finished"
        resp = client.chat.completions.create(
            model="chat", messages=QUESTION, max_tokens=4, temperature=0
        )
        served.add(resp.system_fingerprint or "")
    assert _endpoint_state(project, "chat") == "succeeded"
    assert served == {"tiny-v1", "tiny-v2"}  # both versions answered during the split
    time.sleep(0.3)  # a reconciler tick: this replica routes by the finished rollout
    after = {
        client.chat.completions.create(
            model="chat", messages=QUESTION, max_tokens=2, temperature=0
        ).system_fingerprint
        for _ in range(6)
    }
    assert after == {"tiny-v2"}
    # v3 cannot load: its requests are 503s, counted against it, and the rollout rolls back
    deploy(project, "chat", version=3, model="tiny", canary=(50,), step_requests=20,
           max_error_rate=0.0)  # fmt: skip
    errors: list[int] = []
    deadline = time.monotonic() + 120
    while _endpoint_state(project, "chat") == "running":
        assert time.monotonic() < deadline, "the broken canary was never rolled back"
        try:
            client.chat.completions.create(model="chat", messages=QUESTION, max_tokens=2)
        except openai.InternalServerError as exc:
            errors.append(exc.status_code)
    assert _endpoint_state(project, "chat") == "rolled_back"
    assert errors and set(errors) == {503}
    events = EndpointStore(project.db).events("chat")
    assert any("v3" in json.dumps(e.detail) for e in events)
    time.sleep(0.3)
    resp = client.chat.completions.create(model="chat", messages=QUESTION, max_tokens=2)
    assert resp.system_fingerprint == "tiny-v2"


def test_full_queue_is_429_with_retry_after(ops: Any) -> None:
    _, url = ops

    async def burst() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as ac:

            async def one() -> Any:
                try:
                    return await ac.chat.completions.create(
                        model="narrow", messages=QUESTION, max_tokens=40, temperature=0
                    )
                except openai.RateLimitError as exc:
                    return exc

            return await asyncio.gather(*(one() for _ in range(6)))

    results = asyncio.run(burst())
    limited = [r for r in results if isinstance(r, openai.RateLimitError)]
    assert limited and len(limited) < len(results)
    err = limited[0]
    assert int(err.response.headers["retry-after"]) >= 1
    assert err.code == "rate_limit_exceeded" and "x-should-retry" not in err.response.headers


def test_kv_exhaustion_queues_without_5xx(ops: Any) -> None:
    _, url = ops
    sentence = "A canary sends a small share of the traffic to the new version. "
    prompts = [f"{i}. {sentence * 3}" for i in range(6)]

    async def run() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0) as ac:
            return await asyncio.gather(
                *(
                    ac.completions.create(model="small-kv", prompt=p, max_tokens=32, temperature=0)
                    for p in prompts
                )
            )

    # 8 blocks of 16 tokens (128) hold one of these requests at a time (prompt + 32 tokens)
    results = asyncio.run(run())
    assert all(r.choices[0].finish_reason in ("stop", "length") for r in results)
    needed = [r.usage.prompt_tokens + 32 for r in results]
    assert min(needed) > 64 and sum(needed) > 3 * 128
    chat = next(c for c in llm_service_for(_project(ops)).loaded() if c.model == "small-kv")
    stats = chat.backend.stats()
    assert stats.kv_blocks_total == 8 and stats.requests_finished.get("abort", 0) == 0


def _project(ops: Any) -> Project:
    project: Project = ops[0]
    return project


def test_client_disconnect_frees_blocks(ops: Any) -> None:
    project, url = ops
    body = {
        "model": "tiny",
        "messages": QUESTION,
        "max_tokens": 900,
        "stream": True,
        # a long string is the only valid answer: generation cannot end early by itself
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "long", "schema": {"type": "string", "minLength": 2000}},
        },
    }
    service = llm_service_for(project)
    with httpx.Client(timeout=60) as http:
        with http.stream("POST", f"{url}/v1/chat/completions", json=body) as resp:
            assert resp.status_code == 200
            lines = resp.iter_lines()
            seen = 0
            for line in lines:
                if line.startswith("data: "):
                    seen += 1
                if seen >= 3:
                    break
            chat = next(c for c in service.loaded() if c.model == "tiny" and c.version == 1)
            stats = chat.backend.stats()
            assert stats.num_running == 1 and stats.kv_cache_usage > 0
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 10
    while True:
        stats = chat.backend.stats()
        if stats.num_running == 0 and stats.kv_cache_usage == 0.0:
            break
        assert time.monotonic() < deadline, f"blocks still held after the disconnect: {stats}"
        time.sleep(0.05)
    assert stats.requests_finished.get("abort", 0) >= 1


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A server with ``auth.required``, serving the scripted chat model."""
    project = make_project(tmp_path_factory.mktemp("llm-auth") / "proj", auth={"required": True})
    registry = Registry(project)
    mv = registry.register_model(
        "ops", {"rules": [{"pattern": "hello", "answer": "hi"}]}, flavor="scripted-chat"
    )
    registry.set_stage("ops", mv.version, "production")
    _, token = TokenStore(project.db).create("reader", "llm-test")
    with llm_server(project) as url:
        yield url, token
    project.close()


def test_auth_required(locked: tuple[str, str]) -> None:
    url, token = locked
    anonymous = openai.OpenAI(base_url=f"{url}/v1", api_key="not-a-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as denied:
        anonymous.chat.completions.create(
            model="ops", messages=[{"role": "user", "content": "hello"}]
        )
    assert denied.value.code == "invalid_api_key"
    assert denied.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(openai.AuthenticationError):
        anonymous.models.list()
    bare = httpx.post(f"{url}/v1/chat/completions", json={"model": "ops", "messages": []})
    assert bare.status_code == 401 and bare.json()["error"]["type"] == "invalid_request_error"
    reader = openai.OpenAI(base_url=f"{url}/v1", api_key=token, max_retries=0)
    resp = reader.chat.completions.create(
        model="ops", messages=[{"role": "user", "content": "hello"}]
    )
    assert resp.choices[0].message.content == "hi"
    assert {m.id for m in reader.models.list()} >= {"ops", "ops@production"}


def test_prompt_logging_with_redaction(ops: Any) -> None:
    project, url = ops
    client = _client(url)
    secret = "Mail ana@example.com or call 5551234567: what is a canary?"
    reply = client.chat.completions.create(
        model="logged", messages=[{"role": "user", "content": secret}], max_tokens=8
    )
    client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=4)
    root = project.config.offline_store_path / PREDICTIONS_FOLDER
    deadline = time.monotonic() + 20
    while not list((root / "endpoint=logged").glob("*.parquet")):
        assert time.monotonic() < deadline, "nothing was logged"
        time.sleep(0.2)
    rows = pd.concat(pd.read_parquet(p) for p in (root / "endpoint=logged").glob("*.parquet"))
    row = rows.iloc[-1]
    assert row["model"] == "logged" and int(row["version"]) == 1
    assert "[email]" in row["prompt"] and "[number]" in row["prompt"]
    assert "ana@example.com" not in row["prompt"] and "5551234567" not in row["prompt"]
    assert row["pred_completion"] == reply.choices[0].message.content
    # a version without log_prompts writes nothing for /v1
    assert not list((root / "endpoint=tiny").glob("*.parquet"))


def test_chat_requests_are_genai_server_spans_in_the_trace_store(ops: Any) -> None:
    """Each /v1 chat completion (streamed or not, failed or not) is one `chat {model}` SERVER
    span with the GenAI attributes, a child of the caller's traceparent, read back from the
    trace store."""
    project, url = ops
    store = TraceStore(project.db)
    caller_trace, caller_span = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    tracing = configure_tracing(TracingSettings(exporter="store", synchronous=True), project.db)
    try:
        client = _client(url)
        reply = client.chat.completions.create(
            model="tiny",
            messages=QUESTION,
            max_tokens=8,
            temperature=0,
            extra_headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"},
        )
        chunks = list(
            client.chat.completions.create(
                model="tiny@production",
                messages=QUESTION,
                max_tokens=5,
                seed=7,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="tiny", messages=QUESTION, tool_choice="required")
        assert tracing is not None
        streamed = _wait_for_span(store, tracing, "chat tiny@production", "gen_ai.request.seed=7")
        failed = _wait_for_span(store, tracing, "chat tiny", "http.response.status_code=400")
    finally:
        disable_tracing()
    _summary, spans = store.get_trace(caller_trace)
    (chat,) = spans
    assert (chat.name, chat.kind, chat.parent_span_id) == ("chat tiny", 2, caller_span)
    assert chat.start_ns < chat.end_ns
    usage = reply.usage
    assert usage is not None
    assert chat.attributes == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "flywheel",
        "gen_ai.request.model": "tiny",
        "gen_ai.request.max_tokens": 8,
        "gen_ai.request.temperature": 0.0,
        "gen_ai.request.top_p": 1.0,
        "gen_ai.output.type": "text",
        "gen_ai.response.model": "tiny-v1",
        "gen_ai.response.id": reply.id,
        "gen_ai.response.finish_reasons": [reply.choices[0].finish_reason],
        "gen_ai.usage.input_tokens": usage.prompt_tokens,
        "gen_ai.usage.output_tokens": usage.completion_tokens,
        "flywheel.model": "tiny",
        "flywheel.model.version": 1,
        "flywheel.llm.stream": False,
        "flywheel.llm.cached_input_tokens": 0
        if usage.prompt_tokens_details is None
        else usage.prompt_tokens_details.cached_tokens,
        "flywheel.llm.time_to_first_token_s": chat.attributes["flywheel.llm.time_to_first_token_s"],
        "http.response.status_code": 200,
    }
    assert 0 < chat.attributes["flywheel.llm.time_to_first_token_s"] <= chat.duration_ns / 1e9
    stream_usage = chunks[-1].usage
    assert stream_usage is not None
    assert streamed.parent_span_id is None and streamed.trace_id != caller_trace
    assert streamed.attributes["flywheel.llm.stream"] is True
    assert streamed.attributes["gen_ai.request.seed"] == 7
    assert streamed.attributes["gen_ai.usage.output_tokens"] == stream_usage.completion_tokens
    assert streamed.attributes["gen_ai.response.id"] == chunks[0].id
    assert failed.attributes["http.response.status_code"] == 400
    assert failed.attributes["error.type"] == "invalid_value"  # the OpenAI error code
    assert "gen_ai.usage.output_tokens" not in failed.attributes
    assert failed.status_code != 2  # a 4xx is the caller's error, not the server span's


def _wait_for_span(store: TraceStore, tracing: Any, name: str, *attr: str) -> Any:
    """The stored span named ``name`` (with the ``attr`` keys): a streamed answer's span is
    written when the server closes the stream, just after the client read its last chunk."""
    for _ in range(100):
        tracing.flush()
        found = store.search(build_query(name=name, attr=list(attr)))
        if found:
            _summary, spans = store.get_trace(found[0].trace_id)
            return next(s for s in spans if s.name == name)
        time.sleep(0.05)
    raise AssertionError(f"no span {name!r} with {attr} was stored")
