"""The tool-call text convention: whole answers and streams cut at every possible point."""

from __future__ import annotations

import itertools
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flywheel.serving.llm._chat import ToolCallStream, normalize_messages, split_tool_calls

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Oslo"}}</tool_call>'
TEXT = f"Let me look. {CALL} and {CALL.replace('Oslo', 'Lima')}<tool_call>not json</tool_call>"


def _stream(text: str, cuts: list[int]) -> tuple[str, list[tuple[str, str]]]:
    parser = ToolCallStream()
    content: list[str] = []
    calls = []
    points = sorted({c % (len(text) + 1) for c in cuts} | {0, len(text)})
    for start, end in itertools.pairwise(points):
        out, new = parser.feed(text[start:end])
        content.append(out)
        calls += new
    content.append(parser.finish())
    return "".join(content), [(c.name, c.arguments) for c in calls]


def test_split_whole_answer() -> None:
    content, calls = split_tool_calls(TEXT)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        ("get_weather", {"city": "Oslo"}),
        ("get_weather", {"city": "Lima"}),
    ]
    assert content == "Let me look.  and <tool_call>not json</tool_call>"
    assert len({c.id for c in calls}) == 2


@given(st.lists(st.integers(min_value=0, max_value=len(TEXT)), max_size=12))
def test_stream_equals_whole_answer_wherever_it_is_cut(cuts: list[int]) -> None:
    content, calls = split_tool_calls(TEXT)
    assert _stream(TEXT, cuts) == (content, [(c.name, c.arguments) for c in calls])


def test_unclosed_block_is_content_at_the_end() -> None:
    text = 'ok <tool_call>{"name": "f", "argu'
    assert _stream(text, [4, 9]) == (text, [])


def test_normalize_messages() -> None:
    out = normalize_messages(
        [
            {"role": "developer", "content": [{"type": "text", "text": "be brief"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "f", "arguments": '{"a": 1}'}}
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "2"},
        ]
    )  # fmt: skip
    assert out[0] == {"role": "system", "content": "be brief"}
    assert out[1]["tool_calls"][0]["function"] == {"name": "f", "arguments": {"a": 1}}
    assert out[2] == {"role": "tool", "content": "2", "tool_call_id": "c1"}
    with pytest.raises(ValueError, match=r"messages\[0\]\.role 'robot'"):
        normalize_messages([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match=r"arguments is not JSON"):
        normalize_messages(
            [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}]
        )
