"""How the engine's step thread hands tokens to its callers: a ``Sink`` per request, and for
``async`` callers a ``QueueSink`` whose events reach their event loop with one wake-up per loop
and step (``deliver``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from flywheel.serving.llm._types import TokenEvent

Sink = Callable[[list[TokenEvent] | BaseException], None]


class HasSink(Protocol):
    """A request as ``deliver`` sees it: where its events go."""

    @property
    def sink(self) -> Sink: ...


class QueueSink:
    """The sink of an ``async`` caller: events go into its queue on its event loop."""

    __slots__ = ("loop", "queue")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        queue: asyncio.Queue[list[TokenEvent] | BaseException],
    ) -> None:
        self.loop = loop
        self.queue = queue

    def __call__(self, item: list[TokenEvent] | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)


def deliver(outbox: Sequence[tuple[HasSink, TokenEvent]]) -> None:
    """Hand a step's events to their requests' sinks: one call per request, and one wake-up
    per event loop for all its async callers (not one per request)."""
    by_request: dict[int, tuple[Sink, list[TokenEvent]]] = {}
    for request, event in outbox:
        by_request.setdefault(id(request), (request.sink, []))[1].append(event)
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue[Any], list[TokenEvent]]]]
    by_loop = {}
    for sink, events in by_request.values():
        if isinstance(sink, QueueSink):
            by_loop.setdefault(sink.loop, []).append((sink.queue, events))
        else:
            sink(events)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody listens
            loop.call_soon_threadsafe(_put_all, items)


def _put_all(items: list[tuple[asyncio.Queue[Any], list[TokenEvent]]]) -> None:
    for queue, events in items:
        queue.put_nowait(events)


__all__ = ["HasSink", "QueueSink", "Sink", "deliver"]
