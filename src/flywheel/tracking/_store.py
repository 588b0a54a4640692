"""SQL for tracking: the tables, the run/param/tag reads and writes, and the metric batch writer.

Metric points are written in batches straight through the database driver: ``executemany`` on
SQLite (one ``BEGIN IMMEDIATE`` transaction per batch) and ``COPY ... FROM STDIN`` on
PostgreSQL, which is what lets a training loop log hundreds of thousands of points a second.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from flywheel.metadata import Database
from flywheel.tracking._errors import ParamConflict, RunNotFound, TrackingError

RUN_STATUSES = ("running", "finished", "failed", "killed")

experiments_t = sa.table(
    "tracking_experiments",
    sa.column("name", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
runs_t = sa.table(
    "tracking_runs",
    sa.column("id", sa.String),
    sa.column("experiment", sa.String),
    sa.column("name", sa.String),
    sa.column("status", sa.String),
    sa.column("start_time", sa.DateTime(timezone=True)),
    sa.column("end_time", sa.DateTime(timezone=True)),
    sa.column("params", sa.Text),
    sa.column("tags", sa.Text),
    sa.column("system", sa.Text),
    sa.column("git_commit", sa.String),
    sa.column("user", sa.String),
)
metrics_t = sa.table(
    "tracking_metrics",
    sa.column("run_id", sa.String),
    sa.column("key", sa.String),
    sa.column("value", sa.Float),
    sa.column("step", sa.BigInteger),
    sa.column("timestamp", sa.Float),
)
summaries_t = sa.table(
    "tracking_metric_summaries",
    sa.column("run_id", sa.String),
    sa.column("key", sa.String),
    sa.column("last", sa.Float),
    sa.column("last_step", sa.BigInteger),
    sa.column("last_timestamp", sa.Float),
    sa.column("min", sa.Float),
    sa.column("max", sa.Float),
    sa.column("count", sa.BigInteger),
)
artifacts_t = sa.table(
    "tracking_artifacts",
    sa.column("run_id", sa.String),
    sa.column("name", sa.String),
    sa.column("sha256", sa.String),
    sa.column("size", sa.BigInteger),
    sa.column("created_at", sa.DateTime(timezone=True)),
)

MetricRow = tuple[str, str, float, int, float]


@dataclass(frozen=True)
class MetricPoint:
    """One logged value of a metric."""

    step: int
    value: float
    timestamp: float

    def to_dict(self) -> dict[str, Any]:
        return {"step": self.step, "value": self.value, "timestamp": self.timestamp}


@dataclass(frozen=True)
class MetricSummary:
    """A metric of a run at a glance: last value (at the highest step), min, max and count."""

    key: str
    last: float
    last_step: int
    min: float
    max: float
    count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "last": self.last,
            "last_step": self.last_step,
            "min": self.min,
            "max": self.max,
            "count": self.count,
        }


@dataclass(frozen=True)
class RunArtifact:
    name: str
    sha256: str
    size: int
    created_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "sha256": self.sha256,
            "size": self.size,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class RunInfo:
    """A stored run: identity, status, params, tags, system info and metric summaries."""

    id: str
    experiment: str
    name: str
    status: str
    start_time: datetime
    end_time: datetime | None
    params: dict[str, str]
    tags: dict[str, str]
    system: dict[str, Any]
    git_commit: str | None
    user: str
    metrics: dict[str, MetricSummary] = field(default_factory=dict)
    artifacts: list[RunArtifact] = field(default_factory=list)

    @property
    def latest_metrics(self) -> dict[str, float]:
        return {k: m.last for k, m in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "experiment": self.experiment,
            "name": self.name,
            "status": self.status,
            "start_time": self.start_time.isoformat(),
            "end_time": self.end_time.isoformat() if self.end_time else None,
            "params": dict(self.params),
            "tags": dict(self.tags),
            "system": dict(self.system),
            "git_commit": self.git_commit,
            "user": self.user,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "artifacts": [a.to_dict() for a in self.artifacts],
        }


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


_STEP_THEN_TIME = operator.itemgetter(3, 4)
_RUN_KEY = operator.itemgetter(0, 1)


def _group(rows: Sequence[MetricRow]) -> dict[tuple[str, str], Sequence[MetricRow]]:
    groups: dict[tuple[str, str], list[MetricRow]] = {}
    for row in rows:
        group = groups.get((row[0], row[1]))
        if group is None:
            groups[(row[0], row[1])] = [row]
        else:
            group.append(row)
    return dict(groups)


def _num(value: float | None) -> float:
    """A stored metric value; SQLite keeps NaN as NULL."""
    return math.nan if value is None else float(value)


def _fmin(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else min(a, b)


def _fmax(a: float, b: float) -> float:
    return b if math.isnan(a) else a if math.isnan(b) else max(a, b)


def summarise(rows: Sequence[MetricRow]) -> dict[tuple[str, str], list[Any]]:
    """Per ``(run_id, key)`` of a batch: ``[last, last_step, last_ts, min, max, count]``.

    "Last" is the point with the highest step, ties broken by the later timestamp; NaN values
    count but never become the min or max unless every value is NaN.
    """
    pairs = set(map(_RUN_KEY, rows))
    groups: dict[tuple[str, str], Sequence[MetricRow]] = {}
    if len(pairs) == 1:  # the common batch: one metric of one run, no grouping needed
        groups[pairs.pop()] = rows
    else:
        groups = _group(rows)
    out: dict[tuple[str, str], list[Any]] = {}
    for pair, group in groups.items():
        last = max(group, key=_STEP_THEN_TIME)
        values = [r[2] for r in group]
        finite = [v for v in values if v == v] or [math.nan]
        out[pair] = [last[2], last[3], last[4], min(finite), max(finite), len(group)]
    return out


class TrackingStore:
    """Every read and write of the tracking tables, over one ``Database``."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- runs ---------------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        experiment: str,
        name: str,
        params: dict[str, str],
        tags: dict[str, str],
        system: dict[str, Any],
        git_commit: str | None,
        user: str,
    ) -> datetime:
        now = datetime.now(UTC)
        with self.db.write() as conn:
            exists = conn.execute(
                sa.select(experiments_t.c.name).where(experiments_t.c.name == experiment)
            ).first()
            if exists is None:
                conn.execute(experiments_t.insert().values(name=experiment, created_at=now))
            conn.execute(
                runs_t.insert().values(
                    id=run_id,
                    experiment=experiment,
                    name=name,
                    status="running",
                    start_time=now,
                    end_time=None,
                    params=json.dumps(params),
                    tags=json.dumps(tags),
                    system=json.dumps(system, default=str),
                    git_commit=git_commit,
                    user=user,
                )
            )
        return now

    def _load_json(self, conn: sa.Connection, run_id: str, column: str) -> dict[str, Any]:
        row = conn.execute(sa.select(runs_t.c[column]).where(runs_t.c.id == run_id)).first()
        if row is None:
            raise RunNotFound(f"run {run_id!r} does not exist")
        data: dict[str, Any] = json.loads(row[0])
        return data

    def merge_params(self, run_id: str, params: dict[str, str]) -> None:
        """Add params; a key already logged with a different value raises ``ParamConflict``."""
        with self.db.write() as conn:
            current = self._load_json(conn, run_id, "params")
            for key, value in params.items():
                if key in current and current[key] != value:
                    raise ParamConflict(
                        f"run {run_id}: param {key!r} is already {current[key]!r}; "
                        f"params are immutable (got {value!r})"
                    )
            current.update(params)
            conn.execute(
                runs_t.update().where(runs_t.c.id == run_id).values(params=json.dumps(current))
            )

    def merge_tags(self, run_id: str, tags: dict[str, str]) -> None:
        with self.db.write() as conn:
            current = self._load_json(conn, run_id, "tags")
            current.update(tags)
            conn.execute(
                runs_t.update().where(runs_t.c.id == run_id).values(tags=json.dumps(current))
            )

    def set_status(self, run_id: str, status: str) -> None:
        if status not in RUN_STATUSES:
            raise TrackingError(f"run status {status!r} is not one of {RUN_STATUSES}")
        end = None if status == "running" else datetime.now(UTC)
        with self.db.write() as conn:
            result = conn.execute(
                runs_t.update().where(runs_t.c.id == run_id).values(status=status, end_time=end)
            )
            if result.rowcount == 0:
                raise RunNotFound(f"run {run_id!r} does not exist")

    def add_artifact(self, run_id: str, name: str, sha256: str, size: int) -> None:
        with self.db.write() as conn:
            conn.execute(
                artifacts_t.delete().where(
                    (artifacts_t.c.run_id == run_id) & (artifacts_t.c.name == name)
                )
            )
            conn.execute(
                artifacts_t.insert().values(
                    run_id=run_id, name=name, sha256=sha256, size=size, created_at=datetime.now(UTC)
                )
            )

    # -- metric points ------------------------------------------------------------------------

    def write_metrics(self, rows: Sequence[MetricRow]) -> None:
        """Insert metric rows ``(run_id, key, value, step, timestamp)`` in one transaction, and
        fold them into the per-key summaries in the same transaction."""
        if not rows:
            return
        batch = summarise(rows)
        with self.db.write() as conn:
            dbapi = conn.connection.dbapi_connection
            if dbapi is None:  # pragma: no cover - a pooled connection always has one
                raise TrackingError("no database connection for the metric writer")
            cursor = dbapi.cursor()
            try:
                if self.db.dialect == "postgresql":
                    with cursor.copy(
                        "COPY tracking_metrics (run_id, key, value, step, timestamp) FROM STDIN"
                    ) as copy:
                        for row in rows:
                            copy.write_row(row)
                else:
                    cursor.executemany(
                        "INSERT INTO tracking_metrics (run_id, key, value, step, timestamp) "
                        "VALUES (?, ?, ?, ?, ?)",
                        rows,
                    )
            finally:
                cursor.close()
            self._merge_summaries(conn, batch)

    @staticmethod
    def _merge_summaries(conn: sa.Connection, batch: dict[tuple[str, str], list[Any]]) -> None:
        run_ids = sorted({run_id for run_id, _ in batch})
        existing = {
            (r.run_id, r.key): r
            for r in conn.execute(
                sa.select(summaries_t).where(summaries_t.c.run_id.in_(run_ids))
            ).all()
        }
        for (run_id, key), (last, step, ts, vmin, vmax, count) in batch.items():
            old = existing.get((run_id, key))
            if old is None:
                conn.execute(
                    summaries_t.insert().values(
                        run_id=run_id,
                        key=key,
                        last=last,
                        last_step=step,
                        last_timestamp=ts,
                        min=vmin,
                        max=vmax,
                        count=count,
                    )
                )
                continue
            newer = (step, ts) >= (old.last_step, old.last_timestamp)
            conn.execute(
                summaries_t.update()
                .where((summaries_t.c.run_id == run_id) & (summaries_t.c.key == key))
                .values(
                    last=last if newer else old.last,
                    last_step=step if newer else old.last_step,
                    last_timestamp=ts if newer else old.last_timestamp,
                    min=_fmin(_num(old.min), vmin),
                    max=_fmax(_num(old.max), vmax),
                    count=int(old._mapping["count"]) + count,
                )
            )

    def metric_history(self, run_id: str, key: str) -> list[MetricPoint]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(metrics_t.c.step, metrics_t.c.value, metrics_t.c.timestamp)
                .where((metrics_t.c.run_id == run_id) & (metrics_t.c.key == key))
                .order_by(metrics_t.c.step, metrics_t.c.timestamp)
            ).all()
        return [MetricPoint(int(r.step), _num(r.value), float(r.timestamp)) for r in rows]

    def metric_summaries(self, run_ids: Sequence[str]) -> dict[str, dict[str, MetricSummary]]:
        """Per run, per key: last value (highest step, then latest time), min, max, count."""
        out: dict[str, dict[str, MetricSummary]] = {r: {} for r in run_ids}
        if not run_ids:
            return out
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(summaries_t)
                .where(summaries_t.c.run_id.in_(list(run_ids)))
                .order_by(summaries_t.c.run_id, summaries_t.c.key)
            ).all()
        for r in rows:
            out[r.run_id][r.key] = MetricSummary(
                key=r.key,
                last=_num(r.last),
                last_step=int(r.last_step),
                min=_num(r.min),
                max=_num(r.max),
                count=int(r._mapping["count"]),
            )
        return out

    # -- reads --------------------------------------------------------------------------------

    def _row_to_info(self, row: Any) -> RunInfo:
        return RunInfo(
            id=row.id,
            experiment=row.experiment,
            name=row.name,
            status=row.status,
            start_time=_aware(row.start_time) or datetime.now(UTC),
            end_time=_aware(row.end_time),
            params=json.loads(row.params),
            tags=json.loads(row.tags),
            system=json.loads(row.system),
            git_commit=row.git_commit,
            user=row.user,
        )

    def run_exists(self, run_id: str) -> None:
        """``RunNotFound`` unless the run exists (cheap: one primary-key lookup)."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(runs_t.c.id).where(runs_t.c.id == run_id)).first()
        if row is None:
            raise RunNotFound(f"run {run_id!r} does not exist")

    def get_run(self, run_id: str) -> RunInfo:
        with self.db.read() as conn:
            row = conn.execute(sa.select(runs_t).where(runs_t.c.id == run_id)).first()
            if row is None:
                raise RunNotFound(f"run {run_id!r} does not exist")
            arts = conn.execute(
                sa.select(artifacts_t)
                .where(artifacts_t.c.run_id == run_id)
                .order_by(artifacts_t.c.name)
            ).all()
        info = self._row_to_info(row)
        summaries = self.metric_summaries([run_id])[run_id]
        artifacts = [
            RunArtifact(a.name, a.sha256, int(a.size), _aware(a.created_at) or info.start_time)
            for a in arts
        ]
        return RunInfo(**{**info.__dict__, "metrics": summaries, "artifacts": artifacts})

    def list_runs(
        self,
        experiment: str | None = None,
        limit: int = 100,
        *,
        status: str | None = None,
        order_by: str | None = None,
        offset: int = 0,
    ) -> list[RunInfo]:
        """Runs, newest first; or by a metric's last value with ``order_by="key"`` (ascending)
        or ``"-key"`` (descending; runs without the metric come last). ``offset`` skips that
        many runs of the same order (for pages)."""
        query = sa.select(runs_t).where(*self._run_filters(experiment, status))
        if order_by:
            key = order_by.removeprefix("-")
            joined = runs_t.outerjoin(
                summaries_t, (summaries_t.c.run_id == runs_t.c.id) & (summaries_t.c.key == key)
            )
            metric = summaries_t.c["last"]
            direction = metric.desc() if order_by.startswith("-") else metric.asc()
            query = query.select_from(joined).order_by(
                metric.is_(None), direction, runs_t.c.start_time.desc(), runs_t.c.id
            )
        else:
            query = query.order_by(runs_t.c.start_time.desc(), runs_t.c.id)
        with self.db.read() as conn:
            rows = conn.execute(query.limit(limit).offset(offset)).all()
        infos = [self._row_to_info(r) for r in rows]
        summaries = self.metric_summaries([i.id for i in infos])
        return [RunInfo(**{**i.__dict__, "metrics": summaries[i.id]}) for i in infos]

    @staticmethod
    def _run_filters(experiment: str | None, status: str | None) -> list[Any]:
        if status is not None and status not in RUN_STATUSES:
            raise TrackingError(f"run status {status!r} is not one of {RUN_STATUSES}")
        filters: list[Any] = []
        if experiment is not None:
            filters.append(runs_t.c.experiment == experiment)
        if status is not None:
            filters.append(runs_t.c.status == status)
        return filters

    def count_runs(self, experiment: str | None = None, *, status: str | None = None) -> int:
        """How many runs ``list_runs`` would page through with these filters."""
        query = sa.select(sa.func.count()).select_from(runs_t)
        query = query.where(*self._run_filters(experiment, status))
        with self.db.read() as conn:
            return int(conn.execute(query).scalar_one())

    def list_experiments(self) -> list[dict[str, Any]]:
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(
                    experiments_t.c.name,
                    experiments_t.c.created_at,
                    sa.func.count(runs_t.c.id).label("runs"),
                )
                .select_from(
                    experiments_t.outerjoin(runs_t, runs_t.c.experiment == experiments_t.c.name)
                )
                .group_by(experiments_t.c.name, experiments_t.c.created_at)
                .order_by(experiments_t.c.name)
            ).all()
        return [
            {
                "name": r.name,
                "created_at": (_aware(r.created_at) or datetime.now(UTC)).isoformat(),
                "runs": int(r.runs),
            }
            for r in rows
        ]

    def artifact(self, run_id: str, name: str) -> RunArtifact:
        with self.db.read() as conn:
            row = conn.execute(
                sa.select(artifacts_t).where(
                    (artifacts_t.c.run_id == run_id) & (artifacts_t.c.name == name)
                )
            ).first()
        if row is None:
            raise RunNotFound(f"run {run_id!r} has no artifact {name!r}")
        return RunArtifact(
            row.name, row.sha256, int(row.size), _aware(row.created_at) or datetime.now(UTC)
        )


__all__ = [
    "RUN_STATUSES",
    "MetricPoint",
    "MetricSummary",
    "RunArtifact",
    "RunInfo",
    "TrackingStore",
]
