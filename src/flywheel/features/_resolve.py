"""Turning feature references (``"view:feature"``, ``"view@v2:feature"``, a FeatureService)
into the views and columns to read, using the catalog. Shared by the offline and online paths.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa

from flywheel.features._catalog import Catalog, definition_from_entry, objects_t
from flywheel.features._definitions import (
    Entity,
    EventStream,
    FeatureService,
    FeatureView,
    OnDemandFeatureView,
    StreamFeatureView,
)
from flywheel.features._errors import FeatureNotFound, FeatureStoreError

FeatureRefs = Sequence[str] | FeatureService | str


@dataclass
class ViewSelection:
    """One view and the features asked of it, in request order."""

    view: FeatureView | StreamFeatureView
    features: list[str] = field(default_factory=list)
    join_keys: tuple[str, ...] = ()
    _positions: dict[str, tuple[int, str]] | None = field(default=None, repr=False)

    @property
    def ref(self) -> str:
        return self.view.ref

    @property
    def positions(self) -> dict[str, tuple[int, str]]:
        """Feature name -> (position in the view's stored values, dtype); computed once."""
        if self._positions is None:
            self._positions = {f.name: (i, f.dtype) for i, f in enumerate(self.view.schema)}
        return self._positions


@dataclass
class Resolved:
    """A request resolved against the catalog."""

    views: list[ViewSelection]
    on_demand: list[tuple[OnDemandFeatureView, list[str]]]
    # Output column per requested ref, in request order.
    outputs: list[tuple[str, str]]  # (ref "view@vN:feat" or "odfv:feat", output name)
    service: str | None = None
    hidden: set[str] = field(default_factory=set)  # ODFV inputs that were not asked for

    @property
    def join_keys(self) -> list[str]:
        keys: list[str] = []
        for v in self.views:
            keys += [k for k in v.join_keys if k not in keys]
        return keys


class Definitions:
    """The catalog as definition objects, cached and refreshed when the catalog changes.

    The check for changes is one cheap query at most every ``refresh_seconds``.
    """

    def __init__(self, catalog: Catalog, refresh_seconds: float = 2.0) -> None:
        self.catalog = catalog
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._checked = 0.0
        self._stamp: tuple[object, ...] | None = None
        self.entities: dict[str, Entity] = {}
        self.streams: dict[str, EventStream] = {}
        self.views: dict[str, FeatureView | StreamFeatureView] = {}  # "name@vN" -> view
        self.newest: dict[str, int] = {}
        self.on_demand: dict[str, OnDemandFeatureView] = {}
        self.services: dict[str, FeatureService] = {}
        self.local_udfs: dict[str, OnDemandFeatureView] = {}
        self._resolved: dict[tuple[str, ...], Resolved] = {}

    def invalidate(self) -> None:
        with self._lock:
            self._stamp = None
            self._checked = 0.0

    def refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.refresh_seconds and self._stamp is not None:
            return
        with self._lock:
            with self.catalog.db.read() as conn:
                stamp = tuple(
                    conn.execute(
                        sa.select(sa.func.count(), sa.func.max(objects_t.c.updated_at))
                    ).one()
                )
            self._checked = now
            if stamp == self._stamp:
                return
            self._load()
            self._stamp = stamp
            self._resolved = {}

    def _load(self) -> None:
        entries = self.catalog.entries()
        entities: dict[str, Entity] = {}
        streams: dict[str, EventStream] = {}
        views: dict[str, FeatureView | StreamFeatureView] = {}
        newest: dict[str, int] = {}
        odfvs: dict[str, OnDemandFeatureView] = {}
        services: dict[str, FeatureService] = {}
        stream_specs = {e.name: e for e in entries if e.kind == "event_stream"}
        for e in entries:
            if e.kind == "entity":
                entities[e.name] = Entity.from_spec(e.name, e.spec)
            elif e.kind == "event_stream":
                streams[e.name] = EventStream.from_spec(e.name, e.spec)
        for e in entries:
            if e.kind == "feature_view":
                views[f"{e.name}@v{e.version}"] = FeatureView.from_spec(e.name, e.version, e.spec)
            elif e.kind == "stream_feature_view":
                stream = streams.get(e.spec["stream"])
                if stream is None and e.spec["stream"] in stream_specs:  # pragma: no cover
                    stream = EventStream.from_spec(
                        e.spec["stream"], stream_specs[e.spec["stream"]].spec
                    )
                if stream is None:
                    continue
                views[f"{e.name}@v{e.version}"] = StreamFeatureView.from_spec(
                    e.name, e.version, e.spec, stream
                )
            elif e.kind == "on_demand_feature_view":
                local = self.local_udfs.get(e.name)
                if local is not None and local.udf_source == e.spec.get("udf_source"):
                    odfv = local
                    odfv.sources = list(e.spec["sources"])
                else:
                    odfv = definition_from_entry(e, self.catalog)  # type: ignore[assignment]
                odfvs[e.name] = odfv
            elif e.kind == "feature_service":
                services[e.name] = FeatureService.from_spec(e.name, e.spec)
            if e.kind in ("feature_view", "stream_feature_view"):
                newest[e.name] = max(newest.get(e.name, 0), e.version)
        self.entities, self.streams, self.views = entities, streams, views
        self.newest, self.on_demand, self.services = newest, odfvs, services

    def view(self, name: str) -> FeatureView | StreamFeatureView:
        """A view by ``name`` (newest version) or ``name@vN``."""
        self.refresh()
        ref = name if "@v" in name else f"{name}@v{self.newest.get(name, 0)}"
        if ref not in self.views:
            raise FeatureNotFound(
                f"feature view {name!r} does not exist; run `flywheel features list`"
            )
        return self.views[ref]

    def join_keys(self, view: FeatureView | StreamFeatureView) -> tuple[str, ...]:
        keys = []
        for ent in view.entities:
            if ent not in self.entities:
                raise FeatureNotFound(f"view {view.ref!r} uses unknown entity {ent!r}")
            keys.append(self.entities[ent].join_key)
        return tuple(keys)

    def resolve(self, features: FeatureRefs, *, full_feature_names: bool = False) -> Resolved:
        """Resolve a request; cached per distinct request until the catalog changes."""
        self.refresh()
        service: str | None = None
        if isinstance(features, FeatureService):
            service = features.name
            if service not in self.services:
                raise FeatureNotFound(f"feature service {service!r} is not applied")
            refs = list(self.services[service].features)
        elif isinstance(features, str):
            if features not in self.services:
                raise FeatureNotFound(
                    f"feature service {features!r} does not exist (pass a list for single features)"
                )
            service = features
            refs = list(self.services[features].features)
        else:
            refs = list(features)
        cache_key = (str(full_feature_names), service or "", *refs)
        hit = self._resolved.get(cache_key)
        if hit is not None:
            return hit
        if not refs:
            raise FeatureStoreError("no features requested")
        selections: dict[str, ViewSelection] = {}
        odfv_sel: dict[str, list[str]] = {}
        outputs: list[tuple[str, str]] = []
        hidden: set[str] = set()

        def select(view_name: str, feat: str, ref: str, visible: bool) -> str:
            view = self.view(view_name)
            names = [f.name for f in view.schema]
            if feat not in names:
                raise FeatureNotFound(f"feature {ref!r}: view {view.ref!r} has no feature {feat!r}")
            sel = selections.setdefault(view.ref, ViewSelection(view, [], self.join_keys(view)))
            if feat not in sel.features:
                sel.features.append(feat)
            out = f"{view.name}__{feat}" if full_feature_names else feat
            if not visible:
                hidden.add(out)
            return out

        for ref in refs:
            if not isinstance(ref, str):
                raise FeatureStoreError(
                    f"feature reference {ref!r} must be a string 'view:feature'"
                )
            view_name, sep, feat = ref.partition(":")
            if not sep or not feat:
                raise FeatureStoreError(f"feature reference {ref!r} is not 'view:feature'")
            if view_name in self.on_demand:
                odfv = self.on_demand[view_name]
                if feat not in [f.name for f in odfv.schema]:
                    raise FeatureNotFound(f"on-demand view {view_name!r} has no feature {feat!r}")
                odfv_sel.setdefault(view_name, []).append(feat)
                out = f"{view_name}__{feat}" if full_feature_names else feat
                outputs.append((ref, out))
                continue
            out = select(view_name, feat, ref, True)
            outputs.append((f"{self.view(view_name).ref}:{feat}", out))
        visible = {o for _, o in outputs}
        for name in odfv_sel:
            for src in self.on_demand[name].sources:
                v, _, f = src.partition(":")
                out = f"{self.view(v).name}__{f}" if full_feature_names else f
                if out not in visible:
                    select(v, f, src, False)
        resolved = Resolved(
            views=list(selections.values()),
            on_demand=[(self.on_demand[n], fs) for n, fs in odfv_sel.items()],
            outputs=outputs,
            service=service,
            hidden=hidden - visible,
        )
        self._resolved[cache_key] = resolved
        return resolved
