"""Materialization (placeholder; filled below)."""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from flywheel.metadata import Database

watermarks_t = sa.table(
    "fs_watermarks",
    sa.column("view", sa.String),
    sa.column("watermark", sa.DateTime(timezone=True)),
    sa.column("rows", sa.BigInteger),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


def watermarks(db: Database) -> dict[str, tuple[datetime, int]]:
    """View ref -> (materialized until, rows written in total)."""
    with db.read() as conn:
        rows = conn.execute(sa.select(watermarks_t)).all()
    out = {}
    for r in rows:
        wm = r.watermark if r.watermark.tzinfo else r.watermark.replace(tzinfo=UTC)
        out[r.view] = (wm, int(r.rows))
    return out
