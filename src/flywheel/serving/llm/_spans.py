"""The server-side span of each ``/v1`` generation request (OpenTelemetry GenAI conventions).

One ``chat {model}`` span per ``POST /v1/chat/completions`` (``text_completion {model}`` per
``POST /v1/completions``), kind ``SERVER``, through the project's telemetry set-up
(``flywheel.telemetry``): nothing is recorded while tracing is off. A caller's W3C
``traceparent`` header (the agent sends one) makes it a child of the caller's span, so the
agent's client-side ``chat`` span and this one sit in the same trace (the trace store counts
the tokens of such a pair once).

The span is written when the request ends, with the request's true start time, so a streamed
answer needs no context held open across the stream's chunks. Attributes:

* ``gen_ai.operation.name`` (``chat`` / ``text_completion``), ``gen_ai.provider.name``
  (``flywheel``), ``gen_ai.request.model`` (as asked: a name, ``name@stage`` or an endpoint),
  ``gen_ai.response.model`` (the version that answered, ``name-vN``), ``gen_ai.response.id``;
* ``gen_ai.request.max_tokens`` / ``temperature`` / ``top_p`` / ``top_k`` / ``seed`` /
  ``stop_sequences``, ``gen_ai.output.type`` (``text`` or ``json``);
* ``gen_ai.usage.input_tokens`` / ``output_tokens``, ``gen_ai.response.finish_reasons``;
* ``error.type`` when the request failed (an error status for 5xx answers only: a 4xx is the
  caller's error), ``http.response.status_code``;
* ``flywheel.model``, ``flywheel.model.version``, ``flywheel.endpoint``, ``flywheel.llm.stream``,
  ``flywheel.llm.cached_input_tokens``, ``flywheel.llm.time_to_first_token_s``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from flywheel import telemetry

PROVIDER = "flywheel"


class GenerationSpan:
    """Collects one request's GenAI attributes; ``end`` writes the span (when tracing is on)."""

    def __init__(self, operation: str, headers: Mapping[str, str]) -> None:
        self.operation = operation
        self.start_ns = time.time_ns()
        self._headers = {k: v for k, v in headers.items() if k in ("traceparent", "tracestate")}
        self._first_token_ns: int | None = None
        self.model = ""
        self.attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": PROVIDER,
        }
        self._ended = False

    def request(self, req: Any, params: Any | None = None) -> None:
        """The request's model and settings (``params``: the engine's ``SamplingParams``)."""
        self.model = str(req.model)
        fmt = getattr(req, "response_format", None)
        self._set(
            {
                "gen_ai.request.model": self.model,
                "gen_ai.output.type": "json" if fmt is not None and fmt.type != "text" else "text",
                "flywheel.llm.stream": bool(getattr(req, "stream", False)),
            }
        )
        if params is not None:
            self._set(
                {
                    "gen_ai.request.max_tokens": params.max_tokens,
                    "gen_ai.request.temperature": float(params.temperature),
                    "gen_ai.request.top_p": float(params.top_p),
                    "gen_ai.request.top_k": params.top_k or None,
                    "gen_ai.request.seed": params.seed,
                    "gen_ai.request.stop_sequences": list(params.stop) or None,
                }
            )

    def target(self, target: Any, response_id: str) -> None:
        """Who answered: the loaded version and the endpoint it was reached through."""
        chat = target.chat
        self._set(
            {
                "gen_ai.response.model": chat.label,
                "gen_ai.response.id": response_id,
                "flywheel.model": chat.model,
                "flywheel.model.version": chat.version,
                "flywheel.endpoint": getattr(target.endpoint, "name", None),
            }
        )

    def first_token(self) -> None:
        """Note when the first token came out (once)."""
        if self._first_token_ns is None:
            self._first_token_ns = time.time_ns()

    def usage(self, finals: list[Any], finish_reasons: list[str]) -> None:
        """Token counts over the request's choices and each choice's finish reason."""
        done = [f for f in finals if f is not None]
        self._set(
            {
                "gen_ai.usage.input_tokens": sum(f.prompt_tokens for f in done),
                "gen_ai.usage.output_tokens": sum(f.completion_tokens for f in done),
                "flywheel.llm.cached_input_tokens": sum(f.cached_prompt_tokens for f in done),
                "gen_ai.response.finish_reasons": list(finish_reasons) or None,
            }
        )

    def end(self, status: int, error: Any | None = None) -> None:
        """Write the span (once): ``status`` is the HTTP status answered; ``error`` the
        ``OpenAIError`` when it failed."""
        if self._ended:
            return
        self._ended = True
        tracing = telemetry.active_tracing()
        if tracing is None:
            return
        attributes = dict(self.attributes)
        attributes["http.response.status_code"] = status
        if self._first_token_ns is not None:
            attributes["flywheel.llm.time_to_first_token_s"] = (
                self._first_token_ns - self.start_ns
            ) / 1e9
        if error is not None:
            attributes["error.type"] = str(getattr(error, "code", None) or error.type)
        elif status >= 400:
            attributes["error.type"] = "client_closed" if status == 499 else str(status)
        parent = None
        if "traceparent" in self._headers:
            from opentelemetry.propagate import extract

            parent = extract(self._headers)
        name = f"{self.operation} {self.model}" if self.model else self.operation
        span = tracing.tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes=attributes,
            start_time=self.start_ns,
        )
        if status >= 500:  # a server span: a 4xx is the caller's error, not this span's
            message = str(getattr(error, "message", "") or attributes.get("error.type", ""))
            span.set_status(Status(StatusCode.ERROR, message))
        span.end()

    def _set(self, values: Mapping[str, Any]) -> None:
        self.attributes.update({k: v for k, v in values.items() if v is not None})


__all__ = ["GenerationSpan"]
