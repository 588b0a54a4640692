"""What ``/v1`` serves: the ``ChatBackend`` protocol and the flavor -> backend loader table.

A ``ChatBackend`` is one loaded chat model version. The OpenAI routes only ever talk to this
protocol, so the LLM engine (flavor ``llm``) and a deterministic scripted model (flavor
``scripted-chat``) are served by the same code: chat templates, tool-call parsing, constrained
decoding, streaming, metrics and canaries work the same for both.

Loading: ``CHAT_BACKENDS`` maps a registry flavor to ``"module:function"``, a
``load(folder, mv, *, device) -> ChatBackend`` that builds the backend from the version's
verified files (``Registry.materialize``). It runs in a worker thread.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from flywheel._plugins import load_target

CHAT_BACKENDS: dict[str, str] = {
    "llm": "flywheel.serving.llm._backend:load_engine_backend",
    "scripted-chat": "flywheel.serving.llm._scripted:load_backend",
}


@runtime_checkable
class ChatBackend(Protocol):
    """One loaded chat model version.

    ``generate`` follows the LLM engine's contract: ``TokenEvent``s, the last one with a
    ``finish_reason``; closing the iterator early aborts the request and frees what it holds.
    Tool calls are text in the events: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``.
    """

    max_model_len: int
    vocab_size: int
    eos_token_ids: tuple[int, ...]
    supports_constraints: bool

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int]:
        """Prompt token ids: the conversation plus the generation prompt."""
        ...

    def encode(self, text: str) -> list[int]:
        """Token ids of plain text (no special tokens added)."""
        ...

    def decode(self, token_ids: Sequence[int]) -> str:
        """The text of ``token_ids``."""
        ...

    def grammar_tokenizer(self) -> Any | None:
        """The Hugging Face tokenizer constrained decoding compiles against (None: none)."""
        ...

    def generate(
        self,
        prompt_token_ids: list[int],
        params: Any,
        constraint: Any | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[Any, None]:
        """Stream ``TokenEvent``s for one request (see the class docstring)."""
        ...

    def stats(self) -> Any | None:
        """The engine's ``EngineStats`` snapshot, or None for a backend without an engine."""
        ...

    def close(self) -> None:
        """Stop and free everything (the backend is not used again)."""
        ...


@runtime_checkable
class EmbeddingBackend(Protocol):
    """A backend that also embeds (``/v1/embeddings``)."""

    embedding_size: int

    async def embed(self, token_ids_batch: list[list[int]]) -> np.ndarray:
        """float32 ``[len(batch), embedding_size]``, not normalised."""
        ...


BackendLoader = Callable[..., ChatBackend]


def backend_loader(flavor: str) -> BackendLoader | None:
    """The loader of ``flavor``'s backend, or None when ``flavor`` is not a chat model."""
    target = CHAT_BACKENDS.get(flavor)
    if target is None:
        return None
    loader: BackendLoader = load_target(target)
    return loader


class EngineBackend:
    """``ChatBackend`` over ``LLMEngine`` for a Hugging Face-format folder (flavor ``llm``)."""

    supports_constraints = True

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.tokenizer = engine.tokenizer
        self.max_model_len = int(engine.max_model_len)
        self.vocab_size = int(engine.vocab_size)
        self.eos_token_ids = tuple(int(t) for t in engine.eos_token_ids)
        self.embedding_size = int(engine.hidden_size)
        self.device = str(engine.device)

    def render_chat(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> list[int]:
        if getattr(self.tokenizer, "chat_template", None) is None:
            raise ValueError("this model has no chat template; use /v1/completions")
        kwargs: dict[str, Any] = {"add_generation_prompt": True, "tokenize": False}
        if tools:
            kwargs["tools"] = tools
        text = self.tokenizer.apply_chat_template(messages, **kwargs)
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=False))

    def grammar_tokenizer(self) -> Any | None:
        return self.tokenizer

    def generate(
        self,
        prompt_token_ids: list[int],
        params: Any,
        constraint: Any | None = None,
        request_id: str | None = None,
    ) -> AsyncGenerator[Any, None]:
        result: AsyncGenerator[Any, None] = self.engine.generate(
            prompt_token_ids, params, constraint, request_id
        )
        return result

    async def embed(self, token_ids_batch: list[list[int]]) -> np.ndarray:
        result: np.ndarray = await self.engine.embed(token_ids_batch)
        return result

    def stats(self) -> Any | None:
        return self.engine.stats()

    def close(self) -> None:
        self.engine.close()


def load_engine_backend(folder: Path, mv: Any, *, device: str = "cpu") -> EngineBackend:
    """``CHAT_BACKENDS["llm"]``: an ``LLMEngine`` over the version's folder.

    Engine settings come from the version's ``config["engine"]`` (``block_size``,
    ``num_blocks``, ``max_num_seqs``, ``max_num_batched_tokens``, ``max_waiting``,
    ``enable_prefix_caching``, ``dtype``), so a registered version carries how it is served.
    """
    from flywheel.serving.llm._engine import LLMEngine

    config = dict(getattr(mv, "config", None) or {})
    engine_args = dict(config.get("engine") or {})
    allowed = {
        "block_size",
        "num_blocks",
        "max_num_seqs",
        "max_num_batched_tokens",
        "max_waiting",
        "enable_prefix_caching",
        "dtype",
        "num_threads",
    }
    unknown = sorted(set(engine_args) - allowed)
    if unknown:
        raise ValueError(f"config.engine has unknown settings {unknown}; known: {sorted(allowed)}")
    return EngineBackend(LLMEngine(folder, device=device, **engine_args))


__all__ = [
    "CHAT_BACKENDS",
    "ChatBackend",
    "EmbeddingBackend",
    "EngineBackend",
    "backend_loader",
    "load_engine_backend",
]
