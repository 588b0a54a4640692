"""The LLM engine: its paged forward against transformers, and each decoding feature."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from flywheel.registry import DeviceUnavailable
from flywheel.serving.llm import (
    EngineOverloaded,
    LLMEngine,
    PromptTooLong,
    SamplingParams,
    TokenEvent,
)
from flywheel.serving.llm._engine import resolve_device
from flywheel.serving.llm._model import SeqSlice, StepBatch

GREEDY = SamplingParams(max_tokens=24, temperature=0.0)


@pytest.fixture(scope="module")
def engine(tiny_model_dir: Path) -> Iterator[LLMEngine]:
    eng = LLMEngine(tiny_model_dir, block_size=4, num_blocks=256)
    yield eng
    eng.close()


@pytest.fixture(scope="module")
def hf(tiny_model_dir: Path) -> torch.nn.Module:
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def chat(engine: LLMEngine, text: str, system: str | None = None) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}
    ]
    return list(
        engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    )


def _slots(blocks: list[int], start: int, end: int, bs: int) -> torch.Tensor:
    return torch.tensor([blocks[p // bs] * bs + p % bs for p in range(start, end)])


def test_paged_forward_matches_transformers_logits(engine: LLMEngine, hf: torch.nn.Module) -> None:
    """Two sequences: one prefilled in two chunks, the other packed with it in the same step,
    then one decode token each in a batched step — all logits within 1e-4 of transformers'."""
    bs = engine.block_size
    a = chat(engine, "What is a canary?")
    b = chat(engine, "Hello!", system="Be brief.")
    with torch.inference_mode():
        ref_a = hf(torch.tensor([a])).logits[0]
        ref_b = hf(torch.tensor([b])).logits[0]
    blocks_a = list(range(100, 100 + len(a) // bs + 2))
    blocks_b = list(range(150, 150 + len(b) // bs + 2))
    decoder = engine.decoder
    cut = 5
    first = decoder.forward(
        StepBatch(
            input_ids=torch.tensor(a[:cut]),
            positions=torch.arange(cut),
            slots=_slots(blocks_a, 0, cut, bs),
            seqs=[SeqSlice(0, cut, cut, blocks_a)],
            logit_rows=torch.arange(cut),
        )
    )
    na, nb = len(a) - 1, len(b) - 1  # keep the last tokens for a decode step
    packed = decoder.forward(
        StepBatch(
            input_ids=torch.tensor(a[cut:na] + b[:nb]),
            positions=torch.cat([torch.arange(cut, na), torch.arange(nb)]),
            slots=torch.cat([_slots(blocks_a, cut, na, bs), _slots(blocks_b, 0, nb, bs)]),
            seqs=[SeqSlice(0, na - cut, na, blocks_a), SeqSlice(na - cut, nb, nb, blocks_b)],
            logit_rows=torch.arange(na - cut + nb),
        )
    )
    decode = decoder.forward(
        StepBatch(
            input_ids=torch.tensor([a[na], b[nb]]),
            positions=torch.tensor([na, nb]),
            slots=torch.cat([_slots(blocks_a, na, na + 1, bs), _slots(blocks_b, nb, nb + 1, bs)]),
            seqs=[SeqSlice(0, 1, na + 1, blocks_a), SeqSlice(1, 1, nb + 1, blocks_b)],
            logit_rows=torch.arange(2),
        )
    )
    ours_a = torch.cat([first, packed[: na - cut], decode[:1]])
    ours_b = torch.cat([packed[na - cut :], decode[1:]])
    assert ours_a.shape == ref_a.shape and ours_b.shape == ref_b.shape
    torch.testing.assert_close(ours_a, ref_a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours_b, ref_b, atol=1e-4, rtol=1e-4)


def test_greedy_equals_transformers_generate(engine: LLMEngine, hf: torch.nn.Module) -> None:
    prompts = [chat(engine, q) for q in ("What is a canary?", "Hello!", "What is drift?")]
    ours = engine.generate_blocking([(p, GREEDY) for p in prompts])
    for prompt, got in zip(prompts, ours, strict=True):
        with torch.inference_mode():
            ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
        ref_tokens = ref[0][len(prompt) :].tolist()
        if got.finish_reason == "stop":  # EOS: transformers keeps it, we report it as the end
            assert ref_tokens == [*got.token_ids, engine.eos_token_ids[0]]
        else:
            assert ref_tokens == got.token_ids
        assert got.text == engine.tokenizer.decode(got.token_ids, skip_special_tokens=True)
    assert "Hello! How can I help you" in ours[1].text


def test_chunked_prefill_equals_transformers(tiny_model_dir: Path, hf: torch.nn.Module) -> None:
    """A prompt longer than the step's token budget is prefilled over several steps (steps that
    sample nothing must still fill the cache) and decodes exactly as transformers does."""
    chunky = LLMEngine(tiny_model_dir, block_size=4, num_blocks=64, max_num_batched_tokens=7)
    try:
        prompt = chat(chunky, "What is the registry?", system="You are the Flywheel assistant.")
        assert len(prompt) > 3 * 7
        got = chunky.generate_blocking([(prompt, GREEDY)])[0]
        assert chunky.stats().steps >= len(prompt) // 7 + len(got.token_ids)
    finally:
        chunky.close()
    with torch.inference_mode():
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=24, do_sample=False)
    assert ref[0][len(prompt) :].tolist()[: len(got.token_ids)] == got.token_ids
    assert len(got.token_ids) >= 5


def test_logprobs_are_the_model_distribution(engine: LLMEngine, hf: torch.nn.Module) -> None:
    prompt = chat(engine, "What is a bandit?")
    params = SamplingParams(max_tokens=3, temperature=0.0, logprobs=3)
    out = engine.generate_blocking([(prompt, params)])[0]
    with torch.inference_mode():
        ref = torch.log_softmax(hf(torch.tensor([prompt])).logits[0, -1], dim=-1)
    first = out.token_ids[0]
    assert out.logprobs[0] == pytest.approx(float(ref[first]), abs=1e-4)
    top = out.top_logprobs[0]
    assert top is not None and len(top) == 3
    assert top[0][0] == first  # greedy picks the most likely token
    assert [t for t, _ in top] == torch.topk(ref, 3).indices.tolist()
    assert all(a[1] >= b[1] for a, b in itertools.pairwise(top))


def test_prefix_cache_reuses_a_repeated_system_prompt(engine: LLMEngine) -> None:
    system = "You are the Flywheel assistant. " * 6
    first = chat(engine, "What is a canary?", system=system)
    second = chat(engine, "What is the registry?", system=system)
    before = engine.stats()
    a1 = engine.generate_blocking([(first, GREEDY)])[0]
    mid = engine.stats()
    a2 = engine.generate_blocking([(first, GREEDY)])[0]
    b = engine.generate_blocking([(second, GREEDY)])[0]
    after = engine.stats()
    bs = engine.block_size
    assert a1.token_ids == a2.token_ids and a1.text == a2.text  # identical output from the cache
    assert a2.cached_prompt_tokens == (len(first) - 1) // bs * bs  # all full blocks but the last
    shared = next(i for i, (x, y) in enumerate(zip(first, second, strict=False)) if x != y)
    assert b.cached_prompt_tokens == shared // bs * bs > 0
    assert after.prefix_cache_queries - mid.prefix_cache_queries == len(first) + len(second)
    assert after.prefix_cache_hits - mid.prefix_cache_hits == (
        a2.cached_prompt_tokens + b.cached_prompt_tokens
    )
    # prefill work actually done: the repeat computed only what the cache did not hold
    first_work = mid.prompt_tokens_computed - before.prompt_tokens_computed
    assert first_work == len(first) - a1.cached_prompt_tokens
    assert after.kv_blocks_free == after.kv_blocks_total
    assert (after.num_running, after.num_waiting) == (0, 0)  # seen as soon as the result is


def test_seed_reproduces_regardless_of_batch(engine: LLMEngine) -> None:
    prompt = chat(engine, "What is Flywheel?")
    params = SamplingParams(max_tokens=16, temperature=1.0, top_p=0.9, top_k=50, seed=7)
    alone = engine.generate_blocking([(prompt, params)])[0]
    noise = [
        (chat(engine, "Hello!"), SamplingParams(max_tokens=20, temperature=1.0)),
        (chat(engine, "What is drift?"), SamplingParams(max_tokens=5, temperature=0.7, seed=1)),
    ]
    batched = engine.generate_blocking([noise[0], (prompt, params), noise[1]])[1]
    assert batched.token_ids == alone.token_ids
    others = {
        tuple(
            engine.generate_blocking([(prompt, SamplingParams(max_tokens=16, seed=s))])[0].token_ids
        )
        for s in (1, 2, 3)
    }
    assert len(others | {tuple(alone.token_ids)}) > 1  # the seed matters


def test_stop_string_split_across_tokens(engine: LLMEngine) -> None:
    prompt = chat(engine, "What is a canary?")
    free = engine.generate_blocking([(prompt, SamplingParams(max_tokens=30, temperature=0))])[0]
    pieces = [engine.tokenizer.decode([t]) for t in free.token_ids]
    # a stop string made of the end of one token's text and the start of the next one's
    k = next(i for i in range(2, len(pieces) - 1) if len(pieces[i]) >= 2 and pieces[i + 1])
    stop = pieces[k][-2:] + pieces[k + 1][:1]
    full = "".join(pieces)
    at = full.find(stop)
    assert at != -1
    loop = asyncio.new_event_loop()
    try:
        events = loop.run_until_complete(_collect(engine, prompt, stop))
    finally:
        loop.close()
    text = "".join(e.text for e in events)
    assert text == full[:at]
    assert events[-1].finish_reason == "stop" and events[-1].stop_reason == stop
    # the streamed deltas add up to the cut text: the stop's first part, streamed before the
    # match was complete, was held back and never released
    assert stop not in text
    assert len(events) > 2


async def _collect(engine: LLMEngine, prompt: list[int], stop: str) -> list[TokenEvent]:
    params = SamplingParams(max_tokens=30, temperature=0, stop=(stop,))
    return [e async for e in engine.generate(prompt, params)]


class _DigitsThenStop:
    """A toy constraint: only tokens spelling digits, three of them, then terminated."""

    def __init__(self, engine: LLMEngine) -> None:
        vocab = engine.tokenizer.get_vocab()
        self.allowed_ids = sorted(i for t, i in vocab.items() if t.isdigit())
        mask = torch.zeros(engine.vocab_size, dtype=torch.bool)
        mask[self.allowed_ids] = True
        self.mask = mask
        self.accepted: list[int] = []

    def allowed(self) -> torch.Tensor | None:
        return self.mask

    def accept(self, token_id: int) -> None:
        self.accepted.append(token_id)

    def is_terminated(self) -> bool:
        return len(self.accepted) >= 3


def test_constraint_masks_every_step(engine: LLMEngine) -> None:
    constraint = _DigitsThenStop(engine)
    prompt = chat(engine, "Hello!")
    for params in (GREEDY, SamplingParams(max_tokens=24, temperature=1.0, seed=3)):
        constraint.accepted.clear()
        out = engine.generate_blocking([(prompt, params)], constraints=[constraint])[0]
        assert out.finish_reason == "stop"
        assert out.token_ids == constraint.accepted
        assert len(out.token_ids) == 3
        assert set(out.token_ids) <= set(constraint.allowed_ids)
        assert out.text.isdigit()


def test_cancelling_a_stream_frees_its_blocks(engine: LLMEngine) -> None:
    async def scenario() -> tuple[int, int]:
        prompt = chat(engine, "What is the feature store?")
        params = SamplingParams(max_tokens=400, temperature=1.0, ignore_eos=True, seed=1)
        stream = engine.generate(prompt, params)
        async for event in stream:
            if event.completion_tokens >= 3:
                break
        used_mid = engine.stats().kv_blocks_total - engine.stats().kv_blocks_free
        await stream.aclose()
        # a task cancelled while it awaits the stream (a client gone)
        task = asyncio.create_task(_drain(engine.generate(prompt, params)))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            stats = engine.stats()
            if stats.num_running == 0 and stats.kv_blocks_free == stats.kv_blocks_total:
                break
            await asyncio.sleep(0.01)
        return used_mid, engine.stats().kv_blocks_free

    used_mid, free_after = asyncio.run(scenario())
    assert used_mid > 0
    assert free_after == engine.stats().kv_blocks_total
    assert engine.stats().requests_finished.get("abort", 0) >= 2


async def _drain(stream: object) -> None:
    async for _ in stream:  # type: ignore[attr-defined]
        pass


def test_kv_exhaustion_queues_and_preempts_and_all_complete(tiny_model_dir: Path) -> None:
    """A cache of 12 blocks × 4 tokens for 6 requests of up to ~44 tokens each: they queue and
    are preempted (recomputed), and each still gets exactly its tokens served alone."""
    small = LLMEngine(tiny_model_dir, block_size=4, num_blocks=12, max_num_seqs=6)
    roomy = LLMEngine(tiny_model_dir, block_size=4, num_blocks=256, background=False)
    try:
        questions = ["Hello!", "What is drift?", "Hi!", "What is a canary?", "Good morning!", "?"]
        requests = [
            (chat(small, q), SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
            for q in questions
        ]
        alone = [roomy.generate_blocking([r])[0] for r in requests]

        async def run_all() -> list[list[TokenEvent]]:
            async def one(prompt: list[int], params: SamplingParams) -> list[TokenEvent]:
                return [e async for e in small.generate(prompt, params)]

            return await asyncio.gather(*(one(p, s) for p, s in requests))

        results = asyncio.run(run_all())
        stats = small.stats()
        for events, ref in zip(results, alone, strict=True):
            assert [e.token_id for e in events if e.token_id is not None] == ref.token_ids
            assert events[-1].finish_reason == "length"
        assert stats.num_preemptions > 0
        assert stats.kv_blocks_free == stats.kv_blocks_total
    finally:
        small.close()
        roomy.close()


def test_bad_requests_are_refused_before_any_work(tiny_model_dir: Path) -> None:
    eng = LLMEngine(tiny_model_dir, block_size=4, num_blocks=8, max_waiting=1, background=False)
    try:
        assert eng.max_model_len == 32
        with pytest.raises(PromptTooLong, match="max_tokens"):
            eng.add_request([1] * 30, SamplingParams(max_tokens=5), lambda _: None)
        with pytest.raises(ValueError, match="outside the vocabulary"):
            eng.add_request([eng.vocab_size], SamplingParams(), lambda _: None)
        with pytest.raises(ValueError, match="at least one token"):
            eng.add_request([], SamplingParams(), lambda _: None)
        eng.add_request([1, 2], SamplingParams(max_tokens=2), lambda _: None)
        with pytest.raises(EngineOverloaded):
            eng.add_request([1, 2], SamplingParams(max_tokens=2), lambda _: None)
    finally:
        eng.close()
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=0)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=99)


def test_embeddings_are_mean_pooled_hidden_states(engine: LLMEngine, hf: torch.nn.Module) -> None:
    inputs = [chat(engine, "Hello!"), chat(engine, "What is a canary?")]
    batch = asyncio.run(engine.embed(inputs))
    assert batch.shape == (2, engine.hidden_size) and batch.dtype == np.float32
    with torch.inference_mode():
        ref = hf.model(torch.tensor([inputs[0]])).last_hidden_state[0].mean(0).numpy()
    np.testing.assert_allclose(batch[0], ref, atol=1e-4)
    single = asyncio.run(engine.embed([inputs[1]]))
    np.testing.assert_allclose(single[0], batch[1], atol=1e-4)  # padding does not leak in


def test_device_placement() -> None:
    assert resolve_device("cpu") == "cpu"
    if torch.cuda.is_available():
        assert resolve_device("auto") == "cuda:0"
    else:
        assert resolve_device("auto") == "cpu"
        with pytest.raises(DeviceUnavailable, match="auto"):
            resolve_device("cuda:0")
    with pytest.raises(ValueError, match="device"):
        resolve_device("tpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_engine_on_cuda_matches_cpu(tiny_model_dir: Path, engine: LLMEngine) -> None:
    gpu = LLMEngine(tiny_model_dir, device="cuda", block_size=4, num_blocks=64)
    try:
        assert gpu.device == "cuda:0"
        assert gpu.decoder.kv_cache[0].is_cuda
        prompt = chat(engine, "What is a canary?")
        on_gpu = gpu.generate_blocking([(prompt, GREEDY)])[0]
        on_cpu = engine.generate_blocking([(prompt, GREEDY)])[0]
        assert on_gpu.token_ids == on_cpu.token_ids
        seeded = SamplingParams(max_tokens=12, seed=5)
        again = gpu.generate_blocking([(prompt, seeded), (prompt, seeded)])
        assert again[0].token_ids == again[1].token_ids
    finally:
        gpu.close()
