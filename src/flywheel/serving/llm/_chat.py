"""Chat messages in, tool calls out: the text convention between chat templates and ``/v1``.

Models (the tiny model's template, the scripted model) write a tool call as text::

    <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>

possibly several in one answer. ``split_tool_calls`` turns a finished answer into its content
and OpenAI ``tool_calls``; ``ToolCallStream`` does the same for a stream of text deltas,
holding back only what might still become a ``<tool_call>`` tag. A block whose body is not a
JSON object with a string ``name`` and an object ``arguments`` stays content, as written.

``normalize_messages`` turns OpenAI request messages into what chat templates expect (content
parts joined to text, ``tool_calls[].function.arguments`` parsed from its JSON string).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

OPEN_TAG = "<tool_call>"
CLOSE_TAG = "</tool_call>"


@dataclass(frozen=True)
class ToolCall:
    """One parsed call: ``arguments`` is the JSON text of an object (as OpenAI sends it)."""

    id: str
    name: str
    arguments: str

    def to_openai(self, index: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }
        if index is not None:
            out = {"index": index, **out}
        return out


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def parse_call_body(body: str) -> ToolCall | None:
    """The call in the text between the tags, or None when it is not a well-formed call."""
    try:
        data = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    name, arguments = data.get("name"), data.get("arguments", {})
    if isinstance(arguments, str):  # some models write the arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except json.JSONDecodeError:
            return None
    if not isinstance(name, str) or not name or not isinstance(arguments, dict):
        return None
    return ToolCall(new_call_id(), name, json.dumps(arguments, ensure_ascii=False))


def split_tool_calls(text: str) -> tuple[str, list[ToolCall]]:
    """(content without the well-formed call blocks, the calls in order)."""
    content: list[str] = []
    calls: list[ToolCall] = []
    pos = 0
    while True:
        start = text.find(OPEN_TAG, pos)
        if start < 0:
            content.append(text[pos:])
            break
        end = text.find(CLOSE_TAG, start + len(OPEN_TAG))
        if end < 0:
            content.append(text[pos:])
            break
        call = parse_call_body(text[start + len(OPEN_TAG) : end])
        if call is None:
            content.append(text[pos : end + len(CLOSE_TAG)])
        else:
            content.append(text[pos:start])
            calls.append(call)
        pos = end + len(CLOSE_TAG)
    return "".join(content), calls


def _partial_tag_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


class ToolCallStream:
    """Incremental ``split_tool_calls``: feed text deltas, get content deltas and calls.

    ``feed(delta)`` returns ``(content, calls)`` ready to send now; ``finish()`` returns what
    was held back (an unclosed block is content).
    """

    def __init__(self) -> None:
        self._pending = ""  # text not yet released (a possible tag start, or an open block)
        self._in_call = False
        self.calls: list[ToolCall] = []

    def feed(self, delta: str) -> tuple[str, list[ToolCall]]:
        self._pending += delta
        out: list[str] = []
        calls: list[ToolCall] = []
        while True:
            if not self._in_call:
                start = self._pending.find(OPEN_TAG)
                if start < 0:
                    keep = _partial_tag_suffix(self._pending, OPEN_TAG)
                    cut = len(self._pending) - keep
                    out.append(self._pending[:cut])
                    self._pending = self._pending[cut:]
                    break
                out.append(self._pending[:start])
                self._pending = self._pending[start:]
                self._in_call = True
            end = self._pending.find(CLOSE_TAG, len(OPEN_TAG))
            if end < 0:
                break
            block = self._pending[: end + len(CLOSE_TAG)]
            self._pending = self._pending[end + len(CLOSE_TAG) :]
            self._in_call = False
            call = parse_call_body(block[len(OPEN_TAG) : -len(CLOSE_TAG)])
            if call is None:
                out.append(block)
            else:
                calls.append(call)
        self.calls.extend(calls)
        return "".join(out), calls

    def finish(self) -> str:
        rest, self._pending, self._in_call = self._pending, "", False
        return rest


def _text_of(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise ValueError(
                    f"{where}.content[{i}]: only text parts are supported, not {kind!r}"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise ValueError(f"{where}.content must be a string or a list of text parts")


def normalize_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as chat templates take them (see the module docstring).

    Raises ``ValueError`` naming the message (``messages[i]...``) and the reason.
    """
    out: list[dict[str, Any]] = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        role = msg.get("role")
        if role == "developer":
            role = "system"
        if role not in ("system", "user", "assistant", "tool"):
            raise ValueError(
                f"{where}.role {role!r} must be one of system, developer, user, assistant, tool"
            )
        item: dict[str, Any] = {"role": role, "content": _text_of(msg.get("content"), where)}
        if role == "assistant" and msg.get("tool_calls"):
            calls = []
            for j, call in enumerate(msg["tool_calls"]):
                fn = call.get("function") if isinstance(call, dict) else None
                if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                    raise ValueError(f"{where}.tool_calls[{j}].function.name is missing")
                args = fn.get("arguments", "{}")
                if isinstance(args, str):
                    try:
                        args = json.loads(args or "{}")
                    except json.JSONDecodeError as exc:
                        raise ValueError(
                            f"{where}.tool_calls[{j}].function.arguments is not JSON: {exc}"
                        ) from None
                calls.append(
                    {
                        "id": call.get("id"),
                        "type": "function",
                        "function": {"name": fn["name"], "arguments": args},
                    }
                )
            item["tool_calls"] = calls
        if role == "tool" and msg.get("tool_call_id") is not None:
            item["tool_call_id"] = msg["tool_call_id"]
        out.append(item)
    return out


__all__ = [
    "CLOSE_TAG",
    "OPEN_TAG",
    "ToolCall",
    "ToolCallStream",
    "new_call_id",
    "normalize_messages",
    "parse_call_body",
    "split_tool_calls",
]
