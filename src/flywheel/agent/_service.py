"""Wiring an ``Agent`` for one caller of the HTTP API, and the chat model seams.

The agent runs inside the server that was asked. Its tools call that same app in-process
(``httpx.ASGITransport``) with the caller's ``Authorization`` header and client address, so the
API applies the caller's token and role exactly as for a direct call. The chat model is
``agent.base_url`` (any OpenAI-compatible server, key from ``agent.api_key_env``) or, by
default, this server's own ``/v1`` — also in-process, with the caller's token.
"""

from __future__ import annotations

import os
from typing import Any

import httpx

from flywheel.agent._loop import Agent, ChatModel, ChatTurn, OpenAIChatModel, ToolCallRequest
from flywheel.agent._tools import ApiCaller, ToolError, select_tools
from flywheel.auth import Principal, Role
from flywheel.config import AgentConfig

INTERNAL_BASE = "http://flywheel.internal"
_NO_KEY = "no-key"  # the openai client needs a key; this one is stripped before sending


def caller_client(app: Any, authorization: str | None, client_host: str) -> httpx.AsyncClient:
    """An HTTP client on ``app`` in-process that looks like the caller to the API."""
    transport = httpx.ASGITransport(app=app, client=(client_host, 50000))
    headers = {"Authorization": authorization} if authorization else {}
    return httpx.AsyncClient(
        transport=transport, base_url=INTERNAL_BASE, headers=headers, timeout=120
    )


async def _strip_placeholder_key(request: Any) -> None:
    if request.headers.get("authorization") == f"Bearer {_NO_KEY}":
        del request.headers["authorization"]


def chat_model(
    config: AgentConfig, app: Any, authorization: str | None, client_host: str
) -> tuple[ChatModel, Any]:
    """The configured chat model; returns also the in-process client to close (or None)."""
    # The openai client is built on httpx2 (not httpx); its transport must be httpx2's too.
    import httpx2
    import openai

    if config.base_url:
        key = os.environ.get(config.api_key_env or "", "") if config.api_key_env else ""
        client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=key or _NO_KEY,
            timeout=config.request_timeout_s,
            max_retries=1,
            http_client=httpx2.AsyncClient(event_hooks={"request": [_strip_placeholder_key]}),
        )
        return OpenAIChatModel(client, config.model), None
    token = (authorization or "").removeprefix("Bearer ").strip() or _NO_KEY
    http = httpx2.AsyncClient(
        transport=httpx2.ASGITransport(app=app, client=(client_host, 50000)),
        timeout=config.request_timeout_s,
        event_hooks={"request": [_strip_placeholder_key]},
    )
    client = openai.AsyncOpenAI(
        base_url=f"{INTERNAL_BASE}/v1", api_key=token, http_client=http, max_retries=0
    )
    return OpenAIChatModel(client, config.model), http


async def is_scripted_model(api: ApiCaller, model: str) -> bool:
    """Whether ``model`` (``name`` or ``name@stage``) is a registered ``scripted-chat`` model."""
    name = model.split("@", 1)[0].split("/", 1)[0]
    try:
        info = await api.get(f"/registry/models/{name}")
    except ToolError:
        return False
    versions = info.get("versions", []) if isinstance(info, dict) else []
    return any(v.get("flavor") == "scripted-chat" for v in versions)


def build_agent(
    chat: ChatModel,
    api: ApiCaller,
    principal: Principal,
    config: AgentConfig,
    *,
    allow_writes: bool,
    scripted: bool,
    max_steps: int | None = None,
) -> Agent:
    """An agent for ``principal``: write tools only with ``allow_writes`` and a writer role."""
    writes = allow_writes and principal.role >= Role.writer
    return Agent(
        chat,
        api,
        select_tools(allow_writes=writes),
        max_steps=max_steps or config.max_steps,
        max_tokens=config.max_tokens,
        scripted=scripted,
    )


class PolicyChatModel:
    """A ``ScriptedChatPolicy`` called in-process (no ``/v1`` round trip): for offline use
    (``flywheel ask eval --rules``) and the loop's own tests. Token counts are the bytes of the
    same compact prompt the ``/v1`` backend sees."""

    def __init__(self, policy: Any, model: str = "scripted") -> None:
        self.policy = policy
        self.model = model
        self._calls = 0

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ChatTurn:
        from flywheel.serving.llm import ScriptedChatBackend

        backend = ScriptedChatBackend(self.policy)
        prompt = backend.render_chat(messages, tools)
        reply = backend.reply(prompt)
        calls = []
        for call in reply.tool_calls:
            self._calls += 1
            calls.append(
                ToolCallRequest(f"call_{self._calls}", call["name"], _json(call["arguments"]))
            )
        return ChatTurn(
            content=reply.content,
            tool_calls=calls,
            input_tokens=len(prompt),
            output_tokens=len(reply.as_text().encode()),
            model=self.model,
            finish_reason="tool_calls" if calls else "stop",
        )


def _json(value: Any) -> str:
    import json

    return json.dumps(value, sort_keys=True)
