"""Property: under continuous batching, any interleaving of arrivals gives each request exactly
the tokens it gets when served alone (greedy), and the stop / max-token limits hold.

The engine is driven step by step (``background=False``) so hypothesis controls at which step
each request arrives; a second engine with a small KV cache makes requests queue and be
preempted (recomputed) as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.serving.llm import Completion, LLMEngine, SamplingParams, TokenEvent

QUESTIONS = ["Hello!", "What is drift?", "What is a canary?", "Hi!", "What is a bandit?"]
STOPS = ["", "e", " the", "s.", "is a", "!"]


@pytest.fixture(scope="module")
def engines(tiny_model_dir: Path) -> Iterator[dict[str, LLMEngine]]:
    made = {
        "alone": LLMEngine(tiny_model_dir, block_size=4, num_blocks=256, background=False),
        "roomy": LLMEngine(tiny_model_dir, block_size=4, num_blocks=256, background=False),
        # 14 blocks of 4 tokens: a few requests fill it, so later ones queue or preempt; 8
        # tokens per step: prompts are prefilled in chunks, some steps sample nothing
        "tight": LLMEngine(
            tiny_model_dir,
            block_size=4,
            num_blocks=14,
            max_num_batched_tokens=8,
            background=False,
        ),
    }
    yield made
    for engine in made.values():
        engine.close()


def _prompt(engine: LLMEngine, spec: tuple[int, list[int]]) -> list[int]:
    question, extra = spec
    messages = [{"role": "user", "content": QUESTIONS[question]}]
    ids = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    return [*extra, *ids]  # random leading tokens vary the length and the content


request_spec = st.tuples(
    st.tuples(st.integers(0, len(QUESTIONS) - 1), st.lists(st.integers(3, 500), max_size=6)),
    st.integers(1, 14),  # max_tokens
    st.sampled_from(STOPS),
    st.booleans(),  # ignore_eos
    st.integers(0, 12),  # arrival step
)


_ALONE: dict[tuple[tuple[int, ...], SamplingParams], Completion] = {}


def _alone(engine: LLMEngine, prompt: list[int], params: SamplingParams) -> Completion:
    """The request served by itself on an idle engine (memoised: greedy is deterministic)."""
    key = (tuple(prompt), params)
    if key not in _ALONE:
        _ALONE[key] = engine.generate_blocking([(prompt, params)])[0]
    return _ALONE[key]


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    specs=st.lists(request_spec, min_size=1, max_size=6), which=st.sampled_from(["roomy", "tight"])
)
def test_any_interleaving_gives_each_request_its_alone_tokens(
    engines: dict[str, LLMEngine], specs: list, which: str
) -> None:
    engine = engines[which]
    requests = []
    for prompt_spec, max_tokens, stop, ignore_eos, arrival in specs:
        prompt = _prompt(engine, prompt_spec)
        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            stop=(stop,) if stop else (),
            ignore_eos=ignore_eos,
        )
        requests.append((arrival, prompt, params))
    events: list[list[TokenEvent]] = [[] for _ in requests]
    step = 0
    pending = sorted(range(len(requests)), key=lambda i: requests[i][0])
    while pending or any(not e or e[-1].finish_reason is None for e in events):
        while pending and requests[pending[0]][0] <= step:
            i = pending.pop(0)
            _, prompt, params = requests[i]
            engine.add_request(prompt, params, events[i].extend)
        engine.step()
        step += 1
        assert step < 2000, "the engine stopped making progress"
    stats = engine.stats()
    assert stats.kv_blocks_free == stats.kv_blocks_total  # every block came back
    decode = engine.tokenizer.decode
    for (_, prompt, params), got in zip(requests, events, strict=True):
        ref = _alone(engines["alone"], prompt, params)
        tokens = [e.token_id for e in got if e.token_id is not None]
        text = "".join(e.text for e in got)
        last = got[-1]
        assert tokens == ref.token_ids
        assert text == ref.text
        assert (last.finish_reason, last.stop_reason) == (ref.finish_reason, ref.stop_reason)
        # the limits, checked from first principles
        assert len(tokens) <= params.max_tokens and last.completion_tokens <= params.max_tokens
        if last.finish_reason == "length":
            assert len(tokens) == params.max_tokens
        for stop in params.stop:
            assert stop not in text
        if isinstance(last.stop_reason, str):
            full = decode(tokens, skip_special_tokens=True)
            assert full.find(last.stop_reason) == len(text)
            assert full.startswith(text)
        elif last.finish_reason == "stop" and not params.ignore_eos:
            assert text == decode(tokens, skip_special_tokens=True)  # ended at EOS
