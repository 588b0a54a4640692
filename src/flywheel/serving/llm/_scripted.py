"""The scripted chat model (flavor ``scripted-chat``): a deterministic stand-in for an LLM.

SCRIPTED — not a language model. It exists so that the agent, its tests, CI and the demo run
without model weights. Its artifact is a rules file::

    {"label": "flywheel-ops (scripted)",
     "fallback": "I only answer questions that match my rules.",
     "rules": [{
        "pattern": "(?i)which version of (?P<model>[\\w.-]+) is in production",
        "calls": [
            {"tool": "resolve_model", "arguments": {"uri": "models:/{model}@production"}},
            {"tool": "get_run", "arguments": {"run_id": "{r0.run_id}"}}],
        "answer": "{model} v{r0.version} is in production; AUC {r1.metrics.auc.last}.",
        "on_error": "I could not find that out: {error}"}]}

For the last user message, the first rule whose ``pattern`` matches (``re.search``) is followed:
its ``calls`` are made one per turn, in order, with arguments filled from the pattern's named
groups (``{model}``) and earlier results (``{r0.run_id}``: result 0, key ``run_id``; list items
by index, ``-1`` for the last). When every call has a result, the ``answer`` template is filled
the same way (lists are joined with ", "). A tool result that is an error (``{"error": ...}``)
ends the script with ``on_error``: the answer carries nothing but the error. A call to a tool
that was not offered is skipped and the answer says so.

``ScriptedChatPolicy`` is the pure decision function; ``ScriptedChatBackend`` serves it behind
``/v1`` (llm-api's ``ChatBackend`` protocol): the prompt is the conversation as UTF-8 bytes (one
token per byte), the reply streams as text, tool calls as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RULES_FILE = "scripted_chat.json"
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*(?:\.-?[A-Za-z0-9_]+)*)\}")
_MISSING = "(unknown)"


class ScriptError(ValueError):
    """A rules file that cannot be used (names the rule and field)."""


@dataclass(frozen=True)
class ScriptedReply:
    """What the scripted model says: text, or tool calls (name, arguments)."""

    content: str | None
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def as_text(self) -> str:
        """The reply in the chat template's text convention (what /v1 parses)."""
        if self.tool_calls:
            return "".join(
                "<tool_call>"
                + json.dumps({"name": c["name"], "arguments": c["arguments"]}, sort_keys=True)
                + "</tool_call>"
                for c in self.tool_calls
            )
        return self.content or ""


def _lookup(path: str, groups: dict[str, Any], results: list[Any]) -> Any:
    head, *rest = path.split(".")
    if head in groups:
        value: Any = groups[head]
    elif re.fullmatch(r"r\d+", head):
        index = int(head[1:])
        if index >= len(results):
            return _MISSING
        value = results[index]
    else:
        return _MISSING
    for part in rest:
        if isinstance(value, dict):
            if part not in value:
                return _MISSING
            value = value[part]
        elif isinstance(value, list) and re.fullmatch(r"-?\d+", part):
            i = int(part)
            if not -len(value) <= i < len(value):
                return _MISSING
            value = value[i]
        else:
            return _MISSING
    return value


def _text(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_text(v) for v in value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def fill(template: Any, groups: dict[str, Any], results: list[Any]) -> Any:
    """A template (string, or a JSON structure of them) with its placeholders filled.

    A string that is exactly one placeholder keeps the value's type (a version stays an int).
    """
    if isinstance(template, dict):
        return {k: fill(v, groups, results) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, groups, results) for v in template]
    if not isinstance(template, str):
        return template
    whole = _PLACEHOLDER.fullmatch(template)
    if whole:
        return _lookup(whole.group(1), groups, results)
    return _PLACEHOLDER.sub(lambda m: _text(_lookup(m.group(1), groups, results)), template)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


class ScriptedChatPolicy:
    """Rules → the next reply of a conversation (deterministic, stateless)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        if not isinstance(spec, dict) or not isinstance(spec.get("rules"), list):
            raise ScriptError("rules file: must be an object with a list 'rules'")
        self.label = str(spec.get("label") or "scripted chat model")
        self.fallback = str(
            spec.get("fallback")
            or "I am a scripted model: I only answer questions that match my rules."
        )
        self.rules: list[tuple[re.Pattern[str], dict[str, Any]]] = []
        for i, rule in enumerate(spec["rules"]):
            if not isinstance(rule, dict) or not isinstance(rule.get("pattern"), str):
                raise ScriptError(f"rules[{i}].pattern: must be a string")
            try:
                pattern = re.compile(rule["pattern"])
            except re.error as exc:
                raise ScriptError(f"rules[{i}].pattern: not a valid regex ({exc})") from None
            calls = rule.get("calls", [])
            if not isinstance(calls, list) or not all(
                isinstance(c, dict) and isinstance(c.get("tool"), str) for c in calls
            ):
                raise ScriptError(f"rules[{i}].calls: must be a list of {{tool, arguments}}")
            if not isinstance(rule.get("answer"), str):
                raise ScriptError(f"rules[{i}].answer: must be a string template")
            self.rules.append((pattern, rule))

    @classmethod
    def from_folder(cls, folder: Path) -> ScriptedChatPolicy:
        path = folder / RULES_FILE if folder.is_dir() else folder
        return cls(json.loads(path.read_text(encoding="utf-8")))

    def respond(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[str] | None
    ) -> ScriptedReply:
        """The reply to ``messages`` (OpenAI message dicts) with ``tools`` (names) on offer."""
        last_user = max(
            (i for i, m in enumerate(messages) if m.get("role") == "user"), default=None
        )
        if last_user is None:
            return ScriptedReply(self.fallback)
        question = _content_text(messages[last_user].get("content"))
        results: list[Any] = []
        for m in messages[last_user + 1 :]:
            if m.get("role") == "tool":
                text = _content_text(m.get("content"))
                try:
                    results.append(json.loads(text))
                except ValueError:
                    results.append(text)
        for pattern, rule in self.rules:
            match = pattern.search(question)
            if match is None:
                continue
            groups = {k: v for k, v in match.groupdict().items() if v is not None}
            for result in results:
                if isinstance(result, dict) and set(result) >= {"error"} and len(result) <= 2:
                    template = rule.get("on_error") or "I could not answer that: {error}"
                    return ScriptedReply(fill(template, {**groups, **result}, results))
            calls = rule.get("calls", [])
            offered = set(tools or ())
            missing = [c["tool"] for c in calls if c["tool"] not in offered]
            if missing:
                return ScriptedReply(
                    f"I cannot answer that here: the tool(s) {', '.join(missing)} are not "
                    "available to me (writes need --allow-writes and a writer token)."
                )
            if len(results) < len(calls):
                call = calls[len(results)]
                arguments = fill(call.get("arguments", {}), groups, results)
                return ScriptedReply(None, [{"name": call["tool"], "arguments": arguments}])
            return ScriptedReply(fill(rule["answer"], groups, results))
        return ScriptedReply(self.fallback)


# -- serving behind /v1 (llm-api's ChatBackend protocol) ---------------------------------------


class ScriptedChatBackend:
    """``ScriptedChatPolicy`` behind ``/v1``: byte tokens in, the reply's text out."""

    supports_constraints = False
    vocab_size = 257
    eos_token_ids = (256,)
    max_model_len = 1_000_000

    def __init__(self, policy: ScriptedChatPolicy) -> None:
        self.policy = policy

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int]:
        """The conversation from the last user message on, and the offered tool names, as bytes
        (the policy needs nothing else, so a long tool list costs no prompt tokens)."""
        last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=0)
        compact = [
            {"role": m.get("role"), "content": _content_text(m.get("content"))}
            for m in messages[last_user:]
        ]
        names = [t.get("function", {}).get("name") for t in tools or []]
        return list(json.dumps({"messages": compact, "tools": names}).encode())

    def encode(self, text: str) -> list[int]:
        return list(text.encode())

    def decode(self, token_ids: Sequence[int]) -> str:
        return bytes(t for t in token_ids if t < 256).decode("utf-8", errors="replace")

    def grammar_tokenizer(self) -> None:
        return None

    def reply(self, prompt_token_ids: list[int]) -> ScriptedReply:
        data = json.loads(self.decode(prompt_token_ids))
        return self.policy.respond(data.get("messages", []), data.get("tools"))

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: Any,
        constraint: Any = None,
        request_id: str | None = None,
    ) -> AsyncIterator[Any]:
        """The reply as token events, one per UTF-8 character; ``max_tokens`` is honoured."""
        from flywheel.serving.llm._types import TokenEvent

        text = self.reply(prompt_token_ids).as_text()
        limit = getattr(params, "max_tokens", None) or len(text.encode())
        n_prompt = len(prompt_token_ids)
        done = 0
        for ch in text:
            size = len(ch.encode())
            if done + size > limit:
                yield TokenEvent(None, "", None, None, "length", n_prompt, done, 0)
                return
            done += size
            yield TokenEvent(ch.encode()[-1], ch, None, None, None, n_prompt, done, 0)
        yield TokenEvent(None, "", None, None, "stop", n_prompt, done, 0)

    def stats(self) -> None:
        return None

    def close(self) -> None:
        return None


def load_backend(folder: Path, mv: Any = None, *, device: str = "cpu") -> ScriptedChatBackend:
    """The ``CHAT_BACKENDS`` hook for flavor ``scripted-chat``: the rules file in ``folder``."""
    return ScriptedChatBackend(ScriptedChatPolicy.from_folder(folder))


__all__ = [
    "RULES_FILE",
    "ScriptError",
    "ScriptedChatBackend",
    "ScriptedChatPolicy",
    "ScriptedReply",
    "fill",
    "load_backend",
]
