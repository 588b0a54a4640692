"""Errors of the LLM engine.

Hierarchy::

    LLMEngineError                 (root)
    ├── PromptTooLong              (also ValueError) prompt + max_tokens exceed the context
    ├── EngineOverloaded           the waiting queue is full: retry later (HTTP 429)
    ├── EngineStopped              the engine was stopped (HTTP 503)
    └── EngineFailed               a step raised; raised from the stream of every affected request
"""

from __future__ import annotations


class LLMEngineError(Exception):
    """Root of the engine's errors."""


class PromptTooLong(LLMEngineError, ValueError):
    """The prompt plus ``max_tokens`` exceed ``max_model_len``."""

    def __init__(self, message: str, *, prompt_tokens: int, max_tokens: int, max_model_len: int):
        super().__init__(message)
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len


class EngineOverloaded(LLMEngineError):
    """Too many requests are waiting; ``retry_after_s`` is a hint for the client."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineStopped(LLMEngineError):
    """The engine is stopped and accepts no requests."""


class EngineFailed(LLMEngineError):
    """A step of the engine raised; the requests in that step are finished with this error."""


__all__ = ["EngineFailed", "EngineOverloaded", "EngineStopped", "LLMEngineError", "PromptTooLong"]
