"""Constrained decoding on the CPU: xgrammar vs llguidance on the tiny model's vocabulary.

For each library and grammar (``json_object``, a JSON schema with nested fields, a forced tool
call ``<tool_call>{...}</tool_call>``), measured in one run on the same tokenizer:

* tokenizer preparation (once per model) and grammar compilation (once per schema), ms;
* the per-token mask: filling the next-token bitmask and expanding it to a boolean mask over
  the vocabulary (what the engine applies to the logits every constrained step), us p50/p99,
  over the tokens of a valid answer fed one at a time.

The answers are checked for both libraries: every token of the valid answer must be allowed,
the answer must complete the grammar (stop token accepted), and a token that breaks the JSON
must be refused. llguidance is no longer a dependency of the project (xgrammar was chosen on
these figures); install it (``pip install llguidance==1.9.1``) to compare again.
Usage: ``python benchmarks/llm_grammar.py [--model-dir DIR] [--repeats N] [--smoke]``
(default: the tiny model's tokenizer, trained here in about a second).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SCHEMA = {
    "type": "object",
    "properties": {
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "stages": {"type": "array", "items": {"type": "string"}},
        "metrics": {
            "type": "object",
            "properties": {"auc": {"type": "number"}, "healthy": {"type": "boolean"}},
            "required": ["auc", "healthy"],
            "additionalProperties": False,
        },
    },
    "required": ["model", "version", "stages", "metrics"],
    "additionalProperties": False,
}
SCHEMA_ANSWER = {
    "model": "ranker",
    "version": 3,
    "stages": ["production", "canary"],
    "metrics": {"auc": 0.81, "healthy": True},
}
TOOL = {
    "type": "function",
    "function": {
        "name": "get_endpoint",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "window": {"type": "string"}},
            "required": ["name"],
            "additionalProperties": False,
        },
    },
}
TOOL_ANSWER = (
    '<tool_call>{"name": "get_endpoint", "arguments": {"name": "shop", "window": "1h"}}</tool_call>'
)
OBJECT_ANSWER = json.dumps({"answer": "the canary is healthy", "requests": 1200})


def tokenizer_of(model_dir: str | None) -> Any:
    if model_dir:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(model_dir)
    from flywheel.serving.llm._tiny import _train_tokenizer

    return _train_tokenizer(0)


def _expand(bits: torch.Tensor, shifts: torch.Tensor, vocab: int) -> torch.Tensor:
    return ((bits.unsqueeze(-1) >> shifts) & 1).bool().flatten()[:vocab]


def _call_schema() -> dict[str, Any]:
    fn = TOOL["function"]
    return {
        "type": "object",
        "properties": {"name": {"const": fn["name"]}, "arguments": fn["parameters"]},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }


class XGrammar:
    name = "xgrammar"

    def __init__(self, tokenizer: Any, vocab: int, eos: int) -> None:
        import xgrammar as xgr

        self.xgr, self.vocab = xgr, vocab
        start = time.perf_counter()
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab, stop_token_ids=[eos])
        self.compiler = xgr.GrammarCompiler(info, max_threads=1, cache_enabled=False)
        self.prepare_ms = 1000 * (time.perf_counter() - start)

    def compile(self, kind: str) -> Any:
        xgr = self.xgr
        if kind == "json_object":
            return self.compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
        if kind == "json_schema":
            return self.compiler.compile_json_schema(json.dumps(SCHEMA), any_whitespace=False)
        body = xgr.Grammar.from_json_schema(json.dumps(_call_schema()), any_whitespace=False)
        grammar = xgr.Grammar.concat(
            xgr.Grammar.from_ebnf('root ::= "<tool_call>"'),
            body,
            xgr.Grammar.from_ebnf('root ::= "</tool_call>"'),
        )
        return self.compiler.compile_grammar(grammar)

    def matcher(self, compiled: Any) -> tuple[Callable[[], torch.Tensor], Callable[[int], bool]]:
        matcher = self.xgr.GrammarMatcher(compiled)
        bitmask = self.xgr.allocate_token_bitmask(1, self.vocab)
        shifts = torch.arange(32, dtype=torch.int32)

        def mask() -> torch.Tensor:
            matcher.fill_next_token_bitmask(bitmask)
            return _expand(bitmask[0], shifts, self.vocab)

        return mask, lambda t: bool(matcher.accept_token(t))


# The same JSON layout xgrammar's compact mode produces (json.dumps' default separators).
COMPACT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class LLGuidance:
    name = "llguidance"

    def __init__(self, tokenizer: Any, vocab: int, eos: int) -> None:
        import llguidance
        import llguidance.hf
        import llguidance.torch

        self.llg, self.vocab = llguidance, vocab
        start = time.perf_counter()
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab, eos_token=eos)
        self.prepare_ms = 1000 * (time.perf_counter() - start)

    def compile(self, kind: str) -> Any:
        llg = self.llg
        if kind == "json_object":
            grammar = llg.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=COMPACT)
        elif kind == "json_schema":
            grammar = llg.LLMatcher.grammar_from_json_schema(SCHEMA, defaults=COMPACT)
        else:
            # <tool_call> is an added (non-special) token: llguidance names it as a token.
            schema = {**_call_schema(), "x-guidance": COMPACT}
            lark = f"start: <tool_call> call </tool_call>\ncall: %json {json.dumps(schema)}\n"
            grammar = llg.LLMatcher.grammar_from_lark(lark)
        matcher = llg.LLMatcher(self.tokenizer, grammar)  # compilation happens here
        if matcher.is_error():
            raise RuntimeError(matcher.get_error())
        return grammar

    def matcher(self, grammar: Any) -> tuple[Callable[[], torch.Tensor], Callable[[int], bool]]:
        import llguidance.torch as lt

        matcher = self.llg.LLMatcher(self.tokenizer, grammar)
        bitmask = lt.allocate_token_bitmask(1, self.vocab)
        shifts = torch.arange(32, dtype=torch.int32)

        def mask() -> torch.Tensor:
            lt.fill_next_token_bitmask(matcher, bitmask, 0)
            return _expand(bitmask[0], shifts, self.vocab)

        return mask, lambda t: bool(matcher.consume_token(t))


def measure(
    lib: Any, kind: str, answer: list[int], eos: int, bad: int, repeats: int
) -> dict[str, Any]:
    compile_ms = []
    for _ in range(repeats):
        start = time.perf_counter()
        compiled = lib.compile(kind)
        compile_ms.append(1000 * (time.perf_counter() - start))
    mask_us: list[float] = []
    ok = True
    for _ in range(repeats):
        mask, accept = lib.matcher(compiled)
        for token in [*answer, eos]:
            start = time.perf_counter()
            allowed = mask()
            mask_us.append(1e6 * (time.perf_counter() - start))
            ok = ok and bool(allowed[token]) and accept(token)
        # the answer's first token is allowed; a token that breaks the JSON is refused
        mask, _ = lib.matcher(compiled)
        ok = ok and not bool(mask()[bad])
    mask_us.sort()
    return {
        "compile_ms": statistics.median(compile_ms),
        "mask_p50_us": mask_us[len(mask_us) // 2],
        "mask_p99_us": mask_us[min(len(mask_us) - 1, int(0.99 * len(mask_us)))],
        "tokens": len(answer) + 1,
        "answers_ok": ok,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", default=None, help="A Hugging Face folder (tokenizer)")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--smoke", action="store_true", help="2 repeats (CI: every path runs)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.repeats = 2
    torch.set_num_threads(1)
    tokenizer = tokenizer_of(args.model_dir)
    vocab = len(tokenizer)
    eos = int(tokenizer.eos_token_id)
    answers = {
        "json_object": tokenizer.encode(OBJECT_ANSWER, add_special_tokens=False),
        "json_schema": tokenizer.encode(json.dumps(SCHEMA_ANSWER), add_special_tokens=False),
        "tool_call": tokenizer.encode(TOOL_ANSWER, add_special_tokens=False),
    }
    bad = tokenizer.encode("]", add_special_tokens=False)[0]  # never a valid first token
    print(f"vocabulary: {vocab} tokens ({'given folder' if args.model_dir else 'tiny model'}); "
          f"torch threads 1; {args.repeats} repeats")  # fmt: skip
    header = f"{'library':<11} {'grammar':<12} {'prepare ms':>10} {'compile ms':>10} "
    header += f"{'mask p50 us':>11} {'mask p99 us':>11} {'tokens':>6}  answers"
    print(header)
    failed = False
    for cls in (XGrammar, LLGuidance):
        try:
            lib = cls(tokenizer, vocab, eos)
        except ImportError:
            print(
                f"{cls.name:<11} not installed: the project depends on xgrammar only since "
                "this comparison; `pip install llguidance==1.9.1` to run it again"
            )
            continue
        for kind, answer in answers.items():
            r = measure(lib, kind, answer, eos, bad, args.repeats)
            failed = failed or not r["answers_ok"]
            print(
                f"{lib.name:<11} {kind:<12} {lib.prepare_ms:>10.1f} {r['compile_ms']:>10.2f} "
                f"{r['mask_p50_us']:>11.1f} {r['mask_p99_us']:>11.1f} {r['tokens']:>6}  "
                f"{'ok' if r['answers_ok'] else 'WRONG'}"
            )
    load = os.getloadavg()
    print(f"load average: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (shared machine: noisy)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    raise SystemExit(main())
