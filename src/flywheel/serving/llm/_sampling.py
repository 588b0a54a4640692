"""Choosing the next token: greedy, or temperature / top-k / top-p with a per-request generator.

Each request owns a ``torch.Generator`` (seeded from ``SamplingParams.seed``, else at random), and
only its own row is drawn with it, so a seed gives the same tokens whatever else is in the batch.
"""

from __future__ import annotations

import torch

from flywheel.serving.llm._types import SamplingParams


def choose(
    logits: torch.Tensor,
    params: SamplingParams,
    generator: torch.Generator,
    allowed: torch.Tensor | None = None,
) -> int:
    """The next token for one request from its raw ``logits`` row ``[vocab]`` (float32).

    ``allowed`` (a constraint's boolean mask) removes the other tokens first; when it allows
    nothing the first token of the vocabulary is returned so the caller can end the request.
    """
    if allowed is not None:
        allowed = allowed.to(device=logits.device, dtype=torch.bool)
        if allowed.shape[0] < logits.shape[0]:  # mask over the tokenizer's vocabulary only
            allowed = torch.cat([allowed, allowed.new_zeros(logits.shape[0] - allowed.shape[0])])
        logits = logits.masked_fill(~allowed[: logits.shape[0]], float("-inf"))
    if params.greedy:
        return int(torch.argmax(logits))
    scores = logits / params.temperature
    if params.top_k and params.top_k < scores.shape[0]:
        kth = torch.topk(scores, params.top_k).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True)
        probs = torch.softmax(sorted_scores, dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        drop = (torch.cumsum(probs, dim=-1) - probs) >= params.top_p
        sorted_scores = sorted_scores.masked_fill(drop, float("-inf"))
        scores = torch.empty_like(scores).scatter_(0, order, sorted_scores)
    probs = torch.softmax(scores, dim=-1)
    if not bool(torch.isfinite(probs).all()) or float(probs.sum()) <= 0:
        return int(torch.argmax(logits))
    return int(torch.multinomial(probs, 1, generator=generator))


def top_logprobs(logprobs: torch.Tensor, n: int) -> list[tuple[int, float]]:
    """The ``n`` most likely tokens of a log-softmax row, best first."""
    if n <= 0:
        return []
    values, ids = torch.topk(logprobs, n)
    return list(zip(ids.tolist(), values.tolist(), strict=True))


__all__ = ["choose", "top_logprobs"]
