"""The catalog: definitions stored in the metadata store, planned and applied like Terraform.

``plan(objects)`` compares the desired definitions with the catalog and says what would be
added, changed (compatible, applied in place) and removed; a breaking change (a dtype changed,
a field removed, other entities, other aggregations) is refused with the reasons and the way
out: declare the view as ``name@v{next}``, and both versions stay readable. ``apply`` writes the
plan in one transaction, records every change in ``fs_changes`` and the lineage edges
``data_source/event_stream -> feature_view -> feature_service``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from flywheel.features._definitions import (
    Definition,
    Entity,
    EventStream,
    FeatureService,
    FeatureView,
    OnDemandFeatureView,
    StreamFeatureView,
)
from flywheel.features._errors import BreakingChangeError, FeatureNotFound, FeatureStoreError
from flywheel.lineage import Node, record_edge
from flywheel.metadata import Database

objects_t = sa.table(
    "fs_objects",
    sa.column("kind", sa.String),
    sa.column("name", sa.String),
    sa.column("version", sa.Integer),
    sa.column("spec", sa.Text),
    sa.column("fingerprint", sa.String),
    sa.column("owner", sa.String),
    sa.column("description", sa.Text),
    sa.column("tags", sa.Text),
    sa.column("created_at", sa.DateTime(timezone=True)),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
changes_t = sa.table(
    "fs_changes",
    sa.column("id", sa.Integer),
    sa.column("kind", sa.String),
    sa.column("name", sa.String),
    sa.column("version", sa.Integer),
    sa.column("action", sa.String),
    sa.column("detail", sa.Text),
    sa.column("at", sa.DateTime(timezone=True)),
)

# Apply order: what others refer to goes first.
KIND_ORDER = (
    "entity",
    "event_stream",
    "feature_view",
    "stream_feature_view",
    "on_demand_feature_view",
    "feature_service",
)
VIEW_KINDS = ("feature_view", "stream_feature_view", "on_demand_feature_view")


def dumps(obj: Any) -> str:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()


def fingerprint(spec: dict[str, Any]) -> str:
    return hashlib.sha256(dumps(spec).encode()).hexdigest()


@dataclass(frozen=True)
class CatalogEntry:
    """One stored definition (one version of it)."""

    kind: str
    name: str
    version: int
    spec: dict[str, Any]
    owner: str
    description: str
    tags: dict[str, str]
    created_at: datetime
    updated_at: datetime

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}" if self.kind in VIEW_KINDS[:2] else self.name

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "version": self.version,
            "ref": self.ref,
            "owner": self.owner,
            "description": self.description,
            "tags": self.tags,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
            "spec": self.spec,
        }


@dataclass(frozen=True)
class Change:
    """One line of a plan."""

    action: str  # "add", "change", "remove", "unchanged"
    kind: str
    name: str
    version: int
    details: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        if self.kind in ("feature_view", "stream_feature_view"):
            return f"{self.kind} {self.name}@v{self.version}"
        return f"{self.kind} {self.name}"


@dataclass
class ApplyPlan:
    """What ``apply`` did (or, from ``plan``, would do)."""

    changes: list[Change] = field(default_factory=list)
    applied: bool = False

    @property
    def added(self) -> list[Change]:
        return [c for c in self.changes if c.action == "add"]

    @property
    def changed(self) -> list[Change]:
        return [c for c in self.changes if c.action == "change"]

    @property
    def removed(self) -> list[Change]:
        return [c for c in self.changes if c.action == "remove"]

    @property
    def unchanged(self) -> list[Change]:
        return [c for c in self.changes if c.action == "unchanged"]

    @property
    def has_changes(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def render(self) -> str:
        """Terraform-style text: ``+`` add, ``~`` change in place, ``-`` remove."""
        lines = []
        for c in self.added:
            lines.append(f"  + {c.label}")
        for c in self.changed:
            lines.append(f"  ~ {c.label}")
            lines.extend(f"      {d}" for d in c.details)
        for c in self.removed:
            lines.append(f"  - {c.label}")
        verb = "Applied" if self.applied else "Plan"
        lines.append(
            f"{verb}: {len(self.added)} to add, {len(self.changed)} to change, "
            f"{len(self.removed)} to remove ({len(self.unchanged)} unchanged)."
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        def rows(cs: list[Change]) -> list[dict[str, Any]]:
            return [
                {"kind": c.kind, "name": c.name, "version": c.version, "details": list(c.details)}
                for c in cs
            ]

        return {
            "applied": self.applied,
            "added": rows(self.added),
            "changed": rows(self.changed),
            "removed": rows(self.removed),
            "unchanged": len(self.unchanged),
        }


def _row_to_entry(row: Any) -> CatalogEntry:
    def aware(dt: datetime) -> datetime:
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)

    return CatalogEntry(
        kind=row.kind,
        name=row.name,
        version=row.version,
        spec=orjson.loads(row.spec),
        owner=row.owner,
        description=row.description,
        tags=orjson.loads(row.tags),
        created_at=aware(row.created_at),
        updated_at=aware(row.updated_at),
    )


class Catalog:
    """Read and write definitions in the metadata store (tables ``fs_*``)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reads ------------------------------------------------------------------------------------

    def entries(
        self, kind: str | None = None, conn: sa.Connection | None = None
    ) -> list[CatalogEntry]:
        query = sa.select(objects_t).order_by(
            objects_t.c.kind, objects_t.c.name, objects_t.c.version
        )
        if kind is not None:
            query = query.where(objects_t.c.kind == kind)
        if conn is not None:
            return [_row_to_entry(r) for r in conn.execute(query).all()]
        with self.db.read() as c:
            return [_row_to_entry(r) for r in c.execute(query).all()]

    def history(self, name: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(changes_t).order_by(changes_t.c.id)
        if name is not None:
            query = query.where(changes_t.c.name == name)
        with self.db.read() as conn:
            return [
                {
                    "kind": r.kind,
                    "name": r.name,
                    "version": r.version,
                    "action": r.action,
                    "detail": r.detail,
                    "at": r.at.isoformat(),
                }
                for r in conn.execute(query).all()
            ]

    # -- plan / apply -----------------------------------------------------------------------------

    def plan(self, objects: Sequence[Definition], *, prune: bool = False) -> ApplyPlan:
        """What ``apply`` would do; raises ``BreakingChangeError`` / ``FeatureStoreError``."""
        with self.db.read() as conn:
            plan, _ = self._plan(conn, objects, prune)
        return plan

    def apply(self, objects: Sequence[Definition], *, prune: bool = False) -> ApplyPlan:
        """Apply the definitions in one transaction and return the plan that was applied."""
        now = datetime.now(UTC)
        with self.db.write() as conn:
            plan, specs = self._plan(conn, objects, prune)
            for change in plan.changes:
                key = (change.kind, change.name, change.version)
                if change.action == "add":
                    spec = specs[key]
                    conn.execute(
                        objects_t.insert().values(
                            kind=change.kind,
                            name=change.name,
                            version=change.version,
                            spec=dumps(spec),
                            fingerprint=fingerprint(spec),
                            owner=spec.get("owner", ""),
                            description=spec.get("description", ""),
                            tags=dumps(spec.get("tags", {})),
                            created_at=now,
                            updated_at=now,
                        )
                    )
                elif change.action == "change":
                    spec = specs[key]
                    conn.execute(
                        objects_t.update()
                        .where(
                            objects_t.c.kind == change.kind,
                            objects_t.c.name == change.name,
                            objects_t.c.version == change.version,
                        )
                        .values(
                            spec=dumps(spec),
                            fingerprint=fingerprint(spec),
                            owner=spec.get("owner", ""),
                            description=spec.get("description", ""),
                            tags=dumps(spec.get("tags", {})),
                            updated_at=now,
                        )
                    )
                elif change.action == "remove":
                    conn.execute(
                        objects_t.delete().where(
                            objects_t.c.kind == change.kind, objects_t.c.name == change.name
                        )
                    )
                if change.action != "unchanged":
                    conn.execute(
                        changes_t.insert().values(
                            kind=change.kind,
                            name=change.name,
                            version=change.version,
                            action=change.action,
                            detail="; ".join(change.details),
                            at=now,
                        )
                    )
                if change.action in ("add", "change"):
                    self._record_lineage(conn, change, specs[key])
        plan.applied = True
        return plan

    def _record_lineage(self, conn: sa.Connection, change: Change, spec: dict[str, Any]) -> None:
        if change.kind == "feature_view":
            src = spec["source"]
            view = Node("feature_view", f"{change.name}@v{change.version}")
            record_edge(conn, Node("data_source", src.get("name") or src["path"]), view, "source")
        elif change.kind == "stream_feature_view":
            view = Node("feature_view", f"{change.name}@v{change.version}")
            record_edge(conn, Node("event_stream", spec["stream"]), view, "source")
        elif change.kind == "on_demand_feature_view":
            odfv = Node("feature_view", change.name)
            for ref in spec["sources"]:
                record_edge(conn, Node("feature_view", ref.split(":")[0]), odfv, "input")
        elif change.kind == "feature_service":
            service = Node("feature_service", change.name)
            for view_ref in sorted({r.split(":")[0] for r in spec["features"]}):
                record_edge(conn, Node("feature_view", view_ref), service, "uses")

    def _plan(
        self, conn: sa.Connection, objects: Sequence[Definition], prune: bool
    ) -> tuple[ApplyPlan, dict[tuple[str, str, int], dict[str, Any]]]:
        existing = {(e.kind, e.name, e.version): e for e in self.entries(conn=conn)}
        latest: dict[tuple[str, str], int] = {}
        for kind, name, version in existing:
            latest[(kind, name)] = max(latest.get((kind, name), 0), version)

        desired: dict[tuple[str, str, int], Definition] = {}
        for obj in objects:
            kind = str(getattr(obj, "kind", ""))
            if kind not in KIND_ORDER:
                raise FeatureStoreError(f"cannot apply {obj!r}: not a feature-store definition")
            key = (kind, obj.name, getattr(obj, "version", 1))
            if key in desired and desired[key] is not obj:
                raise FeatureStoreError(f"{kind} {obj.name!r} is defined twice")
            desired[key] = obj
            # A view's stream must be applied too; take it from the view when not listed.
            if isinstance(obj, StreamFeatureView) and obj.source is not None:
                desired.setdefault(("event_stream", obj.source.name, 1), obj.source)

        kinds_by_name: dict[str, set[str]] = {}
        for kind, name, _ in (*existing, *desired):
            if kind in VIEW_KINDS:
                kinds_by_name.setdefault(name, set()).add(kind)
        for name, kinds in kinds_by_name.items():
            if len(kinds) > 1:
                raise FeatureStoreError(
                    f"the name {name!r} is used by several kinds of view: {sorted(kinds)}"
                )

        # Specs (with view schemas merged so that fields keep their stored order).
        specs: dict[tuple[str, str, int], dict[str, Any]] = {}
        plan = ApplyPlan()
        ordered = sorted(
            desired.items(), key=lambda kv: (KIND_ORDER.index(kv[0][0]), kv[0][1], kv[0][2])
        )
        known_entities = {n for (k, n, _) in (*existing, *desired) if k == "entity"}
        known_streams = {n for (k, n, _) in (*existing, *desired) if k == "event_stream"}
        view_schemas: dict[str, list[str]] = {}
        for (k, n, v), e in existing.items():
            if k in VIEW_KINDS:
                view_schemas[f"{n}@v{v}"] = [f["name"] for f in e.spec.get("schema", [])] or [
                    a["name"] for a in e.spec.get("aggregations", [])
                ]
        for (kind, name, version), obj in ordered:
            spec = obj.to_spec()
            if isinstance(obj, FeatureView | StreamFeatureView):
                for ent in obj.entities:
                    if ent not in known_entities:
                        raise FeatureNotFound(
                            f"{kind} {name!r} uses unknown entity {ent!r}; apply it too"
                        )
                view_schemas[f"{name}@v{version}"] = [f.name for f in obj.schema]
            if (
                isinstance(obj, StreamFeatureView)
                and obj.source
                and obj.source.name not in known_streams
            ):
                raise FeatureNotFound(
                    f"stream feature view {name!r}: unknown stream {obj.source.name!r}"
                )
            if isinstance(obj, OnDemandFeatureView):
                view_schemas[name] = [f.name for f in obj.schema]
            old = existing.get((kind, name, version))
            if old is not None and kind == "feature_view":
                spec = _merge_schema(old.spec, spec)
            specs[(kind, name, version)] = spec
        # Services are pinned to view versions (a bare view name means its newest version).
        newest: dict[str, int] = {}
        for kind, name, version in (*existing, *desired):
            if kind in ("feature_view", "stream_feature_view"):
                newest[name] = max(newest.get(name, 0), version)
        for key, spec in specs.items():
            if key[0] == "feature_service":
                spec["features"] = [
                    _pin_ref(r, newest, view_schemas, key[1]) for r in spec["features"]
                ]
            if key[0] == "on_demand_feature_view":
                spec["sources"] = [
                    _pin_ref(r, newest, view_schemas, key[1]) for r in spec["sources"]
                ]

        for key in [k for k, _ in ordered]:
            kind, name, version = key
            spec = specs[key]
            old = existing.get(key)
            if old is None:
                if kind in ("feature_view", "stream_feature_view"):
                    prev = latest.get((kind, name), 0)
                    if prev and version < prev:
                        raise BreakingChangeError(
                            f"{kind} {name}@v{version}: v{prev} exists; versions only go up"
                        )
                plan.changes.append(Change("add", kind, name, version))
                continue
            if fingerprint(old.spec) == fingerprint(spec):
                plan.changes.append(Change("unchanged", kind, name, version))
                continue
            details, breaking = _diff(kind, old.spec, spec)
            if breaking:
                nxt = latest.get((kind, name), version) + 1
                how = (
                    f"; declare it as a new version ('{name}@v{nxt}') to keep both readable"
                    if kind in ("feature_view", "stream_feature_view")
                    else "; give it a new name"
                )
                raise BreakingChangeError(
                    f"{kind} {name}"
                    + (f"@v{version}" if kind in VIEW_KINDS[:2] else "")
                    + " has a breaking change: "
                    + "; ".join(breaking)
                    + how
                )
            plan.changes.append(Change("change", kind, name, version, tuple(details)))

        if prune:
            desired_names = {(k, n) for (k, n, _) in desired}
            removed: set[tuple[str, str]] = set()
            for kind, name, version in sorted(existing):
                if (kind, name) not in desired_names and (kind, name) not in removed:
                    removed.add((kind, name))
                    plan.changes.append(Change("remove", kind, name, version))
        return plan, specs

    def get(self, kind: str | Iterable[str], name: str, version: int | None = None) -> CatalogEntry:
        kinds = [kind] if isinstance(kind, str) else list(kind)
        query = sa.select(objects_t).where(objects_t.c.kind.in_(kinds), objects_t.c.name == name)
        if version is not None:
            query = query.where(objects_t.c.version == version)
        query = query.order_by(objects_t.c.version.desc()).limit(1)
        with self.db.read() as conn:
            row = conn.execute(query).first()
        if row is None:
            what = "/".join(kinds)
            v = f"@v{version}" if version is not None else ""
            raise FeatureNotFound(f"{what} {name}{v} does not exist; run `flywheel features list`")
        return _row_to_entry(row)


def _pin_ref(ref: str, newest: dict[str, int], schemas: dict[str, list[str]], owner: str) -> str:
    view, sep, feat = ref.partition(":")
    if not sep or not feat:
        raise FeatureStoreError(f"{owner!r}: feature reference {ref!r} is not 'view:feature'")
    if "@v" not in view and view in newest:
        view = f"{view}@v{newest[view]}"
    if view not in schemas:
        raise FeatureNotFound(f"{owner!r}: feature reference {ref!r} names an unknown view")
    if feat not in schemas[view]:
        raise FeatureNotFound(f"{owner!r}: view {view!r} has no feature {feat!r}")
    return f"{view}:{feat}"


def _merge_schema(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Keep stored field order; new fields go to the end (so stored online rows stay readable)."""
    new_fields = {f["name"]: f for f in new["schema"]}
    merged = [new_fields[f["name"]] for f in old["schema"] if f["name"] in new_fields]
    merged += [f for f in new["schema"] if f["name"] not in {m["name"] for m in merged}]
    return {**new, "schema": merged}


def _diff(kind: str, old: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(compatible details, breaking reasons) between two specs of one object."""
    details: list[str] = []
    breaking: list[str] = []
    if kind in ("feature_view", "event_stream"):
        old_f = {f["name"]: f for f in old["schema"]}
        new_f = {f["name"]: f for f in new["schema"]}
        for n, f in old_f.items():
            if n not in new_f:
                breaking.append(f"field {n!r} removed")
            elif new_f[n]["dtype"] != f["dtype"]:
                breaking.append(f"field {n!r} dtype {f['dtype']} -> {new_f[n]['dtype']}")
            elif new_f[n].get("description") != f.get("description"):
                details.append(f"field {n!r} description changed")
        for n, f in new_f.items():
            if n not in old_f:
                details.append(f"+ field {n!r} ({f['dtype']})")
    if kind == "entity":
        for k in ("join_key", "dtype"):
            if old[k] != new[k]:
                breaking.append(f"{k} {old[k]!r} -> {new[k]!r}")
    if kind in ("feature_view", "stream_feature_view") and old["entities"] != new["entities"]:
        breaking.append(f"entities {old['entities']} -> {new['entities']}")
    if kind == "stream_feature_view":
        if old["aggregations"] != new["aggregations"]:
            breaking.append("aggregations changed")
        if old["stream"] != new["stream"]:
            breaking.append(f"stream {old['stream']!r} -> {new['stream']!r}")
    if kind == "on_demand_feature_view" and old["schema"] != new["schema"]:
        breaking.append("output schema changed")
    skip = {"schema", "entities", "aggregations", "stream", "join_key", "dtype"}
    for k in sorted(set(old) | set(new)):
        if k in skip or old.get(k) == new.get(k):
            continue
        details.append(f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}")
    return details, breaking


def _short(value: Any) -> str:
    text = dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def definition_from_entry(entry: CatalogEntry, catalog: Catalog) -> Definition:
    """Rebuild the definition object of a catalog entry."""
    if entry.kind == "entity":
        return Entity.from_spec(entry.name, entry.spec)
    if entry.kind == "event_stream":
        return EventStream.from_spec(entry.name, entry.spec)
    if entry.kind == "feature_view":
        return FeatureView.from_spec(entry.name, entry.version, entry.spec)
    if entry.kind == "stream_feature_view":
        stream = EventStream.from_spec(
            entry.spec["stream"], catalog.get("event_stream", entry.spec["stream"]).spec
        )
        return StreamFeatureView.from_spec(entry.name, entry.version, entry.spec, stream)
    if entry.kind == "on_demand_feature_view":
        return OnDemandFeatureView.from_spec(entry.name, entry.spec)
    if entry.kind == "feature_service":
        return FeatureService.from_spec(entry.name, entry.spec)
    raise FeatureStoreError(f"unknown catalog kind {entry.kind!r}")
