"""LLM engine benchmark: Flywheel's engine vs Hugging Face ``transformers`` ``generate()``.

Run with ``make bench-llm`` (or ``.venv/bin/python benchmarks/llm_bench.py``; ``--smoke`` for a
seconds-long run of every code path at toy sizes, as CI does).

One model shape for everything (random weights, seeded; no download): a Llama decoder of
hidden 384, 6 layers, 6 heads (head dim 64), 2 KV heads, MLP 1,024, 16,384-entry vocabulary
(tied embeddings; the tokenizer is the tiny model's 512-token BPE, the rest of the vocabulary is
padding, as many real models pad theirs), float32 on the CPU. Weights are drawn with a wider
spread than usual (std 0.1) so that greedy choices are not near-ties and the peer's greedy
outputs can be compared with ours token for token.

1. Throughput and latency at concurrency 1, 8 and 32: ``c`` clients, each sending ``rounds``
   requests one after the other (closed loop), short prompts (32 tokens), 64 output tokens
   (``ignore_eos``), greedy. Served by
   * Flywheel's ``LLMEngine`` (continuous batching, streamed; the clock runs from each request's
     arrival to its first streamed token and to its end);
   * ``generate()`` one request at a time (a FIFO server: a request waits for those before it);
   * ``generate()`` statically batched: the waiting requests (up to ``c``) padded left into one
     batch that runs to its longest member.
   Output tokens/s over the whole run, time to first token p50/p99 (queueing included), time
   per output token (mean over requests, after the first token). The peer's greedy tokens are
   checked against ours.
2. Prefix cache: 8 requests with the same 500-token system prompt and different 16-token user
   turns, one after the other, with the prefix cache on and off: prompt tokens actually computed
   and prefill time (time to first token) of the repeats.
3. Constrained vs unconstrained decoding at concurrency 8, sampled: a JSON schema compiled by
   the grammar module ``/v1`` uses for ``response_format`` (xgrammar), its mask applied through
   the engine's ``TokenConstraint`` hook every step.

Figures depend on the load of this shared 2-core machine; the load average is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

SHAPE = {
    "hidden_size": 384,
    "intermediate_size": 1024,
    "num_hidden_layers": 6,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
    "vocab_size": 16384,
    "max_position_embeddings": 2048,
}
SMOKE_SHAPE = {
    **SHAPE,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "vocab_size": 1024,
}


@dataclass
class Sizes:
    concurrency: tuple[int, ...]
    rounds: dict[int, int]
    prompt_len: int
    output_len: int
    system_len: int
    prefix_requests: int
    constrained_tokens: int


FULL = Sizes((1, 8, 32), {1: 4, 8: 3, 32: 1}, 32, 64, 500, 8, 48)
SMOKE = Sizes((1, 4), {1: 1, 4: 1}, 8, 6, 40, 3, 8)


@dataclass
class RequestRecord:
    arrival: float
    first_token: float
    finish: float
    tokens: list[int]


# --------------------------------------------------------------------------- the model


def build_model(folder: Path, shape: dict[str, Any]) -> Path:
    """Random weights at ``shape`` (seeded) with the tiny model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from flywheel.serving.llm import build_tiny_model

    tiny = build_tiny_model(folder / "tokenizer-source", steps=0)
    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(
        **shape,
        tie_word_embeddings=True,
        initializer_range=0.1,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = folder / "bench-model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def prompts(count: int, length: int, seed: int, vocab: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (length,), generator=g).tolist() for _ in range(count)]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def summarize(name: str, c: int, records: list[RequestRecord], wall: float) -> dict[str, Any]:
    tokens = sum(len(r.tokens) for r in records)
    ttft = [r.first_token - r.arrival for r in records]
    tpot = [(r.finish - r.first_token) / (len(r.tokens) - 1) for r in records if len(r.tokens) > 1]
    return {
        "server": name,
        "concurrency": c,
        "requests": len(records),
        "tokens_per_s": tokens / wall,
        "ttft_p50_ms": 1000 * percentile(ttft, 50),
        "ttft_p99_ms": 1000 * percentile(ttft, 99),
        "tpot_ms": 1000 * statistics.fmean(tpot) if tpot else float("nan"),
    }


# --------------------------------------------------------------------------- servers


def run_engine(engine: Any, work: list[list[list[int]]], max_tokens: int) -> tuple[list, float]:
    """``work[client]`` = that client's prompts, sent one after the other; all clients at once."""
    from flywheel.serving.llm import SamplingParams

    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)

    async def client(prompts_: list[list[int]]) -> list[RequestRecord]:
        out = []
        for prompt in prompts_:
            arrival = time.perf_counter()
            first = None
            tokens: list[int] = []
            async for event in engine.generate(prompt, params):
                if event.token_id is not None:
                    if first is None:
                        first = time.perf_counter()
                    tokens.append(event.token_id)
            out.append(
                RequestRecord(arrival, first or time.perf_counter(), time.perf_counter(), tokens)
            )
        return out

    async def main() -> list[list[RequestRecord]]:
        return await asyncio.gather(*(client(p) for p in work))

    start = time.perf_counter()
    per_client = asyncio.run(main())
    return per_client, time.perf_counter() - start


class _FirstTokenClock:
    """A ``generate()`` streamer that notes when the first new tokens come out."""

    def __init__(self) -> None:
        self.calls = 0
        self.first: float | None = None

    def put(self, value: Any) -> None:
        self.calls += 1
        if self.calls == 2:  # the first call carries the prompt
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


def hf_generate(model: Any, batch: list[list[int]], max_tokens: int, pad: int) -> tuple:
    width = max(len(p) for p in batch)
    ids = torch.full((len(batch), width), pad, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, p in enumerate(batch):  # left padding, as decoder-only batching needs
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    clock = _FirstTokenClock()
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_tokens,
            min_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=pad,
            streamer=clock,
        )
    done = time.perf_counter()
    return [row[width:].tolist() for row in out], clock.first or done, done


def run_hf(
    model: Any, work: list[list[list[int]]], max_tokens: int, batch_size: int, pad: int
) -> tuple[list[list[RequestRecord]], float]:
    """Closed loop against a server that runs ``generate()`` on up to ``batch_size`` waiting
    requests at a time (1 = one request at a time), FIFO."""
    start = time.perf_counter()
    queue: list[tuple[int, int, float]] = [(c, 0, start) for c in range(len(work))]
    records: list[list[RequestRecord]] = [[] for _ in work]
    while queue:
        batch, queue = queue[:batch_size], queue[batch_size:]
        outs, first, done = hf_generate(model, [work[c][k] for c, k, _ in batch], max_tokens, pad)
        for (c, k, arrival), tokens in zip(batch, outs, strict=True):
            records[c].append(RequestRecord(arrival, first, done, tokens))
            if k + 1 < len(work[c]):
                queue.append((c, k + 1, done))
    return records, time.perf_counter() - start


# --------------------------------------------------------------------------- sections


def throughput(model_dir: Path, sizes: Sizes, vocab: int) -> tuple[list[dict[str, Any]], str, int]:
    from transformers import AutoModelForCausalLM

    from flywheel.serving.llm import LLMEngine

    engine = LLMEngine(model_dir, max_num_seqs=max(sizes.concurrency))
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pad = engine.tokenizer.pad_token_id
    rows: list[dict[str, Any]] = []
    mismatches = compared = 0
    warm = prompts(2, sizes.prompt_len, 99, vocab)
    run_engine(engine, [warm], 4)
    run_hf(hf, [warm], 4, 1, pad)
    for c in sizes.concurrency:
        rounds = sizes.rounds[c]
        flat = prompts(c * rounds, sizes.prompt_len, c, vocab)
        work = [flat[i * rounds : (i + 1) * rounds] for i in range(c)]
        ours, wall = run_engine(engine, work, sizes.output_len)
        rows.append(summarize("flywheel engine", c, [r for rs in ours for r in rs], wall))
        peers = [("generate() one at a time", 1)] + ([("generate() static batch", c)] * (c > 1))
        for name, batch in peers:
            peer, wall = run_hf(hf, work, sizes.output_len, batch, pad)
            rows.append(summarize(name, c, [r for rs in peer for r in rs], wall))
            for mine, theirs in zip(ours, peer, strict=True):
                for a, b in zip(mine, theirs, strict=True):
                    compared += 1
                    mismatches += a.tokens != b.tokens
    engine.close()
    check = f"greedy outputs equal to generate()'s: {compared - mismatches}/{compared} requests"
    return rows, check, mismatches


def prefix_cache(model_dir: Path, sizes: Sizes, vocab: int) -> list[dict[str, Any]]:
    from flywheel.serving.llm import LLMEngine, SamplingParams

    system = prompts(1, sizes.system_len, 7, vocab)[0]
    users = prompts(sizes.prefix_requests, 16, 8, vocab)
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    rows = []
    outputs = {}
    for enabled in (False, True):
        engine = LLMEngine(model_dir, enable_prefix_caching=enabled)
        engine.generate_blocking([(prompts(1, 40, 3, vocab)[0], params)])  # warm-up
        computed, ttft, outs = [], [], []
        for user in users:
            before = engine.stats().prompt_tokens_computed
            done = engine.generate_blocking([(system + user, params)])[0]
            computed.append(engine.stats().prompt_tokens_computed - before)
            assert done.metrics is not None and done.metrics.ttft_s is not None
            ttft.append(done.metrics.ttft_s)
            outs.append(done.token_ids)
        engine.close()
        outputs[enabled] = outs
        rows.append(
            {
                "prefix cache": "on" if enabled else "off",
                "prompt_tokens": len(system) + 16,
                "first_computed": computed[0],
                "repeat_computed": statistics.fmean(computed[1:]),
                "first_ttft_ms": 1000 * ttft[0],
                "repeat_ttft_ms": 1000 * statistics.fmean(ttft[1:]),
            }
        )
    off, on = rows
    on["work_cut_repeats"] = 1 - on["repeat_computed"] / off["repeat_computed"]
    on["work_cut_all"] = 1 - (on["first_computed"] + on["repeat_computed"] * (len(users) - 1)) / (
        off["first_computed"] + off["repeat_computed"] * (len(users) - 1)
    )
    on["same_outputs"] = outputs[True] == outputs[False]
    return rows


def constrained(model_dir: Path, sizes: Sizes, vocab: int) -> list[dict[str, Any]]:
    # The grammar side that /v1 uses for response_format json_schema (xgrammar, compact JSON).
    from flywheel.serving.llm import LLMEngine, SamplingParams
    from flywheel.serving.llm._grammar import Grammars

    engine = LLMEngine(model_dir)
    grammars = Grammars(engine.tokenizer, engine.vocab_size, engine.eos_token_ids)
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
            "score": {"type": "number"},
        },
        "required": ["name", "tags", "score"],
    }
    compiled = grammars.json_schema(schema)
    c = 8
    work = prompts(c, sizes.prompt_len, 11, vocab)
    rows = []
    for kind in ("unconstrained", "json_schema (xgrammar)"):
        params = SamplingParams(
            max_tokens=sizes.constrained_tokens,
            temperature=1.0,
            seed=1,
            ignore_eos=kind == "unconstrained",
        )
        cons = [grammars.constraint(compiled) if kind != "unconstrained" else None for _ in work]
        start = time.perf_counter()
        outs = engine.generate_blocking([(p, params) for p in work], constraints=cons)
        wall = time.perf_counter() - start
        tokens = sum(len(o.token_ids) for o in outs)
        rows.append(
            {"decoding": kind, "concurrency": c, "tokens": tokens, "tokens_per_s": tokens / wall}
        )
    engine.close()
    return rows


# --------------------------------------------------------------------------- output


def table(rows: list[dict[str, Any]]) -> str:
    keys = list(rows[0])
    cells = [[_fmt(r.get(k, "")) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    lines = [" | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True))]
    lines.append("-|-".join("-" * w for w in widths))
    lines += [" | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:,.1f}" if isinstance(value, float) else str(value)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="toy sizes, seconds (CI)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    sizes, shape = (SMOKE, SMOKE_SHAPE) if args.smoke else (FULL, SHAPE)
    threads = torch.get_num_threads()
    load_start = os.getloadavg()
    print(
        f"load average at start: {load_start[0]:.2f} {load_start[1]:.2f} {load_start[2]:.2f} "
        f"(shared 2-core machine: figures vary with it); torch threads {threads}"
    )
    with tempfile.TemporaryDirectory(prefix="llm-bench-") as tmp:
        model_dir = build_model(Path(tmp), shape)
        params = sum(t.numel() for t in load_file(model_dir / "model.safetensors").values())
        print(
            f"model: Llama, hidden {shape['hidden_size']}, {shape['num_hidden_layers']} layers, "
            f"{shape['num_attention_heads']} heads / {shape['num_key_value_heads']} KV heads, "
            f"MLP {shape['intermediate_size']}, vocab {shape['vocab_size']}, "
            f"{params / 1e6:.1f}M parameters, float32, CPU, random weights (seed 0)"
        )
        vocab = 500  # prompt token ids drawn from the real tokenizer entries
        rows, check, mismatches = throughput(model_dir, sizes, vocab)
        print(
            f"\n## Throughput and latency ({sizes.prompt_len}-token prompts, "
            f"{sizes.output_len} output tokens, greedy, closed loop)"
        )
        print(table(rows))
        print(check)
        prefix = prefix_cache(model_dir, sizes, vocab)
        print(
            f"\n## Prefix cache ({sizes.system_len}-token system prompt repeated, "
            f"{sizes.prefix_requests} requests one after another)"
        )
        print(table(prefix))
        on = prefix[1]
        print(
            f"prefill work cut on repeats: {on['work_cut_repeats']:.1%} "
            f"(over all {sizes.prefix_requests} requests: {on['work_cut_all']:.1%}); "
            f"same outputs with and without the cache: {on['same_outputs']}"
        )
        cons = constrained(model_dir, sizes, vocab)
        print("\n## Constrained decoding (concurrency 8, sampled, seed 1)")
        print(table(cons))
    load_end = os.getloadavg()
    print(f"\nload average at end: {load_end[0]:.2f} {load_end[1]:.2f} {load_end[2]:.2f}")
    by = {(r["server"], r["concurrency"]): r for r in rows}
    targets = []
    if not args.smoke:
        ours8 = by[("flywheel engine", 8)]
        one8 = by[("generate() one at a time", 8)]
        targets = [
            (
                "output tokens/s at concurrency 8 >= 3x one-at-a-time generate()",
                ours8["tokens_per_s"] / one8["tokens_per_s"],
                3.0,
                "x",
            ),
            ("TTFT p99 at concurrency 8 <= 200 ms", ours8["ttft_p99_ms"], 200.0, "ms"),
            (
                "repeated system prompt's prefill work cut >= 90%",
                100 * on["work_cut_repeats"],
                90.0,
                "%",
            ),
        ]
        print("\n## Targets")
        for text, value, bound, unit in targets:
            ok = value <= bound if unit == "ms" else value >= bound
            print(f"{'MET ' if ok else 'MISS'} {text}: {value:.1f}{unit}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "throughput": rows,
                    "prefix": prefix,
                    "constrained": cons,
                    "check": check,
                    "load": [load_start, load_end],
                },
                indent=2,
            )
        )
    return 0 if mismatches == 0 and on["same_outputs"] else 1


if __name__ == "__main__":
    sys.exit(main())
