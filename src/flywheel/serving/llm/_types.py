"""The engine's request, event and statistics types (the contract with the API layer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded. Invalid values raise ``ValueError`` naming the field.

    ``temperature == 0`` is greedy. ``seed`` seeds a per-request generator, so the same seed
    gives the same tokens whatever else is in the batch. ``stop`` strings are cut from the text
    (the match is not included), also when a match spans several tokens. ``logprobs``: ``None``
    none, ``0`` the chosen token's, ``n`` also the top ``n`` alternatives; they are the
    log-softmax of the raw logits (before temperature, top-p/top-k and any constraint).
    """

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens: must be an integer >= 1, got {self.max_tokens!r}")
        if not self.temperature >= 0.0:
            raise ValueError(f"temperature: must be >= 0, got {self.temperature!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k: must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError("stop: every stop string must be a non-empty string")
        if self.logprobs is not None and not 0 <= self.logprobs <= MAX_LOGPROBS:
            raise ValueError(f"logprobs: must be between 0 and {MAX_LOGPROBS}, got {self.logprobs}")
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class TokenConstraint(Protocol):
    """A per-request decoding constraint (a grammar), consulted on the engine thread each step.

    ``allowed()`` gives a boolean mask over the logits (``[engine.vocab_size]``, any device) for
    the next token, or ``None`` when any token may follow. ``accept`` is called with every
    sampled token, EOS included. Once ``is_terminated()`` is true the request finishes with
    ``finish_reason == "stop"``.
    """

    def allowed(self) -> torch.Tensor | None: ...

    def accept(self, token_id: int) -> None: ...

    def is_terminated(self) -> bool: ...


@dataclass(frozen=True)
class RequestMetrics:
    """Timings of one finished request (``time.monotonic()`` seconds)."""

    arrival_time: float
    first_token_time: float | None
    finish_time: float
    ttft_s: float | None
    e2e_s: float
    tpot_s: float | None  # mean time per output token after the first
    queue_s: float  # arrival to first scheduled
    num_preemptions: int


@dataclass(frozen=True)
class TokenEvent:
    """One step of a request's stream.

    ``text`` is the text released now ("" while a possible stop-string prefix is held back).
    The event whose ``finish_reason`` is set ("stop", "length", "abort") is the last one; it may
    carry a token (``max_tokens`` reached, a stop string inside that token) or ``token_id=None``
    (EOS or a stop token id, which are not output; they still count in ``completion_tokens``).
    """

    token_id: int | None
    text: str
    logprob: float | None
    top_logprobs: list[tuple[int, float]] | None
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    stop_reason: str | int | None = None
    metrics: RequestMetrics | None = None


@dataclass(frozen=True)
class Completion:
    """A whole finished request (``LLMEngine.generate_blocking``)."""

    token_ids: list[int]
    text: str
    finish_reason: str
    stop_reason: str | int | None
    logprobs: list[float | None]
    top_logprobs: list[list[tuple[int, float]] | None]
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int
    metrics: RequestMetrics | None


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of the engine; counters are cumulative since it was created."""

    num_running: int
    num_waiting: int
    kv_blocks_total: int
    kv_blocks_free: int
    kv_cache_usage: float  # share of blocks held by requests (0..1)
    prefix_cache_queries: int  # prompt tokens looked up (once per request)
    prefix_cache_hits: int  # of those, found in the cache
    num_preemptions: int
    prompt_tokens: int  # per request, once
    generation_tokens: int
    prompt_tokens_computed: int  # prefill work really done (misses and recomputes)
    steps: int
    requests_finished: dict[str, int] = field(default_factory=dict)


__all__ = [
    "MAX_LOGPROBS",
    "Completion",
    "EngineStats",
    "RequestMetrics",
    "SamplingParams",
    "TokenConstraint",
    "TokenEvent",
]
