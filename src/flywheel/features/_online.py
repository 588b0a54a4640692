"""The online store interface, its backend registry and the row encoding shared by backends.

Backends store opaque rows ``(key, event_time_us, payload)`` in named tables (one per view
version); they know nothing about features. Everything above (encoding values, TTL, statuses,
stream tiles) is written once here and in ``_response`` / ``_tiles``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from flywheel._plugins import load_for_url
from flywheel.features._errors import FeatureStoreError

Row = tuple[int, bytes]  # (event time in µs since the epoch, payload)

# URL scheme -> "module:Class". One line per backend.
ONLINE_STORES: dict[str, str] = {
    "sqlite": "flywheel.features._online_sqlite:SQLiteOnlineStore",
    "redis": "flywheel.features._online_redis:RedisOnlineStore",
    "rediss": "flywheel.features._online_redis:RedisOnlineStore",
}


class OnlineStore(Protocol):
    """Latest row per key, per table. Contract (checked by ``tests/features/test_online.py``):

    - ``write(table, rows)``: upsert ``(key, event_time_us, payload)`` rows. A stored row is
      replaced only by a row with an event time >= its own, so replaying older data never moves
      a key backwards and writing the same rows twice leaves the same state (idempotent). All
      rows of one call are applied, or, on an error, possibly a prefix of them — callers make
      reruns safe by idempotency, not by atomicity. With ``assume_newer=True`` the caller
      guarantees that no row is older than the stored one, and the backend may skip the check.
    - ``read(requests)``: for each ``(table, keys)`` the stored ``Row`` per key, or ``None`` when
      the key (or the table) is missing; results in request order. All tables in one round trip.
    - ``transact(table, keys, update)``: read the rows of ``keys``, call ``update`` with them
      (key -> ``Row | None``) and store what it returns (key -> ``Row``) atomically, retrying
      ``update`` if another writer changed one of those keys meanwhile (optimistic concurrency).
      Unconditional on event time. Used by stream processors for their tiles.
    - ``drop(table)`` removes a table; ``close()`` releases connections.
    """

    def write(
        self, table: str, rows: Sequence[tuple[str, int, bytes]], *, assume_newer: bool = False
    ) -> None: ...

    def read(self, requests: Sequence[tuple[str, Sequence[str]]]) -> list[list[Row | None]]: ...

    def transact(
        self,
        table: str,
        keys: Sequence[str],
        update: Callable[[Mapping[str, Row | None]], Mapping[str, Row]],
    ) -> None: ...

    def drop(self, table: str) -> None: ...

    def close(self) -> None: ...


def open_online_store(url: str, *, namespace: str = "flywheel") -> OnlineStore:
    """The backend for ``url`` (``sqlite:///path`` or ``redis://host:port/db[?prefix=...]``)."""
    backend = load_for_url(ONLINE_STORES, url, what="online store", error=FeatureStoreError)
    store: OnlineStore = backend(url, namespace=namespace)
    return store


def table_name(view_ref: str) -> str:
    """``user_stats@v2`` -> ``user_stats__v2`` (safe as a SQL table name and a Redis key part)."""
    return view_ref.replace("@", "__")
