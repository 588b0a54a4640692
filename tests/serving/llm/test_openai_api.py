"""Conformance of ``/v1`` with the official ``openai`` client (sync and async, streamed and not).

One live uvicorn server for the module, serving the tiny model (trained here) as ``tiny`` in
production. Greedy answers are compared across sync/async/streamed calls, so each path has to
produce the engine's tokens, not merely something shaped like a response.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
from pydantic import BaseModel

from flywheel.project import Project
from flywheel.registry import Registry
from tests.conftest import make_project
from tests.serving.llm.openai_server import MODEL_TOOL, WEATHER_TOOL, llm_server, register_tiny

pytestmark = pytest.mark.integration
QUESTION = [{"role": "user", "content": "What is a canary?"}]
# The scripted chat model (flavor scripted-chat): deterministic tool use through the same /v1.
SCRIPT = {
    "fallback": "I only answer weather questions.",
    "rules": [
        {
            "pattern": r"(?i)weather in (?P<city>\w+)",
            "calls": [{"tool": "get_weather", "arguments": {"city": "{city}"}}],
            "answer": "It is {r0.celsius} degrees in {city}.",
        }
    ],
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    project: Project = make_project(tmp_path_factory.mktemp("llm") / "proj")
    register_tiny(project, tiny_model_dir, "tiny")
    registry = Registry(project)
    ops = registry.register_model("ops", SCRIPT, flavor="scripted-chat")
    registry.set_stage("ops", ops.version, "production")
    with llm_server(project) as url:
        yield url
    project.close()


@pytest.fixture(scope="module")
def client(served: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served}/v1", api_key="unused", max_retries=0)


def aclient(url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def greedy(client: openai.OpenAI, **kwargs: Any) -> Any:
    args: dict[str, Any] = {"model": "tiny", "messages": QUESTION, "max_tokens": 24}
    args.update(kwargs)
    return client.chat.completions.create(temperature=0, **args)


def test_models_list(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {"tiny", "tiny@production"} <= ids
    assert client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_chat_sync_async_and_streamed_agree(client: openai.OpenAI, served: str) -> None:
    plain = greedy(client)
    text = plain.choices[0].message.content
    assert text and plain.choices[0].finish_reason in ("stop", "length")
    usage = plain.usage
    assert usage is not None and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert plain.system_fingerprint == "tiny-v1"
    # streamed: the deltas join to the same answer; usage comes last, in a chunk with no choices
    chunks = list(greedy(client, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == plain.choices[0].finish_reason and not any(finishes[:-1])
    # without include_usage no chunk carries usage
    assert all(c.usage is None for c in greedy(client, stream=True))

    async def run_async() -> tuple[str, str]:
        async with aclient(served) as ac:
            one = await ac.chat.completions.create(
                model="tiny", messages=QUESTION, max_tokens=24, temperature=0
            )
            stream = await ac.chat.completions.create(
                model="tiny", messages=QUESTION, max_tokens=24, temperature=0, stream=True
            )
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return one.choices[0].message.content or "", "".join(parts)

    assert asyncio.run(run_async()) == (text, text)


def test_stop_and_max_tokens(client: openai.OpenAI) -> None:
    text = greedy(client, max_tokens=40).choices[0].message.content or ""
    words = text.split()
    assert len(words) >= 3, text
    stop = " " + words[2]
    cut = text[: text.index(stop)]
    for stream in (False, True):
        if stream:
            chunks = list(greedy(client, max_tokens=40, stop=[stop], stream=True))
            got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = chunks[-1].choices[0].finish_reason
        else:
            resp = greedy(client, max_tokens=40, stop=stop)
            got, finish = resp.choices[0].message.content, resp.choices[0].finish_reason
        assert (got, finish) == (cut, "stop")
    short = greedy(client, max_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.usage is not None and short.usage.completion_tokens == 3


def test_logprobs(client: openai.OpenAI) -> None:
    resp = greedy(client, logprobs=True, top_logprobs=3)
    entries = resp.choices[0].logprobs.content  # type: ignore[union-attr]
    eos = 1 if resp.choices[0].finish_reason == "stop" else 0  # EOS is counted, not shown
    assert entries and len(entries) == resp.usage.completion_tokens - eos  # type: ignore[union-attr]
    for entry in entries:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 3
        # greedy: the chosen token is the most likely one
        assert entry.logprob == pytest.approx(entry.top_logprobs[0].logprob)
        assert [t.logprob for t in entry.top_logprobs] == sorted(
            (t.logprob for t in entry.top_logprobs), reverse=True
        )
    content = resp.choices[0].message.content or ""
    if resp.choices[0].finish_reason == "length":  # no stop token cut from the text
        assert "".join(e.token for e in entries) == content
    plain = client.completions.create(
        model="tiny", prompt="The registry keeps", max_tokens=6, temperature=0, logprobs=2
    )
    lp = plain.choices[0].logprobs
    assert lp is not None and lp.tokens and len(lp.tokens) == len(lp.token_logprobs or [])
    assert "".join(lp.tokens) == plain.choices[0].text
    assert all(len(t) == 2 for t in lp.top_logprobs or [])


def test_seed_reproducibility(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        resp = client.chat.completions.create(
            model="tiny", messages=QUESTION, max_tokens=30, temperature=1.2, seed=seed
        )
        return resp.choices[0].message.content or ""

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def test_tool_choice_modes(client: openai.OpenAI) -> None:
    tools: Any = [WEATHER_TOOL, MODEL_TOOL]
    weather = [{"role": "user", "content": "What is the weather in Lisbon?"}]
    # none: tools offered, no call
    none = greedy(client, messages=weather, tools=tools, tool_choice="none", max_tokens=60)
    assert none.choices[0].message.tool_calls is None
    assert none.choices[0].finish_reason != "tool_calls"
    # required: a question that needs no tool still gets a well-formed call (the grammar)
    required = greedy(client, tools=tools, tool_choice="required", max_tokens=60)
    rcall = required.choices[0].message.tool_calls[0]  # type: ignore[index]
    name = rcall.function.name  # type: ignore[union-attr]
    args = json.loads(rcall.function.arguments)  # type: ignore[union-attr]
    assert (name, sorted(args)) in [("get_weather", ["city"]), ("get_model", ["name"])]
    assert required.choices[0].finish_reason == "tool_calls"
    assert required.choices[0].message.content is None
    # named: that function, whatever the question
    named = greedy(
        client,
        messages=weather,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_model"}},
        max_tokens=60,
    )
    ncall = named.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert ncall.function.name == "get_model"  # type: ignore[union-attr]
    assert set(json.loads(ncall.function.arguments)) == {"name"}  # type: ignore[union-attr]


def test_auto_tool_calls_and_follow_up_scripted(client: openai.OpenAI) -> None:
    """``auto`` on the scripted chat model: the call it writes is parsed, streamed as a delta,
    and the tool's result in the next turn shapes the answer."""
    tools: Any = [WEATHER_TOOL, MODEL_TOOL]
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Perth?"}]
    first = client.chat.completions.create(model="ops", messages=messages, tools=tools)
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    assert call.function.name == "get_weather"  # type: ignore[union-attr]
    assert json.loads(call.function.arguments) == {"city": "Perth"}  # type: ignore[union-attr]
    chunks = list(
        client.chat.completions.create(model="ops", messages=messages, tools=tools, stream=True)
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].id
    assert deltas[0].function.name == "get_weather"  # type: ignore[union-attr]
    assert "<tool_call>" not in "".join(c.choices[0].delta.content or "" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    result = json.dumps({"city": "Perth", "celsius": 21})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    second = client.chat.completions.create(model="ops", messages=messages, tools=tools)
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].message.content == "It is 21 degrees in Perth."


def test_tool_calls_stream_as_deltas(client: openai.OpenAI, served: str) -> None:
    tools: Any = [WEATHER_TOOL, MODEL_TOOL]
    chunks = list(greedy(client, tools=tools, tool_choice="required", stream=True, max_tokens=60))
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert len(deltas) == 1 and deltas[0].index == 0 and deltas[0].id
    assert deltas[0].function.name in ("get_weather", "get_model")  # type: ignore[union-attr]
    assert isinstance(json.loads(deltas[0].function.arguments), dict)  # type: ignore[union-attr]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # no tag text leaks into the content
    assert "<tool_call>" not in "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices
    )

    async def run_async() -> Any:
        async with aclient(served) as ac:
            stream = await ac.chat.completions.create(
                model="tiny",
                messages=QUESTION,
                tools=tools,
                tool_choice={"type": "function", "function": {"name": "get_weather"}},
                stream=True,
                max_tokens=60,
                temperature=0,
            )
            return [
                tc async for c in stream if c.choices for tc in c.choices[0].delta.tool_calls or []
            ]

    forced = asyncio.run(run_async())
    assert [d.function.name for d in forced] == ["get_weather"]
    assert set(json.loads(forced[0].function.arguments)) == {"city"}


def test_tool_result_follow_up(client: openai.OpenAI) -> None:
    """A tool-result turn on the engine: the call and its result are rendered into the prompt."""
    tools: Any = [WEATHER_TOOL, MODEL_TOOL]
    messages: list[Any] = [{"role": "user", "content": "What is the weather in Perth?"}]
    forced = {"type": "function", "function": {"name": "get_weather"}}
    first = greedy(client, messages=messages, tools=tools, tool_choice=forced, max_tokens=60)
    call = first.choices[0].message.tool_calls[0]  # type: ignore[index]
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    result = json.dumps({"city": "Perth", "celsius": 21})
    messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    second = greedy(client, messages=messages, tools=tools, tool_choice="none", max_tokens=40)
    answer = second.choices[0].message
    assert answer.tool_calls is None and answer.content
    # the prompt grew by the call and the result (both rendered by the chat template)
    grown = second.usage.prompt_tokens - first.usage.prompt_tokens  # type: ignore[union-attr]
    assert grown > first.usage.completion_tokens  # type: ignore[union-attr]


class Deployment(BaseModel):
    model: str
    version: int


def test_structured_output(client: openai.OpenAI, served: str) -> None:
    messages: Any = [{"role": "user", "content": "Which version of ranker is live?"}]
    parsed = client.chat.completions.parse(
        model="tiny", messages=messages, response_format=Deployment, max_tokens=60, temperature=0
    )
    assert isinstance(parsed.choices[0].message.parsed, Deployment)
    obj = greedy(client, response_format={"type": "json_object"}, max_tokens=200)
    assert obj.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(obj.choices[0].message.content or ""), dict)

    async def run_async() -> Any:
        async with aclient(served) as ac:
            return await ac.chat.completions.parse(
                model="tiny",
                messages=messages,
                response_format=Deployment,
                max_tokens=60,
                temperature=0.8,
                seed=3,
            )

    result = asyncio.run(run_async())
    assert isinstance(result.choices[0].message.parsed, Deployment)


def test_embeddings(client: openai.OpenAI, served: str) -> None:
    default = client.embeddings.create(model="tiny", input=["the registry", "a canary"])
    vectors = [np.asarray(d.embedding) for d in default.data]
    assert len(vectors) == 2 and vectors[0].shape == (64,)
    assert all(math.isclose(float(np.linalg.norm(v)), 1.0, rel_tol=1e-5) for v in vectors)
    assert not np.allclose(vectors[0], vectors[1])
    assert default.usage.prompt_tokens > 0
    # the client asked for base64 (its default); floats must be the same numbers
    raw = httpx.post(
        f"{served}/v1/embeddings",
        json={"model": "tiny", "input": "the registry", "encoding_format": "base64"},
    ).json()
    decoded = np.frombuffer(base64.b64decode(raw["data"][0]["embedding"]), dtype="<f4")
    floats = client.embeddings.create(model="tiny", input="the registry", encoding_format="float")
    np.testing.assert_allclose(decoded, floats.data[0].embedding, rtol=1e-6)
    np.testing.assert_allclose(decoded, vectors[0], rtol=1e-5)
    short = client.embeddings.create(model="tiny", input="the registry", dimensions=16)
    v16 = np.asarray(short.data[0].embedding)
    assert v16.shape == (16,) and math.isclose(float(np.linalg.norm(v16)), 1.0, rel_tol=1e-5)
    assert np.dot(v16, vectors[0][:16]) > 0.99 * np.linalg.norm(vectors[0][:16])


def test_completions(client: openai.OpenAI, served: str) -> None:
    plain = client.completions.create(
        model="tiny", prompt="A canary sends", max_tokens=12, temperature=0
    )
    text = plain.choices[0].text
    assert text and plain.usage is not None and plain.usage.completion_tokens <= 12
    chunks = list(
        client.completions.create(
            model="tiny",
            prompt="A canary sends",
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text
    assert (
        chunks[-1].usage is not None
        and chunks[-1].usage.completion_tokens == plain.usage.completion_tokens
    )
    two = client.completions.create(
        model="tiny", prompt=["A canary sends", "The registry keeps"], max_tokens=8, temperature=0
    )
    assert [c.index for c in two.choices] == [0, 1]
    assert two.choices[0].text == text[: len(two.choices[0].text)]

    async def run_async() -> str:
        async with aclient(served) as ac:
            resp = await ac.completions.create(
                model="tiny", prompt="A canary sends", max_tokens=12, temperature=0
            )
            return resp.choices[0].text

    assert asyncio.run(run_async()) == text


def test_errors_in_openai_shape(client: openai.OpenAI, served: str) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert nf.value.code == "model_not_found" and nf.value.param == "model"
    assert nf.value.response.headers["x-should-retry"] == "false"
    body = nf.value.response.json()["error"]
    assert set(body) == {"message", "type", "param", "code"}
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=QUESTION, temperature=5)
    assert bad.value.param == "temperature"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=QUESTION, n=2)
    assert bad.value.param == "n"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="tiny",
            messages=QUESTION,
            tools=[WEATHER_TOOL],
            tool_choice={"type": "function", "function": {"name": "missing"}},
        )
    assert bad.value.param == "tool_choice"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "word " * 2000}], max_tokens=10
        )
    assert bad.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(model="tiny", messages=[{"role": "robot", "content": "x"}])
    assert bad.value.param == "messages" and "robot" in bad.value.message
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="tiny", input="x", dimensions=65)
    assert bad.value.param == "dimensions"
    broken = httpx.post(f"{served}/v1/chat/completions", content=b"{not json")
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "invalid_json"


def test_metrics_have_vllm_names(client: openai.OpenAI, served: str) -> None:
    greedy(client)
    text = httpx.get(f"{served}/metrics").text
    values = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in text.splitlines()
        if line.startswith("flywheel:") and 'model_name="tiny"' in line
    }

    def value(name: str) -> float:
        return values[f'{name}{{model_name="tiny",version="1"}}']

    assert value("flywheel:prompt_tokens_total") > 0
    assert value("flywheel:generation_tokens_total") > 0
    assert value("flywheel:time_to_first_token_seconds_count") > 0
    assert value("flywheel:time_per_output_token_seconds_count") > 0
    assert value("flywheel:e2e_request_latency_seconds_count") > 0
    # the same system prompt-free question asked many times: its prefix blocks are reused
    assert (
        value("flywheel:prefix_cache_queries_total")
        >= value("flywheel:prefix_cache_hits_total")
        > 0
    )
    for gauge in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc"):
        assert f"flywheel:{gauge}{{" in text
