"""The agent loop: a bounded tool-calling conversation with a chat model.

``Agent.run(question)`` yields events while it works and ends with one ``answer`` event:

- at most ``max_steps`` chat calls and about ``max_tokens`` prompt + completion tokens;
- a tool error (bad arguments, an API refusal) goes back to the model as ``{"error": ...}``;
- the same tool with the same arguments twice in a row is not called again (the model gets an
  error telling it to use the result it has);
- a write tool is never run by the loop: the call becomes a *pending action* in the answer,
  run only by ``run_action`` after an explicit confirmation (``flywheel ask --allow-writes``
  asks; ``POST /agent/actions`` is the confirmation over HTTP);
- the answer carries its evidence: every tool call with its arguments and result.

Spans follow the OpenTelemetry GenAI conventions: ``invoke_agent`` around the whole run,
``chat {model}`` per model call, ``execute_tool {name}`` per tool call.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.trace import SpanKind

from flywheel import telemetry
from flywheel.agent._tools import MAX_RESULT_CHARS, ApiCaller, Tool, ToolError

AGENT_NAME = "flywheel"

SYSTEM_PROMPT = (
    "You are Flywheel's operations agent. Answer questions about this ML platform's models, "
    "runs, features, endpoints, experiments, training jobs and traces by calling the tools; "
    "state only facts that a tool returned, and say which tool they came from. If a tool "
    "returns an error, do not guess: say what you could not find out. Never change anything "
    "unless the user asked for it and a write tool is available."
)


@dataclass
class ToolCallRequest:
    id: str
    name: str
    arguments: str  # JSON text, as the model produced it


@dataclass
class ChatTurn:
    """One model reply."""

    content: str | None
    tool_calls: list[ToolCallRequest]
    input_tokens: int
    output_tokens: int
    model: str
    finish_reason: str | None = None


class ChatModel(Protocol):
    """The chat model seam: OpenAI-compatible HTTP (``OpenAIChatModel``) or in-process."""

    model: str

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ChatTurn: ...


class OpenAIChatModel:
    """A chat model behind any OpenAI-compatible API, through the ``openai`` client."""

    def __init__(self, client: Any, model: str) -> None:
        self.client = client  # openai.AsyncOpenAI
        self.model = model

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ChatTurn:
        kwargs: dict[str, Any] = {"model": self.model, "messages": messages}
        if tools:
            kwargs["tools"] = tools
            kwargs["tool_choice"] = "auto"
        response = await self.client.chat.completions.create(
            **kwargs, extra_headers=telemetry.trace_headers() or None
        )
        choice = response.choices[0]
        message = choice.message
        calls = [
            ToolCallRequest(c.id, c.function.name, c.function.arguments or "{}")
            for c in (message.tool_calls or [])
            if getattr(c, "function", None) is not None
        ]
        usage = response.usage
        return ChatTurn(
            content=message.content,
            tool_calls=calls,
            input_tokens=int(usage.prompt_tokens) if usage else 0,
            output_tokens=int(usage.completion_tokens) if usage else 0,
            model=response.model or self.model,
            finish_reason=choice.finish_reason,
        )


@dataclass
class Evidence:
    """One tool call the answer rests on."""

    step: int
    call_id: str
    tool: str
    arguments: Any
    result: Any = None
    error: str | None = None
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        out = {
            "step": self.step,
            "call_id": self.call_id,
            "tool": self.tool,
            "arguments": self.arguments,
            "duration_ms": round(self.duration_ms, 2),
        }
        if self.error is not None:
            out["error"] = self.error
        else:
            out["result"] = self.result
        return out


@dataclass
class AgentAnswer:
    question: str
    answer: str
    model: str
    steps: int
    input_tokens: int
    output_tokens: int
    stopped_by: str  # answer | max_steps | max_tokens | confirmation
    evidence: list[Evidence] = field(default_factory=list)
    pending_actions: list[dict[str, Any]] = field(default_factory=list)
    trace_id: str | None = None
    scripted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.question,
            "answer": self.answer,
            "model": self.model,
            "scripted": self.scripted,
            "steps": self.steps,
            "usage": {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens},
            "stopped_by": self.stopped_by,
            "evidence": [e.to_dict() for e in self.evidence],
            "pending_actions": self.pending_actions,
            "trace_id": self.trace_id,
        }


def _canonical(arguments: Any) -> str:
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str)


def _result_text(result: Any) -> str:
    text = json.dumps(result, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = json.dumps({"truncated": True, "head": text[:MAX_RESULT_CHARS]})
    return text


class Agent:
    """A bounded tool-calling loop over ``tools`` with ``chat``, calling the API as ``api``."""

    def __init__(
        self,
        chat: ChatModel,
        api: ApiCaller,
        tools: list[Tool],
        *,
        max_steps: int = 8,
        max_tokens: int = 20_000,
        scripted: bool = False,
    ) -> None:
        self.chat = chat
        self.api = api
        self.tools = {t.name: t for t in tools}
        self.max_steps = max_steps
        self.max_tokens = max_tokens
        self.scripted = scripted

    async def run(self, question: str) -> AsyncIterator[dict[str, Any]]:
        """Events (``step``, ``tool_call``, ``tool_result``), then one ``answer`` event."""
        specs = [t.openai_spec() for t in self.tools.values()]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": question},
        ]
        result = AgentAnswer(question, "", self.chat.model, 0, 0, 0, "max_steps")
        result.scripted = self.scripted
        last_call: str | None = None
        with telemetry.span(
            f"invoke_agent {AGENT_NAME}",
            kind=SpanKind.INTERNAL,
            **{
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": AGENT_NAME,
                "gen_ai.request.model": self.chat.model,
                "flywheel.agent.scripted": self.scripted,
            },
        ) as agent_span:
            result.trace_id = telemetry.current_trace_id()
            for step in range(1, self.max_steps + 1):
                if result.input_tokens + result.output_tokens >= self.max_tokens:
                    result.stopped_by = "max_tokens"
                    break
                result.steps = step
                yield {"type": "step", "step": step}
                with telemetry.span(
                    f"chat {self.chat.model}",
                    kind=SpanKind.CLIENT,
                    **{
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": self.chat.model,
                    },
                ) as chat_span:
                    turn = await self.chat.complete(messages, specs)
                    chat_span.set_attributes(
                        {
                            "gen_ai.response.model": turn.model,
                            "gen_ai.usage.input_tokens": turn.input_tokens,
                            "gen_ai.usage.output_tokens": turn.output_tokens,
                            "gen_ai.response.finish_reasons": [turn.finish_reason or "unknown"],
                        }
                    )
                result.model = turn.model
                result.input_tokens += turn.input_tokens
                result.output_tokens += turn.output_tokens
                if not turn.tool_calls:
                    result.answer = turn.content or ""
                    result.stopped_by = "answer"
                    break
                messages.append(
                    {
                        "role": "assistant",
                        "content": turn.content,
                        "tool_calls": [
                            {
                                "id": c.id,
                                "type": "function",
                                "function": {"name": c.name, "arguments": c.arguments},
                            }
                            for c in turn.tool_calls
                        ],
                    }
                )
                for call in turn.tool_calls:
                    evidence, key = await self._call_tool(step, call, last_call)
                    last_call = key
                    yield {"type": "tool_call", **evidence.to_dict()}
                    result.evidence.append(evidence)
                    if (
                        evidence.error is None
                        and isinstance(evidence.result, dict)
                        and (evidence.result.get("status") == "needs_confirmation")
                    ):
                        result.pending_actions.append(evidence.result["action"])
                    payload = (
                        {"error": evidence.error} if evidence.error is not None else evidence.result
                    )
                    messages.append(
                        {"role": "tool", "tool_call_id": call.id, "content": _result_text(payload)}
                    )
                if result.pending_actions:
                    result.stopped_by = "confirmation"
                    result.answer = "These changes need your confirmation: " + "; ".join(
                        f"{a['tool']}({_canonical(a['arguments'])})" for a in result.pending_actions
                    )
                    break
            if result.stopped_by == "max_steps" and not result.answer:
                result.answer = (
                    f"I stopped after {self.max_steps} steps without an answer; "
                    "ask a narrower question or raise agent.max_steps."
                )
            elif result.stopped_by == "max_tokens":
                result.answer = (
                    f"I stopped at the token budget ({self.max_tokens}) without an answer."
                )
            agent_span.set_attributes(
                {
                    "gen_ai.usage.input_tokens": result.input_tokens,
                    "gen_ai.usage.output_tokens": result.output_tokens,
                    "flywheel.agent.steps": result.steps,
                    "flywheel.agent.stopped_by": result.stopped_by,
                }
            )
        yield {"type": "answer", **result.to_dict()}

    async def _call_tool(
        self, step: int, call: ToolCallRequest, last_call: str | None
    ) -> tuple[Evidence, str]:
        try:
            arguments: Any = json.loads(call.arguments) if call.arguments else {}
        except ValueError:
            arguments = call.arguments
        key = f"{call.name}:{_canonical(arguments)}"
        evidence = Evidence(step, call.id, call.name, arguments)
        t0 = time.perf_counter()
        with telemetry.span(
            f"execute_tool {call.name}",
            kind=SpanKind.INTERNAL,
            **{
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": call.name,
                "gen_ai.tool.call.id": call.id,
                "gen_ai.tool.type": "function",
            },
        ) as tool_span:
            tool = self.tools.get(call.name)
            try:
                if tool is None:
                    raise ToolError(
                        f"no tool named {call.name!r}; available: {', '.join(sorted(self.tools))}"
                    )
                if key == last_call:
                    raise ToolError(
                        f"{call.name} was just called with these arguments; use that result"
                    )
                if tool.write:
                    evidence.result = {
                        "status": "needs_confirmation",
                        "action": {"tool": tool.name, "arguments": tool.validate(arguments)},
                    }
                else:
                    evidence.result = await tool.call(self.api, arguments)
            except ToolError as exc:
                evidence.error = str(exc)
                tool_span.set_attribute("error.type", type(exc).__name__)
                telemetry.set_error(tool_span, str(exc))
        evidence.duration_ms = (time.perf_counter() - t0) * 1000
        return evidence, key


async def run_action(api: ApiCaller, tools: list[Tool], action: dict[str, Any]) -> Any:
    """Run a confirmed write action ``{"tool": ..., "arguments": {...}}`` as ``api``'s caller.

    Raises:
        ToolError: the tool is unknown or not a write tool, the arguments are invalid, or the
            API refused (a reader token gets the API's 403).
    """
    by_name = {t.name: t for t in tools}
    name = action.get("tool") if isinstance(action, dict) else None
    tool = by_name.get(str(name))
    if tool is None or not tool.write:
        raise ToolError(f"tool: {name!r} is not a write tool")
    with telemetry.span(
        f"execute_tool {tool.name}",
        kind=SpanKind.INTERNAL,
        **{
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool.name,
            "gen_ai.tool.type": "function",
            "flywheel.agent.confirmed": True,
        },
    ):
        return await tool.call(api, action.get("arguments", {}))
