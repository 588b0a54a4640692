"""The event log interface (what features' ``push`` appends to, and what stream processors,
experiments' event consumer and the recommender's catalogue follower consume) and its backend
registry. Payloads are opaque bytes; ids are strings that sort in append order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from flywheel._plugins import load_for_url
from flywheel.errors import FlywheelError

Event = tuple[str, bytes]  # (log id, payload)


class EventLogError(FlywheelError):
    """An event log URL or backend call is invalid (names the URL and the reason)."""


EVENT_LOGS: dict[str, str] = {
    "sqlite": "flywheel.events._sqlite:SQLiteEventLog",
    "redis": "flywheel.events._redis:RedisEventLog",
    "rediss": "flywheel.events._redis:RedisEventLog",
}


class EventLog(Protocol):
    """An append-only log per stream, consumed by groups of consumers (Redis Streams semantics).

    Contract (``tests/events/test_eventlog.py`` runs it on SQLite and the real Redis):

    - ``append(stream, payloads)``: all payloads or none are appended (one transaction); returns
      their ids, increasing in append order.
    - ``read(stream, group, consumer, count, block_ms)``: first this consumer's delivered but
      unacknowledged events (so a restarted consumer with the same name resumes), then new ones
      that no consumer of the group has been given; each new event goes to exactly one consumer.
      The group is created at the start of the stream on first use. Waits up to ``block_ms`` for
      new events when there are none.
    - ``read_pending(stream, group, consumer, count)``: only this consumer's delivered but
      unacknowledged events; ``read_new(stream, group, consumer, count)``: only new events. Both
      without waiting. A processor resumes with the first and reads its next batch with the
      second while it applies the current one.
    - ``ack(stream, group, ids)``: the events are done; they are never delivered again.
    - ``claim(stream, group, consumer, min_idle_ms, count)``: take over events that were given
      to any consumer of the group (this one included) more than ``min_idle_ms`` ago and not
      acknowledged (their consumer died or is stuck); they are then pending at ``consumer``.
    - ``lag(stream, group)``: events appended but not acknowledged by the group.
    - ``pending(stream, group)``: events delivered to any consumer of the group and not yet
      acknowledged (a dead consumer's included).
    """

    def append(self, stream: str, payloads: Sequence[bytes]) -> list[str]: ...

    def read(
        self, stream: str, group: str, consumer: str, count: int, block_ms: int
    ) -> list[Event]: ...

    def read_pending(self, stream: str, group: str, consumer: str, count: int) -> list[Event]: ...

    def read_new(self, stream: str, group: str, consumer: str, count: int) -> list[Event]: ...

    def ack(self, stream: str, group: str, ids: Sequence[str]) -> None: ...

    def claim(
        self, stream: str, group: str, consumer: str, min_idle_ms: int, count: int
    ) -> list[Event]: ...

    def lag(self, stream: str, group: str) -> int: ...

    def pending(self, stream: str, group: str) -> int: ...

    def close(self) -> None: ...


def open_event_log(url: str, *, namespace: str = "flywheel") -> EventLog:
    """The backend for ``url`` (``sqlite:///path`` or ``redis://host:port/db[?prefix=...]``)."""
    backend = load_for_url(EVENT_LOGS, url, what="event log", error=EventLogError)
    log: EventLog = backend(url, namespace=namespace)
    return log
