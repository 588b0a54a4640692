"""Constrained decoding with ``xgrammar``: JSON objects, JSON schemas and forced tool calls.

Chosen over ``llguidance`` by measurement on this vocabulary (``benchmarks/llm_grammar_bench.py``
prints both; figures in ``docs/llm.md``): its per-token mask is several times cheaper on the
CPU, which is what every constrained token pays; both compile these grammars in milliseconds.

``Grammars(tokenizer, vocab_size, stop_token_ids)`` compiles against one model's tokenizer
(compiled grammars are cached by xgrammar, keyed by the schema text). ``constraint(compiled)``
makes a fresh per-request ``GrammarConstraint``, the engine's ``TokenConstraint``: ``allowed()``
is the boolean mask of tokens that keep the output inside the grammar, ``accept(token)``
advances it, ``is_terminated()`` is true once the grammar accepted a stop token.

JSON is compact (no free whitespace between tokens): a small model left free to emit
whitespace can loop on it until ``max_tokens``.
"""

from __future__ import annotations

import json
from typing import Any

import torch


class InvalidGrammar(ValueError):
    """A JSON schema (or tool parameters) that cannot be compiled; the message says why."""


class GrammarConstraint:
    """The engine's ``TokenConstraint`` over one xgrammar matcher (one request)."""

    def __init__(self, compiled: Any, vocab_size: int) -> None:
        import xgrammar as xgr

        self._matcher = xgr.GrammarMatcher(compiled)
        self._bitmask = xgr.allocate_token_bitmask(1, vocab_size)
        self._vocab_size = vocab_size
        self._shifts = torch.arange(32, dtype=torch.int32)
        self.rejected = False  # a token the grammar did not allow was accepted

    def allowed(self) -> torch.Tensor | None:
        if self._matcher.is_terminated():
            return None
        self._matcher.fill_next_token_bitmask(self._bitmask)
        bits = self._bitmask[0]
        mask = ((bits.unsqueeze(-1) >> self._shifts) & 1).bool().flatten()
        return mask[: self._vocab_size]

    def accept(self, token_id: int) -> None:
        if self._matcher.is_terminated():
            return
        if not self._matcher.accept_token(int(token_id)):
            self.rejected = True

    def is_terminated(self) -> bool:
        return bool(self._matcher.is_terminated())


def _call_schema(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function", tool)
    params = fn.get("parameters") or {"type": "object"}
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": params},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


class Grammars:
    """Compiles grammars for one tokenizer (see the module docstring)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: tuple[int, ...]) -> None:
        import xgrammar as xgr

        self._xgr = xgr
        self.vocab_size = vocab_size
        info = xgr.TokenizerInfo.from_huggingface(
            tokenizer, vocab_size=vocab_size, stop_token_ids=list(stop_token_ids) or None
        )
        self._compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=True)

    def constraint(self, compiled: Any) -> GrammarConstraint:
        return GrammarConstraint(compiled, self.vocab_size)

    def json_object(self) -> Any:
        """Any JSON object."""
        return self.json_schema({"type": "object"})

    def json_schema(self, schema: dict[str, Any]) -> Any:
        """Output valid against ``schema`` (``InvalidGrammar`` when it cannot be compiled)."""
        try:
            return self._compiler.compile_json_schema(
                json.dumps(schema), any_whitespace=False, strict_mode=True
            )
        except Exception as exc:  # xgrammar raises RuntimeError / ValueError with the reason
            raise InvalidGrammar(f"the JSON schema cannot be used: {exc}") from None

    def tool_call(self, tools: list[dict[str, Any]]) -> Any:
        """Exactly one ``<tool_call>{"name": ..., "arguments": ...}</tool_call>`` naming one of
        ``tools``, its arguments valid against that tool's parameters."""
        xgr = self._xgr
        schema = {"anyOf": [_call_schema(t) for t in tools]}
        try:
            body = xgr.Grammar.from_json_schema(
                json.dumps(schema), any_whitespace=False, strict_mode=True
            )
            grammar = xgr.Grammar.concat(
                xgr.Grammar.from_ebnf('root ::= "<tool_call>"'),
                body,
                xgr.Grammar.from_ebnf('root ::= "</tool_call>"'),
            )
            return self._compiler.compile_grammar(grammar)
        except Exception as exc:
            raise InvalidGrammar(f"the tools' parameters cannot be used: {exc}") from None


__all__ = ["GrammarConstraint", "Grammars", "InvalidGrammar"]
