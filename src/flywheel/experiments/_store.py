"""The experimentation tables and every SQL statement that touches them (SQLite and Postgres).

Only this module knows the table layout; the rest of the package works with plain rows. Writes
are single transactions; inserts of exposures and events are idempotent on their client-made ids
(``decision_id``, ``event_id``), so a retried flush never duplicates anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from flywheel.metadata import Database

experiments_table = sa.table(
    "experiments",
    sa.column("name", sa.String),
    sa.column("kind", sa.String),
    sa.column("status", sa.String),
    sa.column("spec", sa.Text),
    sa.column("layer", sa.String),
    sa.column("allocation", sa.Text),
    sa.column("layer_ranges", sa.Text),
    sa.column("winner", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
    sa.column("started_at", sa.DateTime(timezone=True)),
    sa.column("stopped_at", sa.DateTime(timezone=True)),
)
layers_table = sa.table(
    "experiment_layers", sa.column("name", sa.String), sa.column("created_at", sa.DateTime)
)
changes_table = sa.table(
    "experiment_changes", sa.column("id", sa.Integer), sa.column("version", sa.BigInteger)
)
exposures_table = sa.Table(
    "experiment_exposures",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("decision_id", sa.String, unique=True),
    sa.Column("experiment", sa.String),
    sa.Column("unit_id", sa.String),
    sa.Column("variant", sa.String),
    sa.Column("propensity", sa.Float),
    sa.Column("context", sa.Text),
    sa.Column("ts", sa.Float),
)
events_table = sa.Table(
    "experiment_events",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("event_id", sa.String, unique=True),
    sa.Column("unit_id", sa.String),
    sa.Column("event_type", sa.String),
    sa.Column("value", sa.Float),
    sa.Column("ts", sa.Float),
    sa.Column("experiment", sa.String),
    sa.Column("decision_id", sa.String),
    sa.Column("applied", sa.Boolean),
)
bandit_history_table = sa.Table(
    "experiment_bandit_history",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("experiment", sa.String),
    sa.Column("version", sa.BigInteger),
    sa.Column("ts", sa.Float),
    sa.Column("probabilities", sa.Text),
    sa.Column("pulls", sa.Text),
    sa.Column("contextual", sa.Boolean),
)
# Rows of allocation history kept per bandit: beyond it, every other row of the older half is
# dropped, so recent updates keep full resolution and older ones thin out (never unbounded).
BANDIT_HISTORY_ROWS = 2_000
bandit_table = sa.table(
    "experiment_bandit_state",
    sa.column("experiment", sa.String),
    sa.column("version", sa.BigInteger),
    sa.column("state", sa.Text),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)


EXPOSURE_COLUMNS = (
    "decision_id",
    "experiment",
    "unit_id",
    "variant",
    "propensity",
    "context",
    "ts",
)


@dataclass(frozen=True)
class ExperimentRow:
    name: str
    kind: str
    status: str
    spec: dict[str, Any]
    layer: str
    allocation: dict[str, list[list[int]]]
    layer_ranges: list[list[int]]
    winner: str | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    stopped_at: datetime | None


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _row(r: Any) -> ExperimentRow:
    return ExperimentRow(
        name=r.name,
        kind=r.kind,
        status=r.status,
        spec=json.loads(r.spec),
        layer=r.layer,
        allocation=json.loads(r.allocation),
        layer_ranges=json.loads(r.layer_ranges),
        winner=r.winner,
        created_at=_utc(r.created_at) or datetime.now(UTC),
        updated_at=_utc(r.updated_at) or datetime.now(UTC),
        started_at=_utc(r.started_at),
        stopped_at=_utc(r.stopped_at),
    )


def _insert_ignore(
    conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], key: str
) -> int:
    """Insert rows, skipping any whose unique ``key`` already exists; returns rows inserted."""
    if not rows:
        return 0
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table).on_conflict_do_nothing(index_elements=[key])
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing(index_elements=[key])
    result = conn.execute(stmt.returning(table.c[key]), list(rows))
    return len(result.all())


class ExperimentStore:
    """SQL access to the experimentation tables of one metadata database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- definitions ----------------------------------------------------------------------------

    def get(self, conn: Connection, name: str, *, for_update: bool = False) -> ExperimentRow | None:
        query = sa.select(experiments_table).where(experiments_table.c.name == name)
        if for_update and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        r = conn.execute(query).first()
        return None if r is None else _row(r)

    def list_all(self, conn: Connection, status: str | None = None) -> list[ExperimentRow]:
        query = sa.select(experiments_table).order_by(experiments_table.c.created_at)
        if status is not None:
            query = query.where(experiments_table.c.status == status)
        return [_row(r) for r in conn.execute(query)]

    def lock_layer(self, conn: Connection, layer: str) -> None:
        """Serialise allocation changes in ``layer`` (SQLite writes are already serialised)."""
        exists = conn.execute(
            sa.select(layers_table.c.name).where(layers_table.c.name == layer)
        ).first()
        if exists is None:
            _insert_ignore(
                conn,
                sa.Table(
                    "experiment_layers",
                    sa.MetaData(),
                    sa.Column("name", sa.String, primary_key=True),
                    sa.Column("created_at", sa.DateTime(timezone=True)),
                ),
                [{"name": layer, "created_at": datetime.now(UTC)}],
                "name",
            )
        if conn.dialect.name == "postgresql":
            conn.execute(
                sa.select(layers_table.c.name).where(layers_table.c.name == layer).with_for_update()
            )

    def layer_allocations(self, conn: Connection, layer: str) -> dict[str, list[list[int]]]:
        """Layer buckets held by each running or draft experiment of ``layer``."""
        rows = conn.execute(
            sa.select(experiments_table.c.name, experiments_table.c.layer_ranges).where(
                experiments_table.c.layer == layer,
                experiments_table.c.status.in_(("running", "draft")),
            )
        )
        return {r.name: json.loads(r.layer_ranges) for r in rows}

    def insert(self, conn: Connection, row: ExperimentRow) -> None:
        conn.execute(
            sa.insert(experiments_table).values(
                name=row.name,
                kind=row.kind,
                status=row.status,
                spec=json.dumps(row.spec, sort_keys=True),
                layer=row.layer,
                allocation=json.dumps(row.allocation),
                layer_ranges=json.dumps(row.layer_ranges),
                winner=row.winner,
                created_at=row.created_at,
                updated_at=row.updated_at,
                started_at=row.started_at,
                stopped_at=row.stopped_at,
            )
        )
        self.bump(conn)

    def update(self, conn: Connection, name: str, **values: Any) -> None:
        for key in ("spec", "allocation", "layer_ranges"):
            if key in values:
                values[key] = json.dumps(values[key], sort_keys=key == "spec")
        values["updated_at"] = datetime.now(UTC)
        conn.execute(
            sa.update(experiments_table).where(experiments_table.c.name == name).values(**values)
        )
        self.bump(conn)

    def bump(self, conn: Connection) -> None:
        conn.execute(
            sa.update(changes_table)
            .where(changes_table.c.id == 1)
            .values(version=changes_table.c.version + 1)
        )

    def versions(self) -> tuple[int, dict[str, int]]:
        """The definitions' change counter and every bandit's state version, in one read."""
        with self.db.read() as conn:
            version = conn.execute(sa.select(changes_table.c.version)).scalar_one()
            bandits = {
                r.experiment: int(r.version)
                for r in conn.execute(sa.select(bandit_table.c.experiment, bandit_table.c.version))
            }
        return int(version), bandits

    # -- exposures and events -------------------------------------------------------------------

    def insert_exposures(self, rows: Sequence[tuple[Any, ...]]) -> int:
        """Insert exposure tuples (``EXPOSURE_COLUMNS`` order), skipping known decision ids.

        Uses the driver's ``executemany`` directly: this runs on a thread beside the hot path,
        so it should hold the GIL as little as possible. Returns the rows sent.
        """
        if not rows:
            return 0
        columns = ", ".join(EXPOSURE_COLUMNS)
        with self.db.write() as conn:
            if conn.dialect.name == "postgresql":
                marks = ", ".join(["%s"] * len(EXPOSURE_COLUMNS))
                sql = (
                    f"INSERT INTO experiment_exposures ({columns}) VALUES ({marks}) "
                    "ON CONFLICT (decision_id) DO NOTHING"
                )
            else:
                marks = ", ".join(["?"] * len(EXPOSURE_COLUMNS))
                sql = f"INSERT OR IGNORE INTO experiment_exposures ({columns}) VALUES ({marks})"
            conn.exec_driver_sql(sql, list(rows))
        return len(rows)

    def insert_events(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> int:
        with_id = [r for r in rows if r.get("event_id")]
        without = [r for r in rows if not r.get("event_id")]
        inserted = _insert_ignore(conn, events_table, with_id, "event_id")
        if without:
            conn.execute(sa.insert(events_table), list(without))
            inserted += len(without)
        return inserted

    def exposure_counts(self, conn: Connection, name: str) -> list[Any]:
        """Per (unit, variant): first exposure time and number of exposures."""
        t = exposures_table
        query = (
            sa.select(
                t.c.unit_id,
                t.c.variant,
                sa.func.min(t.c.ts).label("first_ts"),
                sa.func.count().label("exposures"),
            )
            .where(t.c.experiment == name)
            .group_by(t.c.unit_id, t.c.variant)
        )
        return list(conn.execute(query))

    def unit_event_sums(
        self, conn: Connection, name: str, event_types: Iterable[str], pre_window: float
    ) -> list[Any]:
        """Per (unit, event type): sum and count of values after / before its first exposure."""
        t, e = exposures_table, events_table
        first = (
            sa.select(t.c.unit_id, sa.func.min(t.c.ts).label("first_ts"))
            .where(t.c.experiment == name)
            .group_by(t.c.unit_id)
            .subquery()
        )
        post = e.c.ts >= first.c.first_ts
        pre = sa.and_(e.c.ts < first.c.first_ts, e.c.ts >= first.c.first_ts - pre_window)
        zero = sa.literal(0.0)
        query = (
            sa.select(
                first.c.unit_id,
                e.c.event_type,
                sa.func.sum(sa.case((post, e.c.value), else_=zero)).label("post_sum"),
                sa.func.sum(sa.case((post, 1), else_=0)).label("post_count"),
                sa.func.sum(sa.case((pre, e.c.value), else_=zero)).label("pre_sum"),
                sa.func.sum(sa.case((pre, 1), else_=0)).label("pre_count"),
            )
            .select_from(first.join(e, e.c.unit_id == first.c.unit_id))
            .where(e.c.event_type.in_(list(event_types)))
            .group_by(first.c.unit_id, e.c.event_type)
        )
        return list(conn.execute(query))

    def unit_events(self, conn: Connection, name: str, event_types: Iterable[str]) -> list[Any]:
        """Every event of ``event_types`` of ``name``'s units at or after their first exposure:
        ``(unit_id, event_type, value, ts)`` in time order (the history's raw material)."""
        t, e = exposures_table, events_table
        first = (
            sa.select(t.c.unit_id, sa.func.min(t.c.ts).label("first_ts"))
            .where(t.c.experiment == name)
            .group_by(t.c.unit_id)
            .subquery()
        )
        query = (
            sa.select(e.c.unit_id, e.c.event_type, e.c.value, e.c.ts)
            .select_from(first.join(e, e.c.unit_id == first.c.unit_id))
            .where(e.c.event_type.in_(list(event_types)), e.c.ts >= first.c.first_ts)
            .order_by(e.c.ts, e.c.id)
        )
        return list(conn.execute(query))

    def pending_rewards(self, conn: Connection, name: str, limit: int) -> list[Any]:
        e = events_table
        query = (
            sa.select(e.c.id, e.c.unit_id, e.c.value, e.c.ts, e.c.decision_id)
            .where(e.c.experiment == name, e.c.applied == sa.false())
            .order_by(e.c.id)
            .limit(limit)
        )
        return list(conn.execute(query))

    def exposures_by_decision(
        self, conn: Connection, decision_ids: Sequence[str]
    ) -> dict[str, Any]:
        t = exposures_table
        out: dict[str, Any] = {}
        for start in range(0, len(decision_ids), 500):
            chunk = list(decision_ids[start : start + 500])
            for r in conn.execute(sa.select(t).where(t.c.decision_id.in_(chunk))):
                out[r.decision_id] = r
        return out

    def latest_exposures(
        self, conn: Connection, name: str, unit_ids: Sequence[str]
    ) -> dict[str, list[Any]]:
        """Every exposure of the given units in ``name``, per unit, oldest first."""
        t = exposures_table
        out: dict[str, list[Any]] = {}
        for start in range(0, len(unit_ids), 500):
            chunk = list(unit_ids[start : start + 500])
            query = (
                sa.select(t)
                .where(t.c.experiment == name, t.c.unit_id.in_(chunk))
                .order_by(t.c.ts, t.c.id)
            )
            for r in conn.execute(query):
                out.setdefault(r.unit_id, []).append(r)
        return out

    def mark_applied(self, conn: Connection, event_ids: Sequence[int]) -> None:
        e = events_table
        for start in range(0, len(event_ids), 500):
            chunk = list(event_ids[start : start + 500])
            conn.execute(sa.update(e).where(e.c.id.in_(chunk)).values(applied=True))

    def count_pending(self, conn: Connection, name: str) -> int:
        e = events_table
        query = sa.select(sa.func.count()).where(e.c.experiment == name, e.c.applied == sa.false())
        return int(conn.execute(query).scalar_one())

    def logged_decisions(self, conn: Connection, name: str) -> list[Any]:
        """Exposures of ``name`` with the sum of the rewards logged against each decision id
        (rewards logged by unit only are not tied to one decision and are left out)."""
        t, e = exposures_table, events_table
        rewards = (
            sa.select(e.c.decision_id, sa.func.sum(e.c.value).label("reward"))
            .where(e.c.experiment == name, e.c.decision_id.is_not(None))
            .group_by(e.c.decision_id)
            .subquery()
        )
        query = (
            sa.select(
                t.c.decision_id,
                t.c.unit_id,
                t.c.variant,
                t.c.propensity,
                t.c.context,
                rewards.c.reward,
            )
            .select_from(t.join(rewards, rewards.c.decision_id == t.c.decision_id))
            .where(t.c.experiment == name)
            .order_by(t.c.id)
        )
        return list(conn.execute(query))

    # -- bandit state ---------------------------------------------------------------------------

    def get_bandit_state(self, conn: Connection, name: str, *, for_update: bool = False) -> Any:
        query = sa.select(bandit_table).where(bandit_table.c.experiment == name)
        if for_update and conn.dialect.name == "postgresql":
            query = query.with_for_update()
        return conn.execute(query).first()

    def put_bandit_state(
        self, conn: Connection, name: str, version: int, state: dict[str, Any], *, insert: bool
    ) -> None:
        values = {"version": version, "state": json.dumps(state), "updated_at": datetime.now(UTC)}
        if insert:
            conn.execute(sa.insert(bandit_table).values(experiment=name, **values))
        else:
            conn.execute(
                sa.update(bandit_table).where(bandit_table.c.experiment == name).values(**values)
            )

    def add_bandit_history(
        self,
        conn: Connection,
        name: str,
        version: int,
        probabilities: Sequence[float],
        pulls: Sequence[float],
        *,
        contextual: bool,
        ts: float,
    ) -> None:
        """Record the allocation of state ``version`` (thinning old rows, see
        ``BANDIT_HISTORY_ROWS``)."""
        h = bandit_history_table
        conn.execute(
            sa.insert(h).values(
                experiment=name,
                version=int(version),
                ts=float(ts),
                probabilities=json.dumps([float(p) for p in probabilities]),
                pulls=json.dumps([float(n) for n in pulls]),
                contextual=bool(contextual),
            )
        )
        count = conn.execute(sa.select(sa.func.count()).where(h.c.experiment == name)).scalar_one()
        if int(count) <= BANDIT_HISTORY_ROWS:
            return
        ids = list(
            conn.execute(
                sa.select(h.c.id).where(h.c.experiment == name).order_by(h.c.id).limit(int(count))
            ).scalars()
        )
        older = ids[1 : len(ids) // 2]  # the very first row (the start) always stays
        drop = older[::2]
        for start in range(0, len(drop), 500):
            conn.execute(sa.delete(h).where(h.c.id.in_(drop[start : start + 500])))

    def bandit_history(self, conn: Connection, name: str) -> list[Any]:
        """The recorded allocations of bandit ``name``, oldest first."""
        h = bandit_history_table
        query = sa.select(h).where(h.c.experiment == name).order_by(h.c.id)
        return list(conn.execute(query))


__all__ = ["BANDIT_HISTORY_ROWS", "ExperimentRow", "ExperimentStore"]
