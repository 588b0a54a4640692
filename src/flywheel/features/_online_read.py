"""The online read path: resolve once (cached), one round trip to the store, decode to columns."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from flywheel.features._definitions import FeatureView, StreamFeatureView
from flywheel.features._errors import FeatureStoreError
from flywheel.features._online import OnlineStore, table_name
from flywheel.features._resolve import Resolved, ViewSelection
from flywheel.features._response import EXPIRED, MISSING, PRESENT, OnlineResponse, us_to_datetime
from flywheel.features._tiles import agg_specs, aggregate_at

EntityRows = Sequence[Mapping[str, Any]] | Mapping[str, Sequence[Any]]


def entity_columns(entity_rows: EntityRows, join_keys: Sequence[str]) -> dict[str, list[Any]]:
    """Entity rows (list of dicts, or dict of columns) as columns; checks every join key."""
    if isinstance(entity_rows, Mapping):
        cols = {k: list(v) for k, v in entity_rows.items()}
        lengths = {len(v) for v in cols.values()}
        if len(lengths) > 1:
            raise FeatureStoreError(f"entity columns have different lengths: {sorted(lengths)}")
    else:
        cols = {}
        for i, row in enumerate(entity_rows):
            if not isinstance(row, Mapping):
                raise FeatureStoreError(f"entity row {i} is not a mapping")
            for k in join_keys:
                if k not in row:
                    raise FeatureStoreError(f"entity row {i} has no join key {k!r}")
        for k in {k for row in entity_rows for k in row}:
            cols[k] = [row.get(k) for row in entity_rows]
    for k in join_keys:
        if k not in cols:
            raise FeatureStoreError(f"entity rows have no join key {k!r}")
    return cols


def _keys(cols: dict[str, list[Any]], join_keys: Sequence[str]) -> list[str]:
    try:
        if len(join_keys) == 1:
            return [v if type(v) is str else str(int(v)) for v in cols[join_keys[0]]]
        parts = [cols[k] for k in join_keys]
        return [
            "\x1f".join(v if type(v) is str else str(int(v)) for v in vals)
            for vals in zip(*parts, strict=True)
        ]
    except (TypeError, ValueError) as exc:
        raise FeatureStoreError(f"entity key values must be integers or strings: {exc}") from None


def read_online(
    store: OnlineStore,
    resolved: Resolved,
    entity_rows: EntityRows,
    *,
    full_feature_names: bool = False,
    now_us: int | None = None,
) -> OnlineResponse:
    """Read the resolved features for the entity rows. ``now_us`` defaults to the clock."""
    cols = entity_columns(entity_rows, resolved.join_keys)
    now = time.time_ns() // 1000 if now_us is None else now_us
    requests = [(table_name(sel.ref), _keys(cols, sel.join_keys)) for sel in resolved.views]
    results = store.read(requests)
    columns: dict[str, list[Any]] = {}
    status: dict[str, list[str]] = {}
    times: dict[str, list[int | None]] = {}
    for sel, rows in zip(resolved.views, results, strict=True):
        if isinstance(sel.view, FeatureView):
            _decode_view(sel, sel.view, rows, now, full_feature_names, columns, status, times)
        else:
            _decode_stream(sel, sel.view, rows, now, full_feature_names, columns, status, times)
    entities = {k: cols[k] for k in resolved.join_keys}
    if resolved.on_demand:
        _on_demand(resolved, cols, columns, status, times, full_feature_names)
    ordered = {out: columns[out] for _, out in resolved.outputs}
    return OnlineResponse(
        entities,
        ordered,
        {o: status[o] for o in ordered},
        {o: times[o] for o in ordered},
    )


def _decode_view(
    sel: ViewSelection,
    view: FeatureView,
    rows: list[tuple[int, bytes] | None],
    now: int,
    full: bool,
    columns: dict[str, list[Any]],
    status: dict[str, list[str]],
    times: dict[str, list[int | None]],
) -> None:
    ttl_us = int(view.ttl * 1_000_000) if view.ttl else None
    loads = orjson.loads
    width = len(view.schema)
    empty = [None] * width
    ts_list = [None if r is None else r[0] for r in rows]
    if ttl_us is None:
        st = [MISSING if r is None else PRESENT for r in rows]
    else:
        oldest = now - ttl_us  # older event times are expired
        st = [MISSING if r is None else (EXPIRED if r[0] < oldest else PRESENT) for r in rows]
    decoded = [
        loads(r[1]) if r is not None and s is PRESENT else empty
        for r, s in zip(rows, st, strict=True)
    ]
    if decoded and not (min(map(len, decoded)) == width == max(map(len, decoded))):
        # Rows written before fields were added (or after some were removed): pad / cut.
        decoded = [v if len(v) == width else (v + empty)[:width] for v in decoded]
    # One transposition at C speed instead of a pass per feature.
    positions = sel.positions
    by_position = list(zip(*decoded, strict=True)) if decoded else [()] * width
    for feat in sel.features:
        p, dtype = positions[feat]
        col = list(by_position[p])
        if dtype == "timestamp":
            col = [us_to_datetime(x) for x in col]
        out = f"{view.name}__{feat}" if full else feat
        columns[out] = col
        status[out] = st
        times[out] = ts_list


def _decode_stream(
    sel: ViewSelection,
    view: StreamFeatureView,
    rows: list[tuple[int, bytes] | None],
    now: int,
    full: bool,
    columns: dict[str, list[Any]],
    status: dict[str, list[str]],
    times: dict[str, list[int | None]],
) -> None:
    specs = agg_specs(view)
    index = {s.name: i for i, s in enumerate(specs)}
    wanted = [specs[index[f]] for f in sel.features]
    ttl_us = int(view.ttl * 1_000_000) if view.ttl else None
    values: list[list[Any]] = []
    st: list[str] = []
    ts_list: list[int | None] = []
    empty = [0 if s.function in ("count", "count_distinct") else None for s in wanted]
    for r in rows:
        if r is None:
            values.append(empty)
            st.append(MISSING)
            ts_list.append(None)
            continue
        if ttl_us is not None and now - r[0] > ttl_us:
            values.append(empty)
            st.append(EXPIRED)
            ts_list.append(r[0])
            continue
        values.append(aggregate_at(orjson.loads(r[1]), wanted, now))
        st.append(PRESENT)
        ts_list.append(r[0])
    for j, feat in enumerate(sel.features):
        out = f"{view.name}__{feat}" if full else feat
        columns[out] = [v[j] for v in values]
        status[out] = st
        times[out] = ts_list


def _on_demand(
    resolved: Resolved,
    cols: dict[str, list[Any]],
    columns: dict[str, list[Any]],
    status: dict[str, list[str]],
    times: dict[str, list[int | None]],
    full: bool,
) -> None:
    import pandas as pd

    from flywheel.features._ondemand import apply_on_demand

    frame = pd.DataFrame({**cols, **columns})
    frame = apply_on_demand(frame, resolved, full)
    n = len(frame)
    for odfv, wanted in resolved.on_demand:
        for feat in wanted:
            out = f"{odfv.name}__{feat}" if full else feat
            columns[out] = frame[out].tolist()
            status[out] = [PRESENT] * n
            times[out] = [None] * n
