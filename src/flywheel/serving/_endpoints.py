"""Named endpoints: weighted version splits, sticky routing, shadow traffic, canary rollouts.

An endpoint maps a name to versions of one model. Its state lives in the metadata store
(``serving_endpoints``) and every change appends to ``serving_events`` in the same transaction,
so replicas notice a change by polling one ``max(id)`` and converge within a poll interval.
Changes use optimistic concurrency on ``revision``: of two replicas that advance the same canary,
one wins and the other sees ``EndpointConflict`` (and simply reloads). Every version an endpoint
routes to, canaries or mirrors gets a lineage edge ``model_version -> endpoint`` in the same
transaction (``flywheel.lineage``), so a version's downstream reaches the endpoints it served.

Routing (``Endpoint.choose``) is a pure function: with a routing key the choice is
``flywheel.experiments.weighted_choice(endpoint salt, key, weights)`` (sticky: the same key
always gets the same version while weights are unchanged, and few keys move when they change);
without one it is random in proportion to the weights.
"""

from __future__ import annotations

import builtins
import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from flywheel.experiments import weighted_choice
from flywheel.lineage import Node, record_edge
from flywheel.metadata import Database
from flywheel.serving._canary import CanaryPlan
from flywheel.serving._errors import EndpointConflict, ServingError, UnknownModel

_endpoints = sa.table(
    "serving_endpoints",
    sa.column("name", sa.String),
    sa.column("model", sa.String),
    sa.column("spec", sa.Text),
    sa.column("revision", sa.Integer),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
_events = sa.table(
    "serving_events",
    sa.column("id", sa.Integer),
    sa.column("endpoint", sa.String),
    sa.column("kind", sa.String),
    sa.column("actor", sa.String),
    sa.column("detail", sa.Text),
    sa.column("at", sa.DateTime(timezone=True)),
)
_stats = sa.table(
    "serving_canary_stats",
    sa.column("endpoint", sa.String),
    sa.column("rollout_id", sa.String),
    sa.column("step", sa.Integer),
    sa.column("replica", sa.String),
    sa.column("requests", sa.Integer),
    sa.column("errors", sa.Integer),
    sa.column("latency", sa.Text),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"


@dataclass(frozen=True)
class Route:
    """A version of the endpoint's model and its traffic weight (any positive scale)."""

    version: int
    weight: float


@dataclass(frozen=True)
class Shadow:
    """Mirror ``share`` (0..1) of requests to ``version``; its answers are recorded only."""

    version: int
    share: float


@dataclass(frozen=True)
class Endpoint:
    """One named endpoint's state (immutable; changes produce a new revision)."""

    name: str
    model: str
    routes: tuple[Route, ...]
    shadow: Shadow | None = None
    canary: CanaryPlan | None = None
    revision: int = 0
    updated_at: datetime | None = None

    def effective_routes(self) -> tuple[Route, ...]:
        """The routes traffic follows now: a running (or paused) canary splits baseline and
        candidate."""
        plan = self.canary
        if plan is not None and plan.active:
            w = plan.weight
            routes = [Route(plan.candidate, float(w))]
            if w < 100:
                routes.insert(0, Route(plan.baseline, float(100 - w)))
            return tuple(routes)
        return self.routes

    @property
    def primary_version(self) -> int:
        """The version with the largest share (reported in metadata)."""
        return max(self.effective_routes(), key=lambda r: r.weight).version

    def versions(self) -> set[int]:
        out = {r.version for r in self.effective_routes()}
        if self.shadow is not None:
            out.add(self.shadow.version)
        return out

    def choose(self, key: str | None, rng: random.Random | None = None) -> int:
        """The version that serves a request with routing ``key`` (None: random by weight)."""
        routes = self.effective_routes()
        if len(routes) == 1:
            return routes[0].version
        if key:
            salt = f"serving:{self.name}"
            if self.canary is not None:
                salt += f":{self.canary.rollout_id}"
            return int(weighted_choice(salt, key, [(str(r.version), r.weight) for r in routes]))
        pick = (rng or random).random() * sum(r.weight for r in routes)
        for r in routes:
            pick -= r.weight
            if pick < 0:
                return r.version
        return routes[-1].version

    def spec_dict(self) -> dict[str, Any]:
        return {
            "routes": [{"version": r.version, "weight": r.weight} for r in self.routes],
            "shadow": None
            if self.shadow is None
            else {"version": self.shadow.version, "share": self.shadow.share},
            "canary": None if self.canary is None else self.canary.to_dict(),
        }

    def to_dict(self) -> dict[str, Any]:
        """The endpoint as the HTTP API and the CLI show it."""
        return {
            "name": self.name,
            "model": self.model,
            **self.spec_dict(),
            "effective_routes": [
                {"version": r.version, "weight": r.weight} for r in self.effective_routes()
            ],
            "revision": self.revision,
            "updated_at": self.updated_at.isoformat() if self.updated_at else None,
        }

    @classmethod
    def from_row(cls, row: Any) -> Endpoint:
        spec = orjson.loads(row.spec)
        shadow = spec.get("shadow")
        canary = spec.get("canary")
        return cls(
            name=row.name,
            model=row.model,
            routes=tuple(Route(int(r["version"]), float(r["weight"])) for r in spec["routes"]),
            shadow=None if not shadow else Shadow(int(shadow["version"]), float(shadow["share"])),
            canary=None if not canary else CanaryPlan.from_dict(canary),
            revision=int(row.revision),
            updated_at=row.updated_at,
        )


def validate_endpoint(ep: Endpoint) -> None:
    """Raise ``ServingError`` naming the field when the endpoint's spec is unusable."""
    import re

    if not re.match(NAME_PATTERN, ep.name):
        raise ServingError(f"endpoint name {ep.name!r} must match {NAME_PATTERN}")
    if not ep.model:
        raise ServingError(f"endpoint {ep.name!r}: 'model' is required")
    if not ep.routes:
        raise ServingError(f"endpoint {ep.name!r}: 'routes' needs at least one version")
    seen: set[int] = set()
    for r in ep.routes:
        if r.version < 1:
            raise ServingError(f"endpoint {ep.name!r}: version {r.version} must be >= 1")
        if not (r.weight >= 0) or r.weight == float("inf"):
            raise ServingError(f"endpoint {ep.name!r}: weight of v{r.version} must be >= 0")
        if r.version in seen:
            raise ServingError(f"endpoint {ep.name!r}: version {r.version} is listed twice")
        seen.add(r.version)
    if sum(r.weight for r in ep.routes) <= 0:
        raise ServingError(f"endpoint {ep.name!r}: the weights must not all be 0")
    if ep.shadow is not None and not (0.0 < ep.shadow.share <= 1.0):
        raise ServingError(f"endpoint {ep.name!r}: shadow share must be in (0, 1]")


@dataclass
class EndpointEvent:
    id: int
    endpoint: str
    kind: str
    actor: str
    detail: dict[str, Any]
    at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "endpoint": self.endpoint,
            "kind": self.kind,
            "actor": self.actor,
            "detail": self.detail,
            "at": self.at.isoformat(),
        }


@dataclass
class CanaryCounts:
    """One replica's running totals for a rollout step (flushed to the store)."""

    requests: int = 0
    errors: int = 0
    latency: list[int] = field(default_factory=list)


class EndpointStore:
    """Endpoints, their events and canary statistics in the metadata store."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reads -----------------------------------------------------------------------------------

    def list(self) -> list[Endpoint]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(_endpoints).order_by(_endpoints.c.name)).all()
        return [Endpoint.from_row(r) for r in rows]

    def get(self, name: str) -> Endpoint:
        with self.db.read() as conn:
            row = conn.execute(sa.select(_endpoints).where(_endpoints.c.name == name)).first()
        if row is None:
            raise UnknownModel(f"endpoint {name!r} does not exist")
        return Endpoint.from_row(row)

    def find(self, name: str) -> Endpoint | None:
        try:
            return self.get(name)
        except UnknownModel:
            return None

    def last_event_id(self) -> int:
        with self.db.read() as conn:
            value = conn.execute(sa.select(sa.func.max(_events.c.id))).scalar()
        return int(value or 0)

    def events(
        self, name: str | None = None, since_id: int = 0, limit: int = 200
    ) -> builtins.list[EndpointEvent]:
        query = (
            sa.select(_events).where(_events.c.id > since_id).order_by(_events.c.id).limit(limit)
        )
        if name is not None:
            query = query.where(_events.c.endpoint == name)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
        return [
            EndpointEvent(r.id, r.endpoint, r.kind, r.actor, orjson.loads(r.detail), r.at)
            for r in rows
        ]

    # -- writes ----------------------------------------------------------------------------------

    def _event(
        self, conn: sa.Connection, endpoint: str, kind: str, actor: str, detail: dict[str, Any]
    ) -> None:
        conn.execute(
            _events.insert().values(
                endpoint=endpoint,
                kind=kind,
                actor=actor or "",
                detail=orjson.dumps(detail).decode(),
                at=datetime.now(UTC),
            )
        )

    def put(
        self,
        ep: Endpoint,
        *,
        kind: str = "update",
        actor: str = "",
        expect_revision: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> Endpoint:
        """Create or replace ``ep`` (revision + 1) and record an event, atomically.

        Raises:
            EndpointConflict: ``expect_revision`` is given and the stored revision differs.
        """
        validate_endpoint(ep)
        now = datetime.now(UTC)
        spec = orjson.dumps(ep.spec_dict()).decode()
        with self.db.write() as conn:
            row = conn.execute(
                sa.select(_endpoints.c.revision).where(_endpoints.c.name == ep.name)
            ).first()
            current = None if row is None else int(row.revision)
            if expect_revision is not None and current != expect_revision:
                raise EndpointConflict(
                    f"endpoint {ep.name!r} is at revision {current}, not {expect_revision}; "
                    "it changed concurrently"
                )
            if current is None:
                conn.execute(
                    _endpoints.insert().values(
                        name=ep.name,
                        model=ep.model,
                        spec=spec,
                        revision=1,
                        created_at=now,
                        updated_at=now,
                    )
                )
                revision = 1
            else:
                result = conn.execute(
                    _endpoints.update()
                    .where(_endpoints.c.name == ep.name, _endpoints.c.revision == current)
                    .values(model=ep.model, spec=spec, revision=current + 1, updated_at=now)
                )
                if result.rowcount != 1:
                    raise EndpointConflict(f"endpoint {ep.name!r} changed concurrently")
                revision = current + 1
            record_lineage(conn, ep)
            self._event(
                conn,
                ep.name,
                kind,
                actor,
                {**(detail or {}), **ep.spec_dict(), "revision": revision},
            )
        return replace(ep, revision=revision, updated_at=now)

    def delete(self, name: str, actor: str = "") -> None:
        with self.db.write() as conn:
            result = conn.execute(_endpoints.delete().where(_endpoints.c.name == name))
            if result.rowcount == 0:
                raise UnknownModel(f"endpoint {name!r} does not exist")
            conn.execute(_stats.delete().where(_stats.c.endpoint == name))
            self._event(conn, name, "delete", actor, {})

    def record_event(
        self, endpoint: str, kind: str, detail: dict[str, Any], actor: str = ""
    ) -> None:
        """Append an event that changes no state (e.g. a drift alert)."""
        with self.db.write() as conn:
            self._event(conn, endpoint, kind, actor, detail)

    # -- canary statistics -----------------------------------------------------------------------

    def flush_canary_counts(
        self, replica: str, counts: dict[tuple[str, str, int], CanaryCounts]
    ) -> None:
        """Store this replica's running totals (replacing its previous rows)."""
        if not counts:
            return
        now = datetime.now(UTC)
        with self.db.write() as conn:
            for (endpoint, rollout_id, step), c in counts.items():
                key = (
                    (_stats.c.endpoint == endpoint)
                    & (_stats.c.rollout_id == rollout_id)
                    & (_stats.c.step == step)
                    & (_stats.c.replica == replica)
                )
                values = {
                    "requests": c.requests,
                    "errors": c.errors,
                    "latency": orjson.dumps(c.latency).decode(),
                    "updated_at": now,
                }
                result = conn.execute(_stats.update().where(key).values(**values))
                if result.rowcount == 0:
                    conn.execute(
                        _stats.insert().values(
                            endpoint=endpoint,
                            rollout_id=rollout_id,
                            step=step,
                            replica=replica,
                            **values,
                        )
                    )

    def canary_totals(
        self, endpoint: str, rollout_id: str, step: int
    ) -> tuple[int, int, builtins.list[builtins.list[int]]]:
        """(requests, errors, per-replica latency counts) summed over replicas."""
        with self.db.read() as conn:
            rows = conn.execute(
                sa.select(_stats.c.requests, _stats.c.errors, _stats.c.latency).where(
                    _stats.c.endpoint == endpoint,
                    _stats.c.rollout_id == rollout_id,
                    _stats.c.step == step,
                )
            ).all()
        return (
            sum(r.requests for r in rows),
            sum(r.errors for r in rows),
            [orjson.loads(r.latency) for r in rows],
        )


def record_lineage(conn: sa.Connection, ep: Endpoint) -> None:
    """Edges ``model_version:MODEL/V -> endpoint:NAME`` for every version ``ep`` sends traffic to
    (relation ``serves``) or mirrors (``shadows``); recording an edge twice is a no-op."""
    target = Node("endpoint", ep.name)
    routed = {r.version for r in ep.effective_routes()} | {r.version for r in ep.routes}
    for version in sorted(routed):
        record_edge(conn, Node("model_version", f"{ep.model}/{version}"), target, "serves")
    if ep.shadow is not None and ep.shadow.version not in routed:
        record_edge(
            conn, Node("model_version", f"{ep.model}/{ep.shadow.version}"), target, "shadows"
        )


def new_rollout_id() -> str:
    return uuid.uuid4().hex[:12]


__all__ = [
    "CanaryCounts",
    "Endpoint",
    "EndpointEvent",
    "EndpointStore",
    "Route",
    "Shadow",
    "new_rollout_id",
    "record_lineage",
    "validate_endpoint",
]
