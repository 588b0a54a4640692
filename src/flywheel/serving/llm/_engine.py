"""``LLMEngine``: token-level scheduling over a paged KV cache, run on its own thread.

Every step the scheduler builds one packed batch under a token budget
(``max_num_batched_tokens``): first one token for each running request (decodes, oldest first),
then prefill chunks of waiting requests while the budget, the seat limit (``max_num_seqs``) and
the free KV blocks allow — so requests join and leave the running batch every step (continuous
batching) and a long prompt is prefilled in chunks. A waiting request first looks its full prompt
blocks up in the prefix cache and only computes the rest. When a running request needs a block
and none is free, the newest running request is preempted: its blocks are released (their
computed prefixes stay cached) and it waits at the head of the queue to be recomputed. Finished,
aborted and preempted requests free their blocks at once.

The step loop runs on a daemon thread; tokens reach asyncio callers through
``loop.call_soon_threadsafe``. Cancelling a stream (``aclose``, ``CancelledError``, a client that
went away) aborts the request and frees its blocks on the next step.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flywheel.serving.llm._detok import IncrementalDetokenizer
from flywheel.serving.llm._errors import (
    EngineFailed,
    EngineOverloaded,
    EngineStopped,
    PromptTooLong,
)
from flywheel.serving.llm._kv import BlockPool, extend_prefix_hashes
from flywheel.serving.llm._model import PagedDecoder, SeqSlice, StepBatch
from flywheel.serving.llm._sampling import choose, top_logprobs
from flywheel.serving.llm._sinks import QueueSink, Sink, deliver
from flywheel.serving.llm._types import (
    Completion,
    EngineStats,
    RequestMetrics,
    SamplingParams,
    TokenConstraint,
    TokenEvent,
)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_KV_BUDGET_BYTES = 1 << 30  # default cap on the cache size when num_blocks is not given
_DEFAULT_CONTEXT = 2048  # default per-sequence context used to size the cache


def resolve_device(wanted: str) -> str:
    """``cpu | auto | cuda[:N]`` → ``"cpu"`` or ``"cuda:N"`` (as the registry's flavors do)."""
    from flywheel.registry import DeviceUnavailable

    value = wanted.strip().lower()
    if value == "cpu":
        return "cpu"
    if value != "auto" and not (
        value == "cuda" or (value.startswith("cuda:") and value[5:].isdecimal())
    ):
        raise ValueError(f"device: {wanted!r} must be 'cpu', 'auto', 'cuda' or 'cuda:N'")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(value.partition(":")[2] or 0) if value != "auto" else 0
    if index < count:
        return f"cuda:{index}"
    if value == "auto":
        return "cpu"
    raise DeviceUnavailable(
        f"device is {wanted!r} but torch sees {count} CUDA device(s) here; use 'auto' to fall "
        "back to the CPU, or 'cpu'"
    )


@dataclass(eq=False)
class _Request:
    id: str
    prompt: list[int]
    params: SamplingParams
    constraint: TokenConstraint | None
    sink: Sink
    detok: IncrementalDetokenizer
    generator: torch.Generator
    arrival: float
    tokens: list[int] = field(default_factory=list)  # prompt + output
    computed: int = 0  # tokens whose K/V are in the cache
    blocks: list[int] = field(default_factory=list)
    hashes: list[bytes] = field(default_factory=list)  # prefix keys of full blocks of `tokens`
    registered: int = 0  # blocks registered in the prefix cache
    cached_prompt_tokens: int = 0
    first_scheduled: float | None = None
    first_token: float | None = None
    preemptions: int = 0
    admitted_once: bool = False
    done: bool = False

    @property
    def output_len(self) -> int:
        return len(self.tokens) - len(self.prompt)


class LLMEngine:
    """Serve a Hugging Face causal-LM folder (Llama family) with continuous batching.

    Args:
        model_dir: the folder (``config.json``, safetensors weights, tokenizer files).
        device: ``cpu`` (default), ``auto`` (the first GPU when torch has one) or ``cuda[:N]``.
        block_size: token slots per KV block.
        num_blocks: KV blocks; ``None`` sizes the cache for ``max_num_seqs`` sequences of up to
            2,048 tokens within 1 GiB.
        max_num_seqs: requests in the running batch at once.
        max_num_batched_tokens: tokens computed per step (prefill chunk budget).
        max_waiting: queued requests beyond which ``generate`` raises ``EngineOverloaded``.
        enable_prefix_caching: reuse computed full blocks of identical prompt prefixes.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.
        num_threads: ``torch.set_num_threads`` for the process; ``None`` leaves it alone.
        background: run the step loop on a daemon thread (default). ``False``: the caller
            drives it with ``step()`` (deterministic interleavings in tests).
    """

    def __init__(
        self,
        model_dir: str | Path,
        *,
        device: str = "cpu",
        block_size: int = 16,
        num_blocks: int | None = None,
        max_num_seqs: int = 32,
        max_num_batched_tokens: int = 512,
        max_waiting: int = 1024,
        enable_prefix_caching: bool = True,
        dtype: str = "float32",
        num_threads: int | None = None,
        background: bool = True,
    ) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        for name, value, low in (
            ("block_size", block_size, 1),
            ("max_num_seqs", max_num_seqs, 1),
            ("max_num_batched_tokens", max_num_batched_tokens, 1),
            ("max_waiting", max_waiting, 0),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype: must be one of {', '.join(_DTYPES)}, got {dtype!r}")
        if num_threads is not None:
            torch.set_num_threads(num_threads)
        self.model_dir = Path(model_dir)
        if not (self.model_dir / "config.json").is_file():
            raise ValueError(f"model_dir: {self.model_dir} has no config.json (not a HF folder)")
        self.device = resolve_device(device)
        torch_dtype = _DTYPES[dtype]
        config = AutoConfig.from_pretrained(self.model_dir)
        self.tokenizer: Any = AutoTokenizer.from_pretrained(self.model_dir)
        hf = AutoModelForCausalLM.from_pretrained(self.model_dir, dtype=torch_dtype)
        hf.to(self.device).eval()
        context_cap = int(getattr(config, "max_position_embeddings", _DEFAULT_CONTEXT))
        if num_blocks is None:
            per_block = PagedDecoder.kv_bytes_per_block(config, block_size, torch_dtype)
            want = math.ceil(max_num_seqs * min(context_cap, _DEFAULT_CONTEXT) / block_size)
            num_blocks = max(1, min(want, _KV_BUDGET_BYTES // per_block))
        self.block_size = block_size
        self.decoder = PagedDecoder(
            hf, num_blocks=num_blocks, block_size=block_size, device=torch.device(self.device)
        )
        self.vocab_size = self.decoder.vocab_size
        self.hidden_size = int(config.hidden_size)
        self.max_model_len = min(context_cap, num_blocks * block_size)
        self.eos_token_ids = _eos_ids(hf, self.tokenizer)
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            self._decode: Callable[[Sequence[int]], str] = lambda ids: backend.decode(
                list(ids), skip_special_tokens=True
            )
        else:
            self._decode = lambda ids: self.tokenizer.decode(ids, skip_special_tokens=True)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_waiting = max_waiting
        self._pool = BlockPool(num_blocks, enable_prefix_caching=enable_prefix_caching)
        self._running: list[_Request] = []
        self._waiting: deque[_Request] = deque()
        self._by_id: dict[str, _Request] = {}
        self._inbox: deque[tuple[str, Any]] = deque()
        self._cv = threading.Condition()
        self._model_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.background = background
        self._stopping = False
        self._ids = itertools.count()
        self._counters = {
            "prefix_queries": 0,
            "prefix_hits": 0,
            "preemptions": 0,
            "prompt_tokens": 0,
            "generation_tokens": 0,
            "prompt_tokens_computed": 0,
            "steps": 0,
        }
        self._finished: dict[str, int] = {}
        self._snapshot = (0, 0)  # (running, waiting), published by the engine thread

    # ------------------------------------------------------------------ public API

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        constraint: TokenConstraint | None = None,
        request_id: str | None = None,
    ) -> AsyncIterator[TokenEvent]:
        """Stream the tokens of one request (see ``TokenEvent``); the last event has a
        ``finish_reason``. Raises before the first event: ``PromptTooLong``,
        ``EngineOverloaded``, ``EngineStopped``, ``ValueError`` (bad token ids). Raises
        ``EngineFailed`` mid-stream if a step fails. Closing the iterator aborts the request."""
        sink = QueueSink(asyncio.get_running_loop(), asyncio.Queue())
        queue = sink.queue
        request = self._submit(prompt_token_ids, params, constraint, request_id, sink)
        finished = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                for event in item:
                    if event.finish_reason is not None:
                        finished = True
                    yield event
                    if finished:
                        return
        finally:
            if not finished:
                self.abort(request.id)

    def generate_blocking(
        self,
        requests: Sequence[tuple[list[int], SamplingParams]],
        constraints: Sequence[TokenConstraint | None] | None = None,
    ) -> list[Completion]:
        """Run ``requests`` together (all submitted at once) and wait for all of them."""
        results: list[list[TokenEvent]] = [[] for _ in requests]
        errors: list[BaseException | None] = [None] * len(requests)
        left = threading.Semaphore(0)

        def sink_for(i: int) -> Sink:
            def sink(item: list[TokenEvent] | BaseException) -> None:
                if isinstance(item, BaseException):
                    errors[i] = item
                    left.release()
                    return
                results[i].extend(item)
                if any(e.finish_reason is not None for e in item):
                    left.release()

            return sink

        for i, (prompt, params) in enumerate(requests):
            constraint = constraints[i] if constraints is not None else None
            self._submit(prompt, params, constraint, None, sink_for(i))
        if not self.background:
            while self.step():
                pass
        for _ in requests:
            left.acquire()
        for error in errors:
            if error is not None:
                raise error
        return [_completion(events) for events in results]

    def add_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        on_events: Callable[[list[TokenEvent] | BaseException], None],
        *,
        constraint: TokenConstraint | None = None,
        request_id: str | None = None,
    ) -> str:
        """Queue a request whose events go to ``on_events`` (called on the engine thread, with
        a list of events or an ``EngineFailed``); returns its id. Raises as ``generate``."""
        return self._submit(prompt_token_ids, params, constraint, request_id, on_events).id

    def abort(self, request_id: str) -> None:
        """Abort a request (no-op when it already finished); its blocks are freed next step."""
        with self._cv:
            self._inbox.append(("abort", request_id))
            self._cv.notify()

    async def embed(self, token_ids_batch: list[list[int]]) -> np.ndarray:
        """Mean-pooled final hidden states, float32 ``[n, hidden_size]`` (not normalised)."""
        if not token_ids_batch or any(not ids for ids in token_ids_batch):
            raise ValueError("input: every input must have at least one token")
        for ids in token_ids_batch:
            self._check_ids(ids, "input")
            if len(ids) > self.max_model_len:
                raise PromptTooLong(
                    f"input: {len(ids)} tokens exceed the model's {self.max_model_len}",
                    prompt_tokens=len(ids),
                    max_tokens=0,
                    max_model_len=self.max_model_len,
                )
        return await asyncio.to_thread(self._embed_sync, token_ids_batch)

    def stats(self) -> EngineStats:
        """A snapshot of queue sizes, KV usage and cumulative counters."""
        with self._cv:
            counters = dict(self._counters)
            finished = dict(self._finished)
            running, waiting = self._snapshot
            free = self._pool.num_free
            waiting += sum(1 for kind, _ in self._inbox if kind == "add")
        total = self._pool.num_blocks
        return EngineStats(
            num_running=running,
            num_waiting=waiting,
            kv_blocks_total=total,
            kv_blocks_free=free,
            kv_cache_usage=(total - free) / total,
            prefix_cache_queries=counters["prefix_queries"],
            prefix_cache_hits=counters["prefix_hits"],
            num_preemptions=counters["preemptions"],
            prompt_tokens=counters["prompt_tokens"],
            generation_tokens=counters["generation_tokens"],
            prompt_tokens_computed=counters["prompt_tokens_computed"],
            steps=counters["steps"],
            requests_finished=finished,
        )

    async def start(self) -> None:
        """Start the step thread (``generate`` also starts it on first use)."""
        self._ensure_thread()

    async def stop(self) -> None:
        """Abort every request and join the step thread."""
        await asyncio.to_thread(self.close)

    def close(self) -> None:
        """Synchronous ``stop``."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # ------------------------------------------------------------------ submission

    def _check_ids(self, ids: Sequence[int], where: str) -> None:
        for token in ids:
            if not isinstance(token, int) or not 0 <= token < self.vocab_size:
                raise ValueError(
                    f"{where}: token id {token!r} is outside the vocabulary "
                    f"(0..{self.vocab_size - 1})"
                )

    def _submit(
        self,
        prompt: list[int],
        params: SamplingParams,
        constraint: TokenConstraint | None,
        request_id: str | None,
        sink: Sink,
    ) -> _Request:
        if not prompt:
            raise ValueError("prompt: must have at least one token")
        self._check_ids(prompt, "prompt")
        if len(prompt) + params.max_tokens > self.max_model_len:
            raise PromptTooLong(
                f"prompt: {len(prompt)} prompt tokens + max_tokens {params.max_tokens} exceed "
                f"the model's context of {self.max_model_len} tokens; shorten the prompt or "
                "lower max_tokens",
                prompt_tokens=len(prompt),
                max_tokens=params.max_tokens,
                max_model_len=self.max_model_len,
            )
        seed = params.seed if params.seed is not None else secrets.randbits(63)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        request = _Request(
            id=request_id or f"req-{next(self._ids)}",
            prompt=list(prompt),
            params=params,
            constraint=constraint,
            sink=sink,
            detok=IncrementalDetokenizer(self._decode, prompt, params.stop),
            generator=generator,
            arrival=time.monotonic(),
            tokens=list(prompt),
        )
        with self._cv:
            if self._stopping:
                raise EngineStopped("the engine is stopped")
            pending = len(self._waiting) + sum(1 for k, _ in self._inbox if k == "add")
            if pending >= self.max_waiting:
                raise EngineOverloaded(
                    f"{pending} requests are already waiting (max_waiting={self.max_waiting}); "
                    "retry shortly",
                    retry_after_s=1.0,
                )
            self._inbox.append(("add", request))
            self._cv.notify()
        self._ensure_thread()
        return request

    def _ensure_thread(self) -> None:
        with self._cv:
            if self._thread is None and self.background:
                self._thread = threading.Thread(
                    target=self._loop, name=f"llm-engine-{self.model_dir.name}", daemon=True
                )
                self._thread.start()

    # ------------------------------------------------------------------ the step thread

    def step(self) -> bool:
        """Run one scheduling step on the calling thread; ``True`` while work remains.

        Only for an engine made with ``background=False`` (tests and callers that drive the
        engine themselves); the background thread calls it otherwise.
        """
        with self._cv:
            inbox = list(self._inbox)
            self._inbox.clear()
            stopping = self._stopping
        for kind, item in inbox:
            if kind == "add":
                self._by_id[item.id] = item
                self._waiting.append(item)
            else:
                self._abort_now(item)
        if stopping:
            for request in list(self._running) + list(self._waiting):
                self._finish(request, "abort", None, None)
            self._running.clear()
            self._waiting.clear()
            self._publish()
            return False
        self._guarded_step()
        self._publish()
        return bool(self._running or self._waiting)

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._inbox and not self._running and not self._waiting:
                    if self._stopping:
                        break
                    self._cv.wait()
                stopping = self._stopping
            self.step()
            if stopping:
                return

    def _guarded_step(self) -> None:
        try:
            self._step()
        except Exception as exc:  # fail the requests in flight, keep serving new ones
            error = EngineFailed(f"engine step failed: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            for request in list(self._running) + list(self._waiting):
                self._release(request)
                request.done = True
                self._by_id.pop(request.id, None)
                request.sink(error)
            self._running.clear()
            self._waiting.clear()

    def _publish(self) -> None:
        with self._cv:
            self._snapshot = (len(self._running), len(self._waiting))

    def _abort_now(self, request_id: str) -> None:
        request = self._by_id.get(request_id)
        if request is None or request.done:
            return
        if request in self._running:
            self._running.remove(request)
        elif request in self._waiting:
            self._waiting.remove(request)
        self._finish(request, "abort", None, None)

    def _release(self, request: _Request) -> None:
        self._pool.release(request.blocks)
        request.blocks = []
        request.computed = 0
        request.registered = 0

    def _preempt(self, request: _Request) -> None:
        self._running.remove(request)
        self._release(request)
        request.preemptions += 1
        self._waiting.appendleft(request)
        with self._cv:
            self._counters["preemptions"] += 1

    def _blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def _schedule(self) -> list[tuple[_Request, int]]:
        budget = self.max_num_batched_tokens
        scheduled: list[tuple[_Request, int]] = []
        preempted = False
        for request in list(self._running):
            if budget == 0:
                break
            if request not in self._running:  # preempted below for an older request
                continue
            n = min(len(request.tokens) - request.computed, budget)
            need = self._blocks_for(request.computed + n) - len(request.blocks)
            while need > self._pool.num_free:
                victim = self._running[-1]
                self._preempt(victim)
                preempted = True
                if victim is request:
                    break
            if request not in self._running:
                continue
            request.blocks += self._pool.allocate(need)
            scheduled.append((request, n))
            budget -= n
        while (
            self._waiting
            and budget > 0
            and not preempted
            and len(self._running) < self.max_num_seqs
        ):
            request = self._waiting[0]
            hits = self._prefix_lookup(request)
            idle_hits = sum(1 for b in hits if self._pool.is_free(b))
            computed = len(hits) * self.block_size
            n = min(len(request.tokens) - computed, budget)
            need = self._blocks_for(computed + n) - len(hits)
            if need + idle_hits > self._pool.num_free:
                break
            self._waiting.popleft()
            for block in hits:
                self._pool.acquire(block)
            request.blocks = hits + self._pool.allocate(need)
            request.computed = computed
            request.registered = len(hits)
            if not request.admitted_once:
                request.admitted_once = True
                request.cached_prompt_tokens = computed
                request.first_scheduled = time.monotonic()
                with self._cv:
                    self._counters["prefix_queries"] += len(request.prompt)
                    self._counters["prefix_hits"] += computed
                    self._counters["prompt_tokens"] += len(request.prompt)
            self._running.append(request)
            scheduled.append((request, n))
            budget -= n
        return scheduled

    def _prefix_lookup(self, request: _Request) -> list[int]:
        """Cached blocks of the request's leading full blocks (never all of its tokens: the last
        token is always computed so that there are logits to sample from)."""
        if not self._pool.enable_prefix_caching:
            return []
        usable = (len(request.tokens) - 1) // self.block_size
        extend_prefix_hashes(request.tokens, self.block_size, request.hashes)
        hits: list[int] = []
        for key in request.hashes[:usable]:
            block = self._pool.cached_block(key)
            if block is None:
                break
            hits.append(block)
        return hits

    def _step(self) -> None:
        scheduled = self._schedule()
        if not scheduled:
            if self._waiting and not self._running:
                # Nothing fits even alone: cannot happen for admitted sizes; fail loudly.
                raise RuntimeError("the KV cache cannot hold the next waiting request")
            return
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        seqs: list[SeqSlice] = []
        logit_rows: list[int] = []
        sampling: list[_Request] = []
        bs = self.block_size
        for request, n in scheduled:
            start = request.computed
            seqs.append(SeqSlice(len(ids), n, start + n, request.blocks))
            ids.extend(request.tokens[start : start + n])
            for pos in range(start, start + n):
                positions.append(pos)
                slots.append(request.blocks[pos // bs] * bs + pos % bs)
            if start + n == len(request.tokens):
                logit_rows.append(len(ids) - 1)
                sampling.append(request)
        device = self.decoder.device
        batch = StepBatch(
            input_ids=torch.tensor(ids, dtype=torch.long, device=device),
            positions=torch.tensor(positions, dtype=torch.long, device=device),
            slots=torch.tensor(slots, dtype=torch.long, device=device),
            seqs=seqs,
            logit_rows=torch.tensor(logit_rows, dtype=torch.long, device=device),
        )
        with self._model_lock:  # always run: a prefill chunk that samples nothing still fills KV
            logits = self.decoder.forward(batch)
        computed_prompt = 0
        for request, n in scheduled:
            decoding = (
                n == 1 and request.output_len > 0 and request.computed == len(request.tokens) - 1
            )
            if not decoding:  # prefill work: a prompt chunk, or a recompute after preemption
                computed_prompt += n
            request.computed += n
            extend_prefix_hashes(request.tokens, bs, request.hashes, upto=request.computed)
            while request.registered < min(len(request.hashes), request.computed // bs):
                self._pool.register(
                    request.blocks[request.registered], request.hashes[request.registered]
                )
                request.registered += 1
        with self._cv:
            self._counters["steps"] += 1
            self._counters["prompt_tokens_computed"] += computed_prompt
        if sampling:
            self._sample(sampling, logits)

    def _sample(self, requests: list[_Request], logits: torch.Tensor) -> None:
        want_logprobs = any(r.params.logprobs is not None for r in requests)
        logprobs = torch.log_softmax(logits, dim=-1) if want_logprobs else None
        greedy_ids: list[int] | None = None
        if any(r.params.greedy and r.constraint is None for r in requests):
            greedy_ids = torch.argmax(logits, dim=-1).tolist()
        now = time.monotonic()
        outbox: list[tuple[_Request, TokenEvent]] = []
        generated = 0
        for row, request in enumerate(requests):
            params = request.params
            if params.greedy and request.constraint is None and greedy_ids is not None:
                token = greedy_ids[row]
            else:
                allowed = request.constraint.allowed() if request.constraint is not None else None
                token = choose(logits[row], params, request.generator, allowed)
                if allowed is not None and (token >= allowed.shape[0] or not bool(allowed[token])):
                    # The grammar allows nothing: end the request rather than emit a bad token.
                    outbox.append((request, self._finish(request, "stop", None, None, send=False)))
                    continue
            generated += 1
            if request.first_token is None:
                request.first_token = now
            lp = top = None
            if logprobs is not None and params.logprobs is not None:
                lp = float(logprobs[row, token])
                top = top_logprobs(logprobs[row], params.logprobs) if params.logprobs else None
            if request.constraint is not None:
                request.constraint.accept(token)
            event = self._advance(request, token, lp, top)
            outbox.append((request, event))
        with self._cv:
            self._counters["generation_tokens"] += generated
        self._publish()  # a caller that reads stats() after its final event sees it gone
        deliver(outbox)

    def _advance(
        self,
        request: _Request,
        token: int,
        logprob: float | None,
        top: list[tuple[int, float]] | None,
    ) -> TokenEvent:
        params = request.params
        stop_id = token in params.stop_token_ids or (
            not params.ignore_eos and token in self.eos_token_ids
        )
        request.tokens.append(token)
        if stop_id:
            reason = token if token in params.stop_token_ids else None
            return self._finish(request, "stop", reason, None, send=False, lp=(logprob, top))
        matched = request.detok.add(token)
        if matched is not None:
            return self._finish(request, "stop", matched, token, send=False, lp=(logprob, top))
        if request.constraint is not None and request.constraint.is_terminated():
            return self._finish(request, "stop", None, token, send=False, lp=(logprob, top))
        if request.output_len >= params.max_tokens:
            return self._finish(request, "length", None, token, send=False, lp=(logprob, top))
        return TokenEvent(
            token_id=token,
            text=request.detok.release(),
            logprob=logprob,
            top_logprobs=top,
            finish_reason=None,
            prompt_tokens=len(request.prompt),
            completion_tokens=request.output_len,
            cached_prompt_tokens=request.cached_prompt_tokens,
        )

    def _finish(
        self,
        request: _Request,
        reason: str,
        stop_reason: str | int | None,
        token: int | None,
        *,
        send: bool = True,
        lp: tuple[float | None, list[tuple[int, float]] | None] = (None, None),
    ) -> TokenEvent:
        if request in self._running:
            self._running.remove(request)
        self._release(request)
        request.done = True
        self._by_id.pop(request.id, None)
        now = time.monotonic()
        first = request.first_token
        out = request.output_len
        metrics = RequestMetrics(
            arrival_time=request.arrival,
            first_token_time=first,
            finish_time=now,
            ttft_s=None if first is None else first - request.arrival,
            e2e_s=now - request.arrival,
            tpot_s=(now - first) / (out - 1) if first is not None and out > 1 else None,
            queue_s=(request.first_scheduled or now) - request.arrival,
            num_preemptions=request.preemptions,
        )
        event = TokenEvent(
            token_id=token,
            text=request.detok.release(final=True),
            logprob=lp[0] if token is not None else None,
            top_logprobs=lp[1] if token is not None else None,
            finish_reason=reason,
            prompt_tokens=len(request.prompt),
            completion_tokens=out,
            cached_prompt_tokens=request.cached_prompt_tokens,
            stop_reason=stop_reason,
            metrics=metrics,
        )
        with self._cv:
            self._finished[reason] = self._finished.get(reason, 0) + 1
        if send:
            request.sink([event])
        return event

    def _embed_sync(self, token_ids_batch: list[list[int]]) -> np.ndarray:
        with self._model_lock:
            pooled = self.decoder.embed(token_ids_batch)
        return pooled.cpu().numpy().astype(np.float32)


def _eos_ids(hf: Any, tokenizer: Any) -> tuple[int, ...]:
    ids: list[int] = []
    for source in (getattr(hf, "generation_config", None), hf.config):
        value = getattr(source, "eos_token_id", None) if source is not None else None
        if isinstance(value, int):
            ids.append(value)
        elif isinstance(value, list):
            ids.extend(v for v in value if isinstance(v, int))
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return tuple(dict.fromkeys(ids))


def _completion(events: list[TokenEvent]) -> Completion:
    last = events[-1]
    tokens = [e.token_id for e in events if e.token_id is not None]
    return Completion(
        token_ids=tokens,
        text="".join(e.text for e in events),
        finish_reason=last.finish_reason or "abort",
        stop_reason=last.stop_reason,
        logprobs=[e.logprob for e in events if e.token_id is not None],
        top_logprobs=[e.top_logprobs for e in events if e.token_id is not None],
        prompt_tokens=last.prompt_tokens,
        completion_tokens=last.completion_tokens,
        cached_prompt_tokens=last.cached_prompt_tokens,
        metrics=last.metrics,
    )


__all__ = ["LLMEngine", "resolve_device"]
