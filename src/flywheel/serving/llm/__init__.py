"""LLM serving: the engine (paged KV cache, continuous batching, prefix cache) and a tiny model.

Public API::

    build_tiny_model(out_dir, seed=0) -> Path       # a small chat model trained here in seconds
    LLMEngine(model_dir, device="cpu", ...)          # serves a HF causal-LM folder (Llama family)
    engine.generate(prompt_ids, SamplingParams(...), constraint=None) -> AsyncIterator[TokenEvent]
    engine.generate_blocking([(prompt_ids, params), ...]) -> list[Completion]
    engine.embed(token_ids_batch) -> np.ndarray      # mean-pooled final hidden states
    engine.stats() -> EngineStats                    # running/waiting, KV usage, prefix cache, ...
    TokenConstraint                                  # the constrained-decoding hook (a grammar)

Errors: ``LLMEngineError`` and below (see ``flywheel.serving.llm._errors``).
"""

from flywheel.serving.llm._engine import LLMEngine
from flywheel.serving.llm._errors import (
    EngineFailed,
    EngineOverloaded,
    EngineStopped,
    LLMEngineError,
    PromptTooLong,
)
from flywheel.serving.llm._tiny import build_tiny_model
from flywheel.serving.llm._types import (
    Completion,
    EngineStats,
    RequestMetrics,
    SamplingParams,
    TokenConstraint,
    TokenEvent,
)

__all__ = [
    "Completion",
    "EngineFailed",
    "EngineOverloaded",
    "EngineStats",
    "EngineStopped",
    "LLMEngine",
    "LLMEngineError",
    "PromptTooLong",
    "RequestMetrics",
    "SamplingParams",
    "TokenConstraint",
    "TokenEvent",
    "build_tiny_model",
]
