"""Time tiles for windowed stream aggregations: partial aggregates per (entity, tile).

One state per (stream view, entity) holds, for every aggregation, its partials by tile index
(``event_time // tile``), the ids of recently applied events (for idempotency) and the entity's
high-water mark. A window of W seconds at time t combines the tiles with index in
``(tile(t) - W/tile, tile(t)]`` — O(tiles), not O(events). ``_offline`` computes the same
definition in SQL from the archived events, so online and offline values agree.

Late events: an event older than the entity's high-water mark minus ``allowed_lateness`` is
dropped (and counted). Ids of events at or after that mark are kept, so a redelivered event is
recognised and not applied twice; older ids may be forgotten because such events are late anyway.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from flywheel.features._definitions import StreamFeatureView

US = 1_000_000


@dataclass(frozen=True)
class AggSpec:
    name: str
    column: str
    function: str
    tile_us: int
    tiles: int  # window / tile
    n: int


def agg_specs(view: StreamFeatureView) -> list[AggSpec]:
    return [
        AggSpec(
            a.feature_name,
            a.column,
            a.function,
            a.tile_seconds * US,
            a.window_seconds // a.tile_seconds,
            a.n,
        )
        for a in view.aggregations
    ]


def new_state() -> dict[str, Any]:
    return {"a": {}, "ids": {}, "hw": None}


def load_state(payload: bytes | None) -> dict[str, Any]:
    return new_state() if payload is None else orjson.loads(payload)


def dump_state(state: dict[str, Any]) -> bytes:
    return orjson.dumps(state)


def _add_many(fn: str, partial: Any, values: list[tuple[Any, int, str]], n: int) -> Any:
    """Fold ``(value, ts, event id)`` into a tile's partial, in order: the same result as adding
    them one at a time (float sums add left to right), whatever the batch boundaries."""
    if fn == "count":
        return (partial or 0) + len(values)
    if fn == "sum":
        for value, _, _ in values:
            if value is not None:
                partial = value if partial is None else partial + value
        return partial
    if fn == "mean":
        for value, _, _ in values:
            if value is not None:
                partial = [value, 1] if partial is None else [partial[0] + value, partial[1] + 1]
        return partial
    if fn == "min":
        for value, _, _ in values:
            if value is not None and (partial is None or value < partial):
                partial = value
        return partial
    if fn == "max":
        for value, _, _ in values:
            if value is not None and (partial is None or value > partial):
                partial = value
        return partial
    if fn == "last":
        for value, ts, eid in values:
            if value is not None and (partial is None or (ts, eid) > (partial[0], partial[1])):
                partial = [ts, eid, value]
        return partial
    if fn == "count_distinct":
        for value, _, _ in values:
            if value is None:
                continue
            if partial is None:
                partial = [value]
            elif value not in partial:
                partial.append(value)
        return partial
    if fn == "last_n":
        items = [*(partial or []), *([ts, eid, v] for v, ts, eid in values if v is not None)]
        if not items:
            return partial
        items.sort(key=lambda x: (x[0], x[1]), reverse=True)
        return items[:n]
    raise ValueError(fn)  # pragma: no cover


def apply_events(
    state: dict[str, Any],
    specs: Sequence[AggSpec],
    events: Sequence[tuple[str, int, dict[str, Any]]],
    lateness_us: int,
) -> tuple[list[str], list[str], int]:
    """Apply ``(event_id, ts_us, row)`` events to one entity's state, in order.

    Returns (ids applied now, ids already applied before, number dropped as late). First the
    events are sorted out in order (duplicate, late against the high-water mark so far, or
    applied), then each aggregation folds the applied ones into their tiles, tile by tile.
    """
    ids: dict[str, int] = state["ids"]
    applied: list[str] = []
    duplicate: list[str] = []
    accepted: list[tuple[str, int, dict[str, Any]]] = []
    late = 0
    hw0 = hw = state["hw"]
    for ev in events:
        eid = ev[0]
        if eid in ids:
            duplicate.append(eid)
            continue
        ts = ev[1]
        if hw is not None and ts < hw - lateness_us:
            late += 1
            continue
        ids[eid] = ts
        applied.append(eid)
        accepted.append(ev)
        if hw is None or ts > hw:
            hw = ts
    state["hw"] = hw
    if accepted:
        _fold(state["a"], specs, accepted)
    if hw != hw0:  # the mark only moves with the high-water mark; otherwise nothing to prune
        _prune(state, specs, lateness_us)
    return applied, duplicate, late


def _fold(
    aggs: dict[str, dict[str, Any]],
    specs: Sequence[AggSpec],
    events: list[tuple[str, int, dict[str, Any]]],
) -> None:
    """Fold applied events into every aggregation's tiles (one entity, events in order)."""
    if len(events) == 1:  # the common case in a busy stream: one event per entity per batch
        eid, ts, row = events[0]
        for s in specs:
            tiles = aggs.get(s.name)
            if tiles is None:
                tiles = aggs[s.name] = {}
            idx = str(ts // s.tile_us)
            if s.function == "count":
                tiles[idx] = tiles.get(idx, 0) + 1
            else:
                value = [(row.get(s.column), ts, eid)]
                tiles[idx] = _add_many(s.function, tiles.get(idx), value, s.n)
        return
    by_tile_size: dict[int, dict[str, list[tuple[str, int, dict[str, Any]]]]] = {}
    for s in specs:
        groups = by_tile_size.get(s.tile_us)
        if groups is None:
            groups = by_tile_size[s.tile_us] = {}
            for ev in events:
                groups.setdefault(str(ev[1] // s.tile_us), []).append(ev)
        tiles = aggs.get(s.name)
        if tiles is None:
            tiles = aggs[s.name] = {}
        col = s.column
        for idx, evs in groups.items():
            if s.function == "count":
                tiles[idx] = tiles.get(idx, 0) + len(evs)
            else:
                values = [(row.get(col), ts, eid) for eid, ts, row in evs]
                tiles[idx] = _add_many(s.function, tiles.get(idx), values, s.n)


def _prune(state: dict[str, Any], specs: Sequence[AggSpec], lateness_us: int) -> None:
    hw = state["hw"]
    if hw is None:
        return
    mark = hw - lateness_us
    for s in specs:
        tiles = state["a"].get(s.name)
        if not tiles:
            continue
        oldest = mark // s.tile_us - s.tiles + 1
        for idx in [i for i in tiles if int(i) < oldest]:
            del tiles[idx]
    ids = state["ids"]
    for eid in [e for e, ts in ids.items() if ts < mark]:
        del ids[eid]


def _combine(fn: str, parts: list[Any], n: int) -> Any:
    if fn == "count":
        return sum(parts)
    parts = [p for p in parts if p is not None]
    if fn == "count_distinct":
        seen: set[Any] = set()
        for p in parts:
            seen.update(p)
        return len(seen)
    if not parts:
        return None
    if fn == "sum":
        return sum(parts)
    if fn == "mean":
        total = sum(p[0] for p in parts)
        count = sum(p[1] for p in parts)
        return total / count if count else None
    if fn == "min":
        return min(parts)
    if fn == "max":
        return max(parts)
    if fn == "last":
        return max(parts, key=lambda p: (p[0], p[1]))[2]
    if fn == "last_n":
        items = [x for p in parts for x in p]
        items.sort(key=lambda x: (x[0], x[1]), reverse=True)
        return [x[2] for x in items[:n]]
    raise ValueError(fn)  # pragma: no cover


def aggregate_at(state: dict[str, Any], specs: Sequence[AggSpec], t_us: int) -> list[Any]:
    """The value of every aggregation at time ``t_us`` (tiles up to the one holding t)."""
    out = []
    for s in specs:
        tiles = state["a"].get(s.name, {})
        hi = t_us // s.tile_us
        lo = hi - s.tiles
        parts = [p for i, p in tiles.items() if lo < int(i) <= hi]
        out.append(_combine(s.function, parts, s.n))
    return out
