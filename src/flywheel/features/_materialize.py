"""Materialization: batch source -> online store, incremental by a watermark per view.

For each view and interval [start, end) DuckDB picks the latest source row per entity (same
tie-break as the offline join) and encodes it as a compact JSON array in SQL; the rows are
written in batches through ``OnlineStore.write``, which keeps the newest event time per key.
That makes a run idempotent, and a run killed at any point (``kill -9``) and then rerun ends in
exactly the state of a clean run: the watermark only moves after every row of the interval is
written, so the rerun rewrites the interval, and rewriting is harmless.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import sqlalchemy as sa

from flywheel.features._definitions import FeatureView
from flywheel.features._offline import _lit, _q, connect, has_parquet, parquet_glob
from flywheel.features._online import OnlineStore, table_name
from flywheel.metadata import Database

watermarks_t = sa.table(
    "fs_watermarks",
    sa.column("view", sa.String),
    sa.column("watermark", sa.DateTime(timezone=True)),
    sa.column("rows", sa.BigInteger),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)

Progress = Callable[[str, int, int], None]  # (view ref, rows done, rows total)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class ViewRun:
    view: str
    start: datetime
    end: datetime
    rows: int
    seconds: float


@dataclass
class MaterializeReport:
    """What a materialization wrote: per view rows and time, and the overall rows/s."""

    views: list[ViewRun] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.views)

    @property
    def seconds(self) -> float:
        return sum(v.seconds for v in self.views)

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"materialized {self.rows:,} rows of {len(self.views)} view(s) in "
            f"{self.seconds:.2f} s ({self.rows_per_second:,.0f} rows/s)"
        )


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def watermarks(db: Database) -> dict[str, tuple[datetime, int]]:
    """View ref -> (materialized until, rows written in total)."""
    with db.read() as conn:
        rows = conn.execute(sa.select(watermarks_t)).all()
    return {r.view: (_aware(r.watermark), int(r.rows)) for r in rows}


def set_watermark(db: Database, view: str, end: datetime, rows: int) -> None:
    now = datetime.now(UTC)
    with db.write() as conn:
        cur = conn.execute(
            sa.select(watermarks_t.c.watermark, watermarks_t.c.rows).where(
                watermarks_t.c.view == view
            )
        ).first()
        if cur is None:
            conn.execute(
                watermarks_t.insert().values(view=view, watermark=end, rows=rows, updated_at=now)
            )
        else:
            conn.execute(
                watermarks_t.update()
                .where(watermarks_t.c.view == view)
                .values(
                    watermark=max(_aware(cur.watermark), end),
                    rows=int(cur.rows) + rows,
                    updated_at=now,
                )
            )


def _value_sql(name: str, dtype: str, present: set[str]) -> str:
    if name not in present:
        return "NULL"
    col = _q(name)
    if dtype == "timestamp":
        return f"epoch_us(CAST({col} AS TIMESTAMP))"
    if dtype in ("float32", "float64"):
        return f"CASE WHEN isnan({col}) OR isinf({col}) THEN NULL ELSE {col} END"
    return col


def materialize_view(
    online: OnlineStore,
    view: FeatureView,
    path: Path,
    join_keys: tuple[str, ...],
    start: datetime,
    end: datetime,
    *,
    batch_size: int = 20_000,
    progress: Progress | None = None,
    assume_newer: bool = False,
) -> int:
    """Write the latest row per entity with event time in [start, end). Returns rows written.

    ``assume_newer``: the interval starts at or after everything stored (no backfill), so the
    store may overwrite without comparing event times.
    """
    assert view.source is not None
    if not has_parquet(path):
        return 0
    con = connect()
    try:
        src = (
            f"read_parquet({_lit(parquet_glob(path))}, filename=true, file_row_number=true, "
            "union_by_name=true)"
        )
        present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src}").fetchall()}
        ts = _q(view.source.timestamp_field)
        created = view.source.created_timestamp_field
        order = f"{ts} DESC, " + (f"{_q(created)} DESC NULLS LAST, " if created else "")
        keys = ", ".join(_q(k) for k in join_keys)
        if len(join_keys) == 1:
            key_expr = f"CAST({_q(join_keys[0])} AS VARCHAR)"
        else:
            key_expr = (
                "concat_ws(chr(31), "
                + ", ".join(f"CAST({_q(k)} AS VARCHAR)" for k in join_keys)
                + ")"
            )
        values = ", ".join(_value_sql(f.name, f.dtype, present) for f in view.schema)
        start_s = start.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
        end_s = end.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ")
        not_null = " AND ".join(f"{_q(k)} IS NOT NULL" for k in join_keys)
        con.execute(
            f"CREATE TEMP TABLE m AS SELECT {key_expr} AS k, "
            f"epoch_us(CAST({ts} AS TIMESTAMP)) AS t, "
            f"encode(CAST(json_array({values}) AS VARCHAR)) AS v "
            f"FROM {src} WHERE CAST({ts} AS TIMESTAMP) >= TIMESTAMP {_lit(start_s)} "
            f"AND CAST({ts} AS TIMESTAMP) < TIMESTAMP {_lit(end_s)} AND {not_null} "
            f"QUALIFY row_number() OVER (PARTITION BY {keys} "
            f"ORDER BY {order}filename DESC, file_row_number DESC) = 1"
        )
        ((total,),) = con.execute("SELECT count(*) FROM m").fetchall()
        table = table_name(view.ref)
        done = 0
        if progress:
            progress(view.ref, 0, total)
        reader = con.sql("SELECT k, t, v FROM m").to_arrow_reader(batch_size)
        for batch in reader:
            k = batch.column(0).to_pylist()
            t = batch.column(1).to_pylist()
            v = batch.column(2).to_pylist()
            online.write(table, list(zip(k, t, v, strict=True)), assume_newer=assume_newer)
            done += len(k)
            if progress:
                progress(view.ref, done, total)
        return int(total)
    finally:
        con.close()


def run_materialization(
    db: Database,
    online: OnlineStore,
    views: list[tuple[FeatureView, Path, tuple[str, ...], datetime, datetime]],
    *,
    batch_size: int = 20_000,
    progress: Progress | None = None,
) -> MaterializeReport:
    """Materialize each (view, source path, join keys, start, end) and advance its watermark."""
    report = MaterializeReport()
    marks = watermarks(db)
    for view, path, keys, start, end in views:
        t0 = time.perf_counter()
        mark = marks.get(view.ref)
        rows = materialize_view(
            online,
            view,
            path,
            keys,
            start,
            end,
            batch_size=batch_size,
            progress=progress,
            assume_newer=mark is None or start >= mark[0],
        )
        set_watermark(db, view.ref, end, rows)
        report.views.append(ViewRun(view.ref, start, end, rows, time.perf_counter() - t0))
    return report
