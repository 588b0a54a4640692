"""The offline store: point-in-time correct joins with DuckDB over Parquet.

For each entity row (keys, t) and each requested view, a feature's value is the one from the
latest source row with event time <= t (ties at equal event time: the greatest created timestamp,
then the last file in name order and the last row in it) — provided that row is within the view's
TTL (event time >= t - ttl); otherwise the value is null and the entity row is kept. Never a
future value. Implemented as one DuckDB ``ASOF LEFT JOIN`` per view.

Stream aggregations are computed from the archived events of the stream with the same window
definition that the online tiles use (see ``Aggregation``): at time t, the events with event time
<= t whose tile index is greater than ``tile(t) - window/tile``; duplicate event ids count once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    import duckdb

    con = duckdb.connect()
    con.execute("SET TimeZone='UTC'")
    return con


def normalise_entity_df(entity_df: pd.DataFrame, join_keys: Sequence[str]) -> pd.DataFrame:
    """A copy with a row number and the event timestamp as naive UTC microseconds."""
    if not isinstance(entity_df, pd.DataFrame):
        raise FeatureStoreError("entity_df must be a pandas DataFrame")
    if ENTITY_TS not in entity_df.columns:
        raise FeatureStoreError(f"entity_df needs an {ENTITY_TS!r} column (the time of each row)")
    for k in join_keys:
        if k not in entity_df.columns:
            raise FeatureStoreError(f"entity_df has no join key column {k!r}")
    df = entity_df.copy()
    ts = pd.to_datetime(df[ENTITY_TS], utc=True)
    df[ENTITY_TS] = ts.dt.tz_localize(None).astype("datetime64[us]")
    df[ROW] = range(len(df))
    return df


def _files_cte(path: Path) -> str:
    """Files of a source in name order, numbered (later files win ties)."""
    return (
        f"SELECT file AS filename, row_number() OVER (ORDER BY file) AS __file "
        f"FROM glob({_lit(parquet_glob(path))})"
    )


@dataclass(frozen=True)
class _Packing:
    """How to pack (event time, file, row) into one BIGINT ASOF key, when it fits in 62 bits."""

    base_us: int
    max_us: int
    row_bits: int
    file_bits: int
    unit_us: int = 1  # event times are whole multiples of this (1 s, 1 ms or 1 µs)


def _packing(con: Any, v: ViewQuery) -> _Packing | None:
    """From Parquet metadata (min/max/count, no scan): a BIGINT packing, or None (use HUGEINT)."""
    ts = _q(v.timestamp_field)
    reader = f"read_parquet({_lit(parquet_glob(v.path))}, union_by_name=true)"
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
        return _Packing(int(lo), int(hi), row_bits, file_bits)
    # Too wide in µs: if every time is a whole second or millisecond, count in those (one scan).
    ((sec, ms),) = con.execute(
        f"SELECT bool_and(epoch_us(CAST({ts} AS TIMESTAMP)) % 1000000 = 0), "
        f"bool_and(epoch_us(CAST({ts} AS TIMESTAMP)) % 1000 = 0) FROM {reader}"
    ).fetchall()
    for ok, unit in ((sec, 1_000_000), (ms, 1000)):
        if ok and ((hi - lo) // unit + 2).bit_length() + row_bits + file_bits <= 63:
            return _Packing(int(lo), int(hi), row_bits, file_bits, unit)
    return None


def _view_sql(v: ViewQuery, i: int, packing: _Packing | None = None) -> str:
    keys = ", ".join(f"{_q(k)}" for k in v.join_keys)
    feats = ", ".join(f"{_q(src)} AS {_q(f'__f{i}_{j}')}" for j, (src, _) in enumerate(v.features))
    reader = (
        f"read_parquet({_lit(parquet_glob(v.path))}, filename=true, file_row_number=true, "
        "union_by_name=true)"
    )
    ts = f"CAST({_q(v.timestamp_field)} AS TIMESTAMP)"
    if v.created_timestamp_field:
        # Ties broken by created time first: deduplicate explicitly.
        created = f"{_q(v.created_timestamp_field)} DESC NULLS LAST, "
        src = (
            f"SELECT {keys}, {ts} AS __ts, {feats}, "
            f"CAST(epoch_us({ts}) AS HUGEINT) << 48 AS __k FROM {reader} "
            f"WHERE {_q(v.timestamp_field)} IS NOT NULL "
            f"QUALIFY row_number() OVER (PARTITION BY {keys}, __ts "
            f"ORDER BY {created}filename DESC, file_row_number DESC) = 1"
        )
    elif packing is not None:
        # Ties at equal event time go to the later file / row: fold that order into the ASOF key
        # ((time - min) << (file+row bits) | file << row bits | row), cheaper than a window.
        shift = packing.row_bits + packing.file_bits
        time_part = f"(((epoch_us({ts}) - {packing.base_us}) // {packing.unit_us}) << {shift})"
        if packing.file_bits == 0:
            src = (
                f"SELECT {keys}, {ts} AS __ts, {feats}, {time_part} + file_row_number AS __k "
                f"FROM {reader} WHERE {_q(v.timestamp_field)} IS NOT NULL"
            )
        else:
            src = (
                f"SELECT {keys}, {ts} AS __ts, {feats}, "
                f"{time_part} + (fl.__file << {packing.row_bits}) + file_row_number AS __k "
                f"FROM {reader} r JOIN ({_files_cte(v.path)}) fl USING (filename) "
                f"WHERE {_q(v.timestamp_field)} IS NOT NULL"
            )
    else:
        # The same folding in 128 bits when the time range and row counts need more than 62.
        src = (
            f"SELECT {keys}, {ts} AS __ts, {feats}, "
            f"(CAST(epoch_us({ts}) AS HUGEINT) << 48) + (CAST(fl.__file AS HUGEINT) << 36) "
            f"+ file_row_number AS __k "
            f"FROM {reader} r JOIN ({_files_cte(v.path)}) fl USING (filename) "
            f"WHERE {_q(v.timestamp_field)} IS NOT NULL"
        )
    on = " AND ".join(f"e.{_q(k)} = f.{_q(k)}" for k in v.join_keys)
    if v.ttl_seconds is not None:
        ttl_us = int(v.ttl_seconds * 1_000_000)
        fresh = f"f.__ts >= e.{_q(ENTITY_TS)} - to_microseconds({ttl_us})"
        outs = ", ".join(
            f"CASE WHEN {fresh} THEN f.{_q(f'__f{i}_{j}')} END AS {_q(out)}"
            for j, (_, out) in enumerate(v.features)
        )
    else:
        outs = ", ".join(
            f"f.{_q(f'__f{i}_{j}')} AS {_q(out)}" for j, (_, out) in enumerate(v.features)
        )
    ekeys = ", ".join(f"{_q(k)}" for k in v.join_keys)
    if packing is not None and not v.created_timestamp_field:
        shift = packing.row_bits + packing.file_bits
        # Clamp to the source's time range: below it nothing matches (key -1), above it all do.
        # In time units, rounded down: an entity time between two units matches up to the lower.
        clamped = (
            f"least(greatest(epoch_us({_q(ENTITY_TS)}), {packing.base_us - packing.unit_us}), "
            f"{packing.max_us})"
        )
        units = f"floor((({clamped}) - {packing.base_us}) / {packing.unit_us})::BIGINT"
        ekey = f"({units} * {1 << shift}) + {(1 << shift) - 1}"
    else:
        ekey = f"(CAST(epoch_us({_q(ENTITY_TS)}) AS HUGEINT) << 48) + ((1::HUGEINT << 48) - 1)"
    entity = f"SELECT {ROW}, {ekeys}, {_q(ENTITY_TS)}, {ekey} AS __k FROM entity_df"
    return (
        f"SELECT e.{ROW}, {outs} FROM ({entity}) e "
        f"ASOF LEFT JOIN ({src}) f ON {on} AND e.__k >= f.__k"
    )


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

    The result has every entity row, in the input order, with the input's columns first.
    """
    join_keys = sorted(
        {k for v in views for k in v.join_keys} | {k for a in aggregations for k in a.join_keys}
    )
    df = normalise_entity_df(entity_df, join_keys)
    con = connect()
    con.register("entity_df", df)
    parts: list[str] = []
    outputs: list[str] = []
    for i, v in enumerate(views):
        if not has_parquet(v.path):
            cols = ", ".join(f"CAST(NULL AS VARCHAR) AS {_q(out)}" for _, out in v.features)
            parts.append(f"SELECT {ROW}, {cols} FROM entity_df")
        else:
            packing = None if v.created_timestamp_field else _packing(con, v)
            parts.append(_view_sql(v, i, packing))
        outputs += [out for _, out in v.features]
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
        outputs += [x["output"] for x in a.aggregations]
    if len(set(outputs)) != len(outputs):
        dup = sorted({o for o in outputs if outputs.count(o) > 1})
        raise FeatureStoreError(
            f"feature names {dup} appear in several views; pass full_feature_names=True"
        )
    clash = [o for o in outputs if o in entity_df.columns]
    if clash:
        raise FeatureStoreError(f"entity_df already has columns named like features: {clash}")
    ctes = ", ".join(f"p{i} AS ({sql})" for i, sql in enumerate(parts))
    selects = ", ".join(f"p{i}.* EXCLUDE ({ROW})" for i in range(len(parts)))
    joins = " ".join(f"LEFT JOIN p{i} USING ({ROW})" for i in range(len(parts)))
    sql = (
        f"WITH {ctes} SELECT e.* EXCLUDE ({ROW}), {selects} FROM entity_df e {joins} "
        f"ORDER BY e.{ROW}"
    )
    try:
        out = con.execute(sql).df()
    except Exception as exc:  # duckdb raises many types; the message names the column
        reason = str(exc).splitlines()[0]
        raise FeatureStoreError(f"point-in-time join failed: {reason}") from None
    finally:
        con.close()
    out[ENTITY_TS] = entity_df[ENTITY_TS].to_numpy()
    return out, sql
