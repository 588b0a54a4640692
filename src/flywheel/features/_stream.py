"""The stream processor: event log -> time tiles in the online store (+ an archive for offline).

For each batch it reads from the log (its own unacknowledged events first, then new ones; events
of a consumer that is gone are claimed as soon as this one has nothing new to do and they have
waited ``gone_ms``, and in any case every ``claim_idle_ms``), applies them per stream view and
entity in one optimistic transaction per view (``OnlineStore.transact``), archives the applied
events as Parquet for the offline store, and only then acknowledges them (``XACK`` after the
write).
While ``run`` runs, the next batch is read (new events only) and the archive is written in a
worker thread, overlapping with the store's round trips; a batch is acknowledged only once its
tiles and its archive are written. A processor killed at any point (read-ahead events included:
they are pending at its consumer) redelivers unacknowledged events on restart; tiles remember
applied event ids, so nothing is counted twice and nothing acknowledged is lost. Several
processes share a stream through the consumer group; concurrent updates of one entity are
serialised by the store's transactions.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from flywheel.events import Event
from flywheel.features._definitions import StreamFeatureView
from flywheel.features._metrics import metrics
from flywheel.features._online import Row, table_name
from flywheel.features._tiles import agg_specs, apply_events, new_state

if TYPE_CHECKING:
    from flywheel.features._store import FeatureStore

DEFAULT_GROUP = "flywheel"


@dataclass
class ProcessorStats:
    events: int = 0
    applied: int = 0
    duplicates: int = 0
    late: int = 0
    batches: int = 0

    def to_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def default_consumer_name(index: int = 0) -> str:
    """``HOST-INDEX``: stable across restarts on one host, so that a restarted processor is the
    same consumer and re-reads first what it left unacknowledged when it died."""
    return f"{socket.gethostname()}-{index}"


def _write_archive(folder: Path, name: str, events: list[tuple[str, int, dict[str, Any]]]) -> None:
    """Write ``(event id, ts, row)`` events as ``folder/name.parquet`` atomically (a retry
    overwrites the same file): the rows' fields (all that any row has), ``__ts``, ``__event_id``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = events[0][2].keys()
    if all(row.keys() == first for _, _, row in events):
        names = list(first)
    else:
        names = list(dict.fromkeys(k for _, _, row in events for k in row))
    columns: dict[str, Any] = {k: [row.get(k) for _, _, row in events] for k in names}
    columns["__ts"] = [ts for _, ts, _ in events]
    columns["__event_id"] = [eid for eid, _, _ in events]
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{name}.parquet"
    tmp = folder / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, target)


class StreamProcessor:
    """Consume the given streams (default: every stream with a stream feature view)."""

    def __init__(
        self,
        store: FeatureStore,
        streams: Sequence[str] | None = None,
        *,
        consumer: str | None = None,
        group: str = DEFAULT_GROUP,
        batch_size: int = 2000,
        claim_idle_ms: int = 30_000,
        gone_ms: int = 2_000,
        archive: bool = True,
    ) -> None:
        self.store = store
        self.streams = list(streams) if streams is not None else None
        self.consumer = consumer or default_consumer_name()
        self.group = group
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.gone_ms = gone_ms
        self.archive = archive
        self.stats = ProcessorStats()
        self._last_claim = 0.0
        # While ``run`` runs: a worker pool that reads each stream's next batch while the current
        # one is applied, and writes archives while the tiles are being stored.
        self._pool: ThreadPoolExecutor | None = None
        self._ahead: dict[str, Future[list[Event]]] = {}
        self._archiving: list[Future[None]] = []
        self._resumed: set[str] = set()  # streams with nothing left pending from before

    def _stream_views(self) -> dict[str, list[StreamFeatureView]]:
        defs = self.store.definitions
        defs.refresh()
        out: dict[str, list[StreamFeatureView]] = {}
        for view in defs.views.values():
            if isinstance(view, StreamFeatureView) and view.source is not None:
                # Only the newest version of each view is kept fresh.
                if defs.newest.get(view.name) != view.version:
                    continue
                out.setdefault(view.source.name, []).append(view)
        if self.streams is not None:
            out = {s: out.get(s, []) for s in self.streams}
        return out

    def run_once(self, block_ms: int = 200) -> int:
        """Process at most one batch per stream; returns the number of events handled."""
        log = self.store.event_log
        handled = 0
        by_stream = self._stream_views()
        claim = time.monotonic() - self._last_claim > self.claim_idle_ms / 2000
        if claim:
            self._last_claim = time.monotonic()
        for stream, views in by_stream.items():
            events: list[Event] = []
            if claim:
                events = log.claim(
                    stream, self.group, self.consumer, self.claim_idle_ms, self.batch_size
                )
            if not events and self._pool is not None and stream not in self._resumed:
                # Before reading ahead: what this consumer left unacknowledged (a restart), in
                # order, so that batches apply in the same order as in a run without a crash.
                events = log.read_pending(stream, self.group, self.consumer, self.batch_size)
                if not events:
                    self._resumed.add(stream)
            if not events and stream in self._ahead:
                events = self._ahead.pop(stream).result()
            if not events:
                wait = block_ms if len(by_stream) == 1 else min(block_ms, 20)
                events = log.read(stream, self.group, self.consumer, self.batch_size, wait)
            if not events:
                # Nothing new: take over what a consumer that is gone left pending (delivered
                # ``gone_ms`` ago and never acknowledged). If that consumer is only slow, the
                # batch is applied twice, which tiles make harmless (they skip applied ids).
                events = log.claim(stream, self.group, self.consumer, self.gone_ms, self.batch_size)
            if not events:
                continue
            if self._pool is not None and stream in self._resumed and stream not in self._ahead:
                # The next batch (new events only: this one is still pending) is fetched meanwhile;
                # if the processor dies, those events are pending and come back on restart.
                self._ahead[stream] = self._pool.submit(
                    log.read_new, stream, self.group, self.consumer, self.batch_size
                )
            self.process(stream, views, events)
            log.ack(stream, self.group, [i for i, _ in events])
            handled += len(events)
            m = metrics()
            m["events"].labels(stream, "handled").inc(len(events))
        if not by_stream and block_ms:
            time.sleep(block_ms / 1000)
        return handled

    def _group_pending(self) -> bool:
        log = self.store.event_log
        return any(log.pending(stream, self.group) for stream in self._stream_views())

    def process(
        self, stream: str, views: Sequence[StreamFeatureView], events: Sequence[Event]
    ) -> None:
        """Apply one batch to every view of ``stream`` (idempotent; safe to repeat)."""
        decoded = [(log_id, orjson.loads(p)) for log_id, p in events]
        self.stats.events += len(decoded)
        self.stats.batches += 1
        try:
            for view in views:
                self._apply_view(view, decoded, events[0][0], events[-1][0])
        finally:
            jobs, self._archiving = self._archiving, []
            for job in jobs:  # archived before the batch is acknowledged
                job.result()

    def _apply_view(
        self,
        view: StreamFeatureView,
        decoded: list[tuple[str, dict[str, Any]]],
        first_id: str,
        last_id: str,
    ) -> None:
        assert view.source is not None
        defs = self.store.definitions
        keys = defs.join_keys(view)
        ts_field = view.source.timestamp_field
        id_field = view.source.event_id_field
        specs = agg_specs(view)
        lateness_us = int(view.allowed_lateness * 1_000_000)
        by_key: dict[str, list[tuple[str, int, dict[str, Any]]]] = {}
        single = keys[0] if len(keys) == 1 else None
        newest: int | None = None
        for log_id, row in decoded:
            try:
                if single is not None:
                    v = row[single]
                    key = v if isinstance(v, str) else str(int(v))
                else:
                    key = "\x1f".join(
                        row[k] if isinstance(row[k], str) else str(int(row[k])) for k in keys
                    )
                ts = int(row[ts_field])
            except (KeyError, TypeError, ValueError):
                continue  # push validated rows; anything else in the log is not ours to apply
            eid = str(row.get(id_field) or log_id) if id_field else log_id
            evs = by_key.get(key)
            if evs is None:
                by_key[key] = [(eid, ts, row)]
            else:
                evs.append((eid, ts, row))
            if newest is None or ts > newest:
                newest = ts
        counts = {"applied": 0, "duplicates": 0, "late": 0}
        written: list[Future[None]] = []
        archive_dir = self.store.stream_archive(view.ref)
        safe_name = f"{first_id}_{last_id}".replace(":", "-")

        def update(current: Mapping[str, Row | None]) -> dict[str, Row]:
            new: dict[str, Row] = {}
            archived: list[tuple[str, int, dict[str, Any]]] = []
            applied_n = dup_n = late_n = 0
            loads, dumps = orjson.loads, orjson.dumps  # = load_state / dump_state, inlined
            for key, evs in by_key.items():
                cur = current.get(key)
                state = loads(cur[1]) if cur else new_state()
                applied, dups, late = apply_events(state, specs, evs, lateness_us)
                applied_n += len(applied)
                dup_n += len(dups)
                late_n += late
                if not late:
                    archived += evs  # applied now or before: archived (again) either way
                else:
                    keep = set(applied) | set(dups)
                    archived += [ev for ev in evs if ev[0] in keep]
                if applied:
                    new[key] = (int(state["hw"]), dumps(state))
            if self.archive and archived:
                if self._pool is None:
                    _write_archive(archive_dir, safe_name, archived)
                else:  # written while the store commits; a retried update rewrites the file
                    if written:  # an earlier try of this update: let it finish first
                        written.pop().result()
                    job = self._pool.submit(_write_archive, archive_dir, safe_name, archived)
                    written.append(job)
                    self._archiving.append(job)
            counts.update(applied=applied_n, duplicates=dup_n, late=late_n)
            return new

        self.store.online_store.transact(table_name(view.ref), list(by_key), update)
        self.stats.applied += counts["applied"]
        self.stats.duplicates += counts["duplicates"]
        self.stats.late += counts["late"]
        m = metrics()
        if counts["late"]:
            m["events"].labels(view.source.name, "late_dropped").inc(counts["late"])
        if counts["duplicates"]:
            m["events"].labels(view.source.name, "duplicate").inc(counts["duplicates"])
        if newest is not None:
            m["freshness"].labels(view.ref).set(max(0.0, time.time() - newest / 1e6))

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        block_ms: int = 200,
        until_idle: bool = False,
        max_seconds: float | None = None,
    ) -> ProcessorStats:
        """Process until ``stop`` is set, the log is drained (``until_idle``: nothing new and
        nothing pending for the group, at any consumer) or time runs out."""
        started = time.monotonic()
        self._pool = ThreadPoolExecutor(2, thread_name_prefix="flywheel-stream")
        try:
            while not (stop is not None and stop.is_set()):
                n = self.run_once(block_ms)
                if until_idle and n == 0 and not self._group_pending():
                    break
                if max_seconds is not None and time.monotonic() - started > max_seconds:
                    break
        finally:
            # Batches read ahead stay pending at this consumer: the next run reads them first.
            wait(list(self._ahead.values()))
            self._ahead.clear()
            self._resumed.clear()
            self._pool.shutdown(wait=True)
            self._pool = None
        return self.stats
