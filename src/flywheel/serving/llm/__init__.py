"""LLM serving: the engine (paged KV cache, continuous batching, prefix cache) and a tiny model.

Public API::

    build_tiny_model(out_dir, seed=0) -> Path       # a small chat model trained here in seconds
    LLMEngine(model_dir, device="cpu", ...)          # serves a HF causal-LM folder (Llama family)
    engine.generate(prompt_ids, SamplingParams(...), constraint=None) -> AsyncIterator[TokenEvent]
    engine.generate_blocking([(prompt_ids, params), ...]) -> list[Completion]
    engine.embed(token_ids_batch) -> np.ndarray      # mean-pooled final hidden states
    engine.stats() -> EngineStats                    # running/waiting, KV usage, prefix cache, ...
    TokenConstraint                                  # the constrained-decoding hook (a grammar)
    ScriptedChatPolicy / ScriptedChatBackend         # flavor scripted-chat: rules, NOT an LLM

The OpenAI-compatible API over it (``/v1``)::

    ChatBackend / EmbeddingBackend / CHAT_BACKENDS   # what /v1 serves; flavor -> backend loader
    flywheel.serving.llm._openai:router              # SYSTEM_ROUTERS entry (/v1/...)
    llm_service(project)                             # SYSTEM_SERVICES entry (closes backends)

Errors: ``LLMEngineError`` and below (see ``flywheel.serving.llm._errors``).
"""

from flywheel.serving.llm._backend import CHAT_BACKENDS, ChatBackend, EmbeddingBackend
from flywheel.serving.llm._engine import LLMEngine
from flywheel.serving.llm._errors import (
    EngineFailed,
    EngineOverloaded,
    EngineStopped,
    LLMEngineError,
    PromptTooLong,
)
from flywheel.serving.llm._scripted import (
    ScriptedChatBackend,
    ScriptedChatPolicy,
    ScriptedReply,
    ScriptError,
)
from flywheel.serving.llm._service import LLMService, llm_service, llm_service_for
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
    "CHAT_BACKENDS",
    "ChatBackend",
    "Completion",
    "EmbeddingBackend",
    "EngineFailed",
    "EngineOverloaded",
    "EngineStats",
    "EngineStopped",
    "LLMEngine",
    "LLMEngineError",
    "LLMService",
    "PromptTooLong",
    "RequestMetrics",
    "SamplingParams",
    "ScriptError",
    "ScriptedChatBackend",
    "ScriptedChatPolicy",
    "ScriptedReply",
    "TokenConstraint",
    "TokenEvent",
    "build_tiny_model",
    "llm_service",
    "llm_service_for",
]
