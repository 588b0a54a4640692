"""The offline store: point-in-time correct joins with DuckDB over Parquet.

For each entity row (keys, t) and each requested view, a feature's value is the one from the
latest source row with event time <= t (ties at equal event time: the greatest created timestamp,
then the last file in name order and the last row in it) — provided that row is within the view's
TTL (event time >= t - ttl); otherwise the value is null and the entity row is kept. Never a
future value. One DuckDB join per view, over Parquet, in a database shared by the process:

- an equi-join on the keys keeping, per entity row, the source row with the greatest order key
  (event time, then the tie-breaks folded into one integer) among those at or before the row's
  time and within TTL — when the key pairs it makes stay within a few per row joined (counted
  first, one cheap scan of the key column), which is the common case and ~2-3x faster;
- else an ``ASOF LEFT JOIN`` on the same order key, whose cost does not grow with the rows per
  key on both sides.

Event times are compared as integer microseconds; source rows that no entity row can use
(after the last entity time, or expired before the first one) are skipped while reading.

Stream aggregations are computed from the archived events of the stream with the same window
definition that the online tiles use (see ``Aggregation``): at time t, the events with event time
<= t whose tile index is greater than ``tile(t) - window/tile``; duplicate event ids count once.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flywheel.features._errors import FeatureStoreError

ENTITY_TS = "event_timestamp"
ROW = "__fw_row"


@dataclass(frozen=True)
class ViewQuery:
    """One batch view's part of a join: where its rows are and which columns to bring."""

    ref: str
    path: Path
    join_keys: tuple[str, ...]
    timestamp_field: str
    created_timestamp_field: str | None
    features: tuple[tuple[str, str], ...]  # (source column, output column)
    ttl_seconds: float | None


@dataclass(frozen=True)
class AggregationQuery:
    """One stream view's part of a join: the archived events and the aggregations to compute."""

    ref: str
    path: Path
    join_keys: tuple[str, ...]
    aggregations: tuple[dict[str, Any], ...]  # Aggregation specs plus "output"
    ttl_seconds: float | None = None


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def parquet_glob(path: Path) -> str:
    if path.is_dir():
        return str(path / "**" / "*.parquet")
    return str(path)


def has_parquet(path: Path) -> bool:
    if path.is_dir():
        return any(path.rglob("*.parquet"))
    return path.is_file()


def connect() -> Any:
    """A fresh in-memory DuckDB database (for work that creates tables, e.g. materialization)."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con


_SHARED: tuple[int, Any] | None = None  # (pid, database) for joins
_SHARED_LOCK = threading.Lock()


def shared_cursor() -> Any:
    """A new connection (cursor) to this process's shared in-memory DuckDB database.

    Opening a database costs 50-100 ms; a cursor on an open one well under 1 ms. Registered
    frames are private to a cursor. A forked child opens its own database.
    """
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None or _SHARED[0] != os.getpid():
            import duckdb

            db = duckdb.connect()
            db.execute("SET GLOBAL TimeZone='UTC'")
            # Results are ordered explicitly; this lets scans and joins run without keeping order.
            db.execute("SET GLOBAL preserve_insertion_order=false")
            _SHARED = (os.getpid(), db)
        return _SHARED[1].cursor()


def normalise_entity_df(entity_df: pd.DataFrame, join_keys: Sequence[str]) -> pd.DataFrame:
    """The join keys, a row number and the event timestamp as naive UTC microseconds."""
    if not isinstance(entity_df, pd.DataFrame):
        raise FeatureStoreError("entity_df must be a pandas DataFrame")
    if ENTITY_TS not in entity_df.columns:
        raise FeatureStoreError(f"entity_df needs an {ENTITY_TS!r} column (the time of each row)")
    for k in join_keys:
        if k not in entity_df.columns:
            raise FeatureStoreError(f"entity_df has no join key column {k!r}")
    ts = pd.to_datetime(entity_df[ENTITY_TS], utc=True)
    cols: dict[str, Any] = {ROW: np.arange(len(entity_df), dtype="int64")}
    for k in join_keys:
        cols[k] = entity_df[k].reset_index(drop=True)  # keeps the dtype (nullable, category)
    cols[ENTITY_TS] = ts.dt.tz_localize(None).astype("datetime64[us]").to_numpy()
    return pd.DataFrame(cols)


def _files_cte(path: Path) -> str:
    """Files of a source in name order, numbered (later files win ties)."""
    return (
        f"SELECT file AS filename, row_number() OVER (ORDER BY file) AS __file "
        f"FROM glob({_lit(parquet_glob(path))})"
    )


def _reader(v: ViewQuery, numbered: bool = False) -> str:
    extra = "filename=true, file_row_number=true, " if numbered else ""
    return f"read_parquet({_lit(parquet_glob(v.path))}, {extra}union_by_name=true)"


def _time_us(con: Any, v: ViewQuery) -> str:
    """SQL for a source row's event time in µs since the epoch.

    A ``TIMESTAMP WITH TIME ZONE`` column (what pandas writes for tz-aware times) is read with
    ``epoch_us`` directly: casting it to ``TIMESTAMP`` goes through ICU and costs ~0.25 s per
    million rows.
    """
    col = _q(v.timestamp_field)
    rows = con.execute(f"DESCRIBE SELECT {col} FROM {_reader(v)}").fetchall()
    if rows and rows[0][1] == "TIMESTAMP WITH TIME ZONE":
        return f"epoch_us({col})"
    return f"epoch_us(CAST({col} AS TIMESTAMP))"


@dataclass(frozen=True)
class _Packing:
    """How to pack (event time, file, row) into one BIGINT ASOF key, when it fits in 62 bits."""

    base_us: int
    max_us: int
    row_bits: int
    file_bits: int
    unit_us: int = 1  # event times are whole multiples of this (1 s, 1 ms or 1 µs)
    rows: int = 0  # rows in the source (from the Parquet metadata)


def _packing(con: Any, v: ViewQuery, time_us: str | None = None) -> _Packing | None:
    """From Parquet metadata (min/max/count, no scan): a BIGINT packing, or None (use HUGEINT)."""
    ts = _q(v.timestamp_field)
    time_us = time_us or f"epoch_us(CAST({ts} AS TIMESTAMP))"
    reader = _reader(v)
    rows = con.execute(
        f"SELECT epoch_us(CAST(min({ts}) AS TIMESTAMP)), epoch_us(CAST(max({ts}) AS TIMESTAMP)), "
        f"count(*) FROM {reader}"
    ).fetchall()
    lo, hi, count = rows[0]
    n_files = len(con.execute(f"SELECT * FROM glob({_lit(parquet_glob(v.path))})").fetchall())
    if lo is None or hi is None:
        return None
    # One file (the common case) needs no file number in the key, and no join to find it.
    row_bits, file_bits = int(count).bit_length(), (0 if n_files == 1 else n_files.bit_length())
    if (hi - lo + 1).bit_length() + row_bits + file_bits <= 63:
        return _Packing(int(lo), int(hi), row_bits, file_bits, rows=int(count))
    # Too wide in µs: if every time is a whole second or millisecond, count in those (one scan).
    ((sec, ms),) = con.execute(
        f"SELECT bool_and(({time_us}) % 1000000 = 0), bool_and(({time_us}) % 1000 = 0) "
        f"FROM {reader}"
    ).fetchall()
    for ok, unit in ((sec, 1_000_000), (ms, 1000)):
        if ok and ((hi - lo) // unit + 2).bit_length() + row_bits + file_bits <= 63:
            return _Packing(int(lo), int(hi), row_bits, file_bits, unit, rows=int(count))
    return None


@dataclass(frozen=True)
class _Bounds:
    """The entity rows' time range in µs: source rows outside what any row can use are skipped."""

    lo_us: int
    hi_us: int


def _usable(v: ViewQuery, time_us: str, b: _Bounds | None) -> str:
    """WHERE clause for the source rows that an entity row may use.

    Rows after the last entity time never match; rows older than the first entity time minus
    the TTL would only ever match as expired, which gives the same null as no match.
    """
    where = f"{_q(v.timestamp_field)} IS NOT NULL"
    if b is not None:
        where += f" AND {time_us} <= {b.hi_us}"
        if v.ttl_seconds is not None:
            where += f" AND {time_us} >= {b.lo_us - int(v.ttl_seconds * 1_000_000)}"
    return where


def _source_sql(
    v: ViewQuery, i: int, time_us: str, packing: _Packing | None, b: _Bounds | None
) -> str:
    """The view's source rows: keys, ``__t`` (event time, µs), features and the order key ``__k``.

    ``__k`` orders a key's rows by event time, then ties: created time (deduplicated first),
    else the later file, then the later row in it.
    """
    keys = ", ".join(f"{_q(k)}" for k in v.join_keys)
    feats = ", ".join(f"{_q(src)} AS {_q(f'__f{i}_{j}')}" for j, (src, _) in enumerate(v.features))
    reader = _reader(v, numbered=True)
    where = _usable(v, time_us, b)
    if v.created_timestamp_field:
        # Ties broken by created time first: deduplicate explicitly.
        created = f"{_q(v.created_timestamp_field)} DESC NULLS LAST, "
        return (
            f"SELECT {keys}, {time_us} AS __t, {feats}, "
            f"CAST({time_us} AS HUGEINT) << 48 AS __k FROM {reader} "
            f"WHERE {where} "
            # PARTITION BY the expression, not its alias: with the alias, DuckDB 2.0 dropped
            # rows once this query was joined (found by the created-time property test).
            f"QUALIFY row_number() OVER (PARTITION BY {keys}, {time_us} "
            f"ORDER BY {created}filename DESC, file_row_number DESC) = 1"
        )
    if packing is not None:
        # Ties at equal event time go to the later file / row: fold that order into the key
        # ((time - min) << (file+row bits) | file << row bits | row), cheaper than a window.
        shift = packing.row_bits + packing.file_bits
        time_part = f"((({time_us} - {packing.base_us}) // {packing.unit_us}) << {shift})"
        if packing.file_bits == 0:
            return (
                f"SELECT {keys}, {time_us} AS __t, {feats}, {time_part} + file_row_number AS __k "
                f"FROM {reader} WHERE {where}"
            )
        return (
            f"SELECT {keys}, {time_us} AS __t, {feats}, "
            f"{time_part} + (fl.__file << {packing.row_bits}) + file_row_number AS __k "
            f"FROM {reader} r JOIN ({_files_cte(v.path)}) fl USING (filename) WHERE {where}"
        )
    # The same folding in 128 bits when the time range and row counts need more than 62.
    return (
        f"SELECT {keys}, {time_us} AS __t, {feats}, "
        f"(CAST({time_us} AS HUGEINT) << 48) + (CAST(fl.__file AS HUGEINT) << 36) "
        f"+ file_row_number AS __k "
        f"FROM {reader} r JOIN ({_files_cte(v.path)}) fl USING (filename) WHERE {where}"
    )


def _entity_sql(v: ViewQuery, packing: _Packing | None) -> str:
    """Entity rows with ``__t`` (µs) and ``__k``: the greatest source key they may use."""
    ekeys = ", ".join(f"{_q(k)}" for k in v.join_keys)
    t = f"epoch_us({_q(ENTITY_TS)})"
    if packing is not None and not v.created_timestamp_field:
        shift = packing.row_bits + packing.file_bits
        # Clamp to the source's time range: below it nothing matches (key -1), above it all do.
        # In time units, rounded down: an entity time between two units matches up to the lower.
        clamped = f"least(greatest({t}, {packing.base_us - packing.unit_us}), {packing.max_us})"
        units = f"floor((({clamped}) - {packing.base_us}) / {packing.unit_us})::BIGINT"
        ekey = f"({units} * {1 << shift}) + {(1 << shift) - 1}"
    else:
        ekey = f"(CAST({t} AS HUGEINT) << 48) + ((1::HUGEINT << 48) - 1)"
    return f"SELECT {ROW}, {ekeys}, {t} AS __t, {ekey} AS __k FROM entity_df"


def _view_sql(
    v: ViewQuery,
    i: int,
    packing: _Packing | None = None,
    *,
    time_us: str | None = None,
    bounds: _Bounds | None = None,
    hash_join: bool = False,
) -> str:
    """One view's part: ``(ROW, outputs...)``.

    ``hash_join``: an equi-join on the keys, filtered to the usable rows (key <= the entity's,
    within TTL), keeping the greatest key per entity row — the rows it returns are the matched
    ones. Otherwise an ``ASOF LEFT JOIN`` (every entity row, then the TTL check). The hash join
    is faster unless keys have many rows on both sides (its cost is the pairs per key).
    """
    time_us = time_us or f"epoch_us(CAST({_q(v.timestamp_field)} AS TIMESTAMP))"
    src = _source_sql(v, i, time_us, packing, bounds)
    entity = _entity_sql(v, packing)
    on = " AND ".join(f"e.{_q(k)} = f.{_q(k)}" for k in v.join_keys)
    ttl_us = None if v.ttl_seconds is None else int(v.ttl_seconds * 1_000_000)
    names = [f"__f{i}_{j}" for j in range(len(v.features))]
    if hash_join:
        fresh = "" if ttl_us is None else f" AND f.__t >= e.__t - {ttl_us}"
        packed = "{" + ", ".join(f"{_lit(n)}: f.{_q(n)}" for n in names) + "}"
        outs = ", ".join(
            f"struct_extract(__s, {_lit(n)}) AS {_q(out)}"
            for n, (_, out) in zip(names, v.features, strict=True)
        )
        return (
            f"SELECT {ROW}, {outs} FROM (SELECT e.{ROW}, arg_max({packed}, f.__k) AS __s "
            f"FROM ({entity}) e LEFT JOIN ({src}) f ON {on} AND f.__k <= e.__k{fresh} "
            f"GROUP BY e.{ROW})"
        )
    if ttl_us is not None:
        outs = ", ".join(
            f"CASE WHEN f.__t >= e.__t - {ttl_us} THEN f.{_q(n)} END AS {_q(out)}"
            for n, (_, out) in zip(names, v.features, strict=True)
        )
    else:
        outs = ", ".join(
            f"f.{_q(n)} AS {_q(out)}" for n, (_, out) in zip(names, v.features, strict=True)
        )
    return (
        f"SELECT e.{ROW}, {outs} FROM ({entity}) e "
        f"ASOF LEFT JOIN ({src}) f ON {on} AND e.__k >= f.__k"
    )


# "auto": a hash join when it is cheaper, else ASOF; "asof" / "hash" force one (tests use both).
JOIN_STRATEGY = "auto"
# Hash join when its key pairs are at most this many per row joined (measured break-even ~8).
HASH_PAIRS_PER_ROW = 4


def _use_hash_join(con: Any, v: ViewQuery, rows: int | None, n_entity: int) -> bool:
    """Whether the hash join's key pairs stay within ``HASH_PAIRS_PER_ROW`` per joined row.

    Counts the pairs over all source rows (an upper bound of what the join meets after the
    time filters): one scan of the key columns probing the entity rows' counts per key.
    """
    if JOIN_STRATEGY != "auto":
        return JOIN_STRATEGY == "hash"
    if n_entity <= HASH_PAIRS_PER_ROW:
        return True  # each source row pairs with at most n_entity entity rows
    keys = ", ".join(_q(k) for k in v.join_keys)
    on = " AND ".join(f"f.{_q(k)} = ec.{_q(k)}" for k in v.join_keys)
    if rows is None:
        ((rows,),) = con.execute(f"SELECT count(*) FROM {_reader(v)}").fetchall()
    ((pairs,),) = con.execute(
        f"SELECT coalesce(sum(ec.__n), 0) FROM (SELECT {keys} FROM {_reader(v)}) f JOIN "
        f"(SELECT {keys}, count(*) AS __n FROM entity_df GROUP BY ALL) ec ON {on}"
    ).fetchall()
    return int(pairs) <= HASH_PAIRS_PER_ROW * (int(rows) + n_entity)


def _agg_expr(a: dict[str, Any], lower: str) -> str:
    col = f"ev.{_q(a['column'])}"
    cond = f"ev.__ts >= {lower}"
    valued = f"{cond} AND {col} IS NOT NULL"
    fn = a["function"]
    if fn == "count":
        expr = f"count(ev.__ts) FILTER (WHERE {cond})"
    elif fn == "sum":
        expr = f"sum({col}) FILTER (WHERE {valued})"
    elif fn == "mean":
        expr = (
            f"CAST(sum({col}) FILTER (WHERE {valued}) AS DOUBLE) / "
            f"nullif(count({col}) FILTER (WHERE {valued}), 0)"
        )
    elif fn == "min":
        expr = f"min({col}) FILTER (WHERE {valued})"
    elif fn == "max":
        expr = f"max({col}) FILTER (WHERE {valued})"
    elif fn == "count_distinct":
        expr = f"count(DISTINCT {col}) FILTER (WHERE {valued})"
    elif fn == "last":
        expr = f"(list({col} ORDER BY ev.__ts DESC, ev.__event_id DESC) FILTER (WHERE {valued}))[1]"
    elif fn == "last_n":
        expr = (
            f"(list({col} ORDER BY ev.__ts DESC, ev.__event_id DESC) FILTER (WHERE {valued}))"
            f"[1:{int(a['n'])}]"
        )
    else:  # pragma: no cover - validated by Aggregation
        raise FeatureStoreError(f"unknown aggregation {fn!r}")
    return f"{expr} AS {_q(a['output'])}"


def _aggregation_sql(v: AggregationQuery) -> str:
    """Range join of entity rows to events inside the largest window, one FILTER per aggregate."""
    ts_us = f"epoch_us(e.{_q(ENTITY_TS)})"
    lowers = []
    for a in v.aggregations:
        tile_us = int(a["tile"]) * 1_000_000
        tiles = int(a["window"]) // int(a["tile"])
        lowers.append(f"((({ts_us}) // {tile_us}) - {tiles - 1}) * {tile_us}")
    on = " AND ".join(f"e.{_q(k)} = ev.{_q(k)}" for k in v.join_keys)
    widest = "least(" + ", ".join(lowers) + ")" if len(lowers) > 1 else lowers[0]
    aggs = ", ".join(_agg_expr(a, lo) for a, lo in zip(v.aggregations, lowers, strict=True))
    events = (
        f"SELECT * FROM read_parquet({_lit(parquet_glob(v.path))}, union_by_name=true) "
        "QUALIFY row_number() OVER (PARTITION BY __event_id ORDER BY __ts) = 1"
    )
    ekeys = ", ".join(_q(k) for k in v.join_keys)
    return (
        f"SELECT e.{ROW}, {aggs} FROM (SELECT {ROW}, {ekeys}, {_q(ENTITY_TS)} FROM entity_df) e "
        f"LEFT JOIN ({events}) ev ON {on} AND ev.__ts <= {ts_us} AND ev.__ts >= {widest} "
        f"GROUP BY e.{ROW}"
    )


def point_in_time_join(
    entity_df: pd.DataFrame,
    views: Sequence[ViewQuery],
    aggregations: Sequence[AggregationQuery] = (),
) -> tuple[pd.DataFrame, str]:
    """Join features onto ``entity_df`` point-in-time correctly. Returns (frame, the SQL used).

    The result has every entity row, in the input order: the input's columns (as given), then
    the features.
    """
    join_keys = sorted(
        {k for v in views for k in v.join_keys} | {k for a in aggregations for k in a.join_keys}
    )
    df = normalise_entity_df(entity_df, join_keys)
    outputs = [out for v in views for _, out in v.features]
    outputs += [x["output"] for a in aggregations for x in a.aggregations]
    if len(set(outputs)) != len(outputs):
        dup = sorted({o for o in outputs if outputs.count(o) > 1})
        raise FeatureStoreError(
            f"feature names {dup} appear in several views; pass full_feature_names=True"
        )
    clash = [o for o in outputs if o in entity_df.columns]
    if clash:
        raise FeatureStoreError(f"entity_df already has columns named like features: {clash}")
    bounds = None
    if len(df):
        t = df[ENTITY_TS].to_numpy().astype("int64")
        bounds = _Bounds(int(t.min()), int(t.max()))
    con = shared_cursor()
    try:
        con.register("entity_df", df)
        parts: list[str] = []
        for i, v in enumerate(views):
            if not has_parquet(v.path):
                cols = ", ".join(f"CAST(NULL AS VARCHAR) AS {_q(out)}" for _, out in v.features)
                parts.append(f"SELECT {ROW}, {cols} FROM entity_df")
                continue
            time_us = _time_us(con, v)
            packing = None if v.created_timestamp_field else _packing(con, v, time_us)
            rows = packing.rows if packing is not None else None
            hash_join = _use_hash_join(con, v, rows, len(df))
            parts.append(
                _view_sql(v, i, packing, time_us=time_us, bounds=bounds, hash_join=hash_join)
            )
        for a in aggregations:
            if not has_parquet(a.path):
                cols = ", ".join(
                    (
                        f"CAST(0 AS BIGINT) AS {_q(x['output'])}"
                        if x["function"] in ("count", "count_distinct")
                        else f"NULL AS {_q(x['output'])}"
                    )
                    for x in a.aggregations
                )
                parts.append(f"SELECT {ROW}, {cols} FROM entity_df")
            else:
                parts.append(_aggregation_sql(a))
        # Every part has one row per entity row (in no particular order).
        ctes = ", ".join(f"p{i} AS ({sql})" for i, sql in enumerate(parts))
        selects = ", ".join(["p0.*"] + [f"p{i}.* EXCLUDE ({ROW})" for i in range(1, len(parts))])
        joins = "".join(f" JOIN p{i} USING ({ROW})" for i in range(1, len(parts)))
        sql = f"WITH {ctes} SELECT {selects} FROM p0{joins}"
        features = con.execute(sql).df()
    except FeatureStoreError:
        raise
    except Exception as exc:  # duckdb raises many types; the message names the column
        reason = str(exc).splitlines()[0]
        raise FeatureStoreError(f"point-in-time join failed: {reason}") from None
    finally:
        con.close()
    if len(features) != len(df):  # pragma: no cover - each part keeps every row exactly once
        raise FeatureStoreError(f"point-in-time join returned {len(features)} of {len(df)} rows")
    # Back to the input order: row r of the input is at position order[r] of the result.
    order = np.empty(len(df), dtype="int64")
    order[features[ROW].to_numpy(dtype="int64")] = np.arange(len(df), dtype="int64")
    features = features.drop(columns=[ROW]).take(order).reset_index(drop=True)
    out = pd.concat([entity_df.reset_index(drop=True), features], axis=1)
    return out, sql
