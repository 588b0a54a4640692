"""Training datasets: the result of a point-in-time join saved as Parquet plus a catalog entry.

A dataset is immutable: its files are written to a temporary folder, renamed into place, and
only then recorded (name, features, the SQL that made it, row count, per-column stats), so a
crash leaves either nothing or a complete dataset. Lineage: every view (and the service, if one
was used) -> ``training_dataset:NAME``.
"""

from __future__ import annotations

import math
import shutil
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pandas as pd
import sqlalchemy as sa

from flywheel.errors import ConflictError
from flywheel.features._catalog import dumps
from flywheel.features._errors import FeatureNotFound, FeatureStoreError
from flywheel.lineage import Node, record_edge
from flywheel.metadata import Database

datasets_t = sa.table(
    "fs_training_datasets",
    sa.column("name", sa.String),
    sa.column("spec", sa.Text),
    sa.column("row_count", sa.BigInteger),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True)
class TrainingDataset:
    """A saved point-in-time join: Parquet ``files``, ``row_count``, per-column ``stats``."""

    name: str
    files: list[Path]
    row_count: int
    stats: dict[str, dict[str, Any]]
    features: list[str]
    query: str = ""
    feature_service: str | None = None
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    def to_df(self) -> pd.DataFrame:
        """The dataset as one DataFrame."""
        return pd.concat([pd.read_parquet(f) for f in self.files], ignore_index=True)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "files": [str(f) for f in self.files],
            "row_count": self.row_count,
            "stats": self.stats,
            "features": self.features,
            "feature_service": self.feature_service,
            "created_at": self.created_at.isoformat(),
            "query": self.query,
        }


def _clean(x: Any) -> Any:
    if x is None:
        return None
    if isinstance(x, float) and (math.isnan(x) or math.isinf(x)):
        return None
    if hasattr(x, "item"):
        return _clean(x.item())
    if isinstance(x, pd.Timestamp | datetime):
        return x.isoformat()
    return x


def column_stats(df: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """Per column: dtype, non-null count, nulls, and min/max/mean for numbers."""
    stats: dict[str, dict[str, Any]] = {}
    for col in df.columns:
        s = df[col]
        entry: dict[str, Any] = {
            "dtype": str(s.dtype),
            "count": int(s.notna().sum()),
            "nulls": int(s.isna().sum()),
        }
        if pd.api.types.is_numeric_dtype(s) and not pd.api.types.is_bool_dtype(s):
            valid = s.dropna()
            if len(valid):
                entry.update(
                    min=_clean(valid.min()), max=_clean(valid.max()), mean=_clean(valid.mean())
                )
        elif pd.api.types.is_datetime64_any_dtype(s):
            valid = s.dropna()
            if len(valid):
                entry.update(min=_clean(valid.min()), max=_clean(valid.max()))
        stats[str(col)] = entry
    return stats


def save_training_dataset(
    db: Database,
    root: Path,
    name: str,
    df: pd.DataFrame,
    *,
    features: list[str],
    views: list[str],
    query: str,
    feature_service: str | None,
) -> TrainingDataset:
    """Write ``df`` under ``root/NAME/`` and record it. Raises ``ConflictError`` if it exists."""
    if not name or "/" in name or name.startswith(".") or len(name) > 200:
        raise FeatureStoreError(f"training dataset name {name!r} is not a valid name")
    with db.read() as conn:
        if conn.execute(sa.select(datasets_t.c.name).where(datasets_t.c.name == name)).first():
            raise ConflictError(f"training dataset {name!r} exists; datasets are immutable")
    final = root / name
    tmp = root / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(parents=True)
    try:
        df.to_parquet(tmp / "part-00000.parquet", index=False)
        if final.exists():
            shutil.rmtree(final)  # leftovers of a crash before the catalog row was written
        tmp.rename(final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    ds = TrainingDataset(
        name=name,
        files=[final / "part-00000.parquet"],
        row_count=len(df),
        stats=column_stats(df),
        features=features,
        query=query,
        feature_service=feature_service,
    )
    spec = ds.to_dict()
    spec["files"] = [f"{name}/part-00000.parquet"]
    spec["views"] = views
    with db.write() as conn:
        if conn.execute(sa.select(datasets_t.c.name).where(datasets_t.c.name == name)).first():
            raise ConflictError(f"training dataset {name!r} exists; datasets are immutable")
        conn.execute(
            datasets_t.insert().values(
                name=name, spec=dumps(spec), row_count=len(df), created_at=ds.created_at
            )
        )
        node = Node("training_dataset", name)
        for v in views:
            record_edge(conn, Node("feature_view", v), node, "features")
        if feature_service:
            record_edge(conn, Node("feature_service", feature_service), node, "features")
    return ds


def _from_row(root: Path, row: Any) -> TrainingDataset:
    spec = orjson.loads(row.spec)
    created = row.created_at if row.created_at.tzinfo else row.created_at.replace(tzinfo=UTC)
    return TrainingDataset(
        name=row.name,
        files=[root / f for f in spec["files"]],
        row_count=int(row.row_count),
        stats=spec["stats"],
        features=spec["features"],
        query=spec.get("query", ""),
        feature_service=spec.get("feature_service"),
        created_at=created,
    )


def load_training_dataset(db: Database, root: Path, name: str) -> TrainingDataset:
    with db.read() as conn:
        row = conn.execute(sa.select(datasets_t).where(datasets_t.c.name == name)).first()
    if row is None:
        raise FeatureNotFound(f"training dataset {name!r} does not exist")
    return _from_row(root, row)


def list_training_datasets(db: Database, root: Path) -> list[TrainingDataset]:
    with db.read() as conn:
        rows = conn.execute(sa.select(datasets_t).order_by(datasets_t.c.name)).all()
    return [_from_row(root, r) for r in rows]
