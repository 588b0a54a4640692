"""Feeding experiments from the platform's event stream (``flywheel.features`` event log).

``EventStreamConsumer`` reads JSON events from one stream of the configured event log (the
stream ``FeatureStore.push`` appends to, or any producer's) as a member of a consumer group,
turns each into an experiment event (metric event, or bandit reward when it names an
``experiment``), stores the batch in one transaction and only then acknowledges it. A consumer
that dies before acknowledging gets its events back (or another consumer claims them after
``claim_idle_ms``); every event is stored under ``event_id = "<stream>:<log id>"``, so a
redelivered event is never counted twice. Bandits that received rewards are updated at once.

Field mapping (per stream): ``unit_field`` (default ``user_id``), ``type_field``
(``event_type``; or a fixed ``event_type=`` for single-type streams), ``value_field``
(``value``, default 1.0 when absent), ``ts_field`` (``ts``: epoch microseconds as
``FeatureStore.push`` writes them, or seconds with ``ts_scale=1``, or ISO 8601 strings). Events
without a unit or with bad fields are acknowledged and counted as skipped, so one malformed
event cannot block the stream.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from hashlib import blake2b
from typing import TYPE_CHECKING, Any

from flywheel.events import EventLog, open_event_log
from flywheel.experiments._errors import ExperimentNotFound, InvalidExperiment

if TYPE_CHECKING:
    from flywheel.experiments._client import Experiments

log = logging.getLogger(__name__)


@dataclass
class ConsumeStats:
    """What one ``poll`` did."""

    read: int = 0
    stored: int = 0
    skipped: int = 0
    bandits_updated: int = 0

    def add(self, other: ConsumeStats) -> None:
        self.read += other.read
        self.stored += other.stored
        self.skipped += other.skipped
        self.bandits_updated += other.bandits_updated


class EventStreamConsumer:
    """Consumes one event-log stream into experiment events (see the module docstring).

    Args:
        experiments: the experiments client to store into.
        stream: the event-log stream name.
        event_log: a ``flywheel.events.EventLog``; default: the project's configured one.
        group: the consumer group (one group per independent reader of the stream).
        consumer: this consumer's name (default: host and pid); reuse it to resume after a crash.
    """

    def __init__(
        self,
        experiments: Experiments,
        stream: str,
        *,
        event_log: EventLog | None = None,
        group: str = "flywheel-experiments",
        consumer: str | None = None,
        unit_field: str = "user_id",
        type_field: str = "event_type",
        event_type: str | None = None,
        value_field: str = "value",
        ts_field: str = "ts",
        ts_scale: float = 1e-6,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.experiments = experiments
        self.stream = stream
        self._owns_log = event_log is None
        if event_log is None:
            config = experiments.project.config
            event_log = open_event_log(config.event_log_url, namespace=config.project)
        self.event_log = event_log
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self.unit_field = unit_field
        self.type_field = type_field
        self.event_type = event_type
        self.value_field = value_field
        self.ts_field = ts_field
        self.ts_scale = ts_scale
        self.claim_idle_ms = claim_idle_ms

    def _event_id(self, log_id: str) -> str:
        event_id = f"{self.stream}:{log_id}"
        if len(event_id) > 64:
            event_id = blake2b(event_id.encode(), digest_size=32).hexdigest()
        return event_id

    def _decode(self, log_id: str, payload: bytes) -> dict[str, Any] | None:
        from flywheel.experiments._events import event_row

        try:
            data = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        ts = data.get(self.ts_field)
        if isinstance(ts, str):
            try:
                parsed = datetime.fromisoformat(ts)
            except ValueError:
                return None
            ts = (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()
        elif isinstance(ts, int | float) and not isinstance(ts, bool):
            ts = ts * self.ts_scale
        event = {
            "unit_id": data.get(self.unit_field),
            "event_type": self.event_type or data.get(self.type_field),
            "value": data.get(self.value_field, 1.0),
            "ts": ts,
            "event_id": self._event_id(log_id),
            "experiment": data.get("experiment"),
            "decision_id": data.get("decision_id"),
        }
        if event["value"] is None:
            event["value"] = 1.0
        try:
            return event_row(event, 0, field=f"stream {self.stream} event {log_id}")
        except InvalidExperiment as exc:
            log.warning("skipping event %s of stream %s: %s", log_id, self.stream, exc)
            return None

    def poll(self, count: int = 1_000, block_ms: int = 0) -> ConsumeStats:
        """Read, store and acknowledge up to ``count`` events (waiting up to ``block_ms``)."""
        stats = ConsumeStats()
        events = self.event_log.claim(
            self.stream, self.group, self.consumer, self.claim_idle_ms, count
        )
        if len(events) < count:
            events += self.event_log.read(
                self.stream, self.group, self.consumer, count - len(events), block_ms
            )
        if not events:
            return stats
        stats.read = len(events)
        rows = []
        for log_id, payload in events:
            row = self._decode(log_id, payload)
            if row is None:
                stats.skipped += 1
            else:
                rows.append(row)
        if rows:
            with self.experiments.project.db.write() as conn:
                stats.stored = self.experiments.store.insert_events(conn, rows)
        self.event_log.ack(self.stream, self.group, [log_id for log_id, _ in events])
        rewarded = sorted({r["experiment"] for r in rows if r.get("experiment")})
        for name in rewarded:
            try:
                info = self.experiments.get(name)
            except ExperimentNotFound:  # the events stay stored; there is no state to update
                continue
            if info.spec.bandit is not None:
                self.experiments.update_bandit(name)
                stats.bandits_updated += 1
        return stats

    def run(
        self, stop: threading.Event, *, count: int = 1_000, block_ms: int = 1_000
    ) -> ConsumeStats:
        """Poll until ``stop`` is set; returns the totals."""
        total = ConsumeStats()
        while not stop.is_set():
            total.add(self.poll(count, block_ms))
        return total

    def lag(self) -> int:
        """Events appended to the stream that this group has not acknowledged."""
        return int(self.event_log.lag(self.stream, self.group))

    def close(self) -> None:
        if self._owns_log:
            self.event_log.close()


__all__ = ["ConsumeStats", "EventStreamConsumer"]
