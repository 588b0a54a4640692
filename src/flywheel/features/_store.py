"""``FeatureStore``: the thin façade over the catalog, offline, online and streaming parts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from flywheel.events import EventLog, open_event_log
from flywheel.features._catalog import ApplyPlan, Catalog, CatalogEntry
from flywheel.features._datasets import (
    TrainingDataset,
    list_training_datasets,
    load_training_dataset,
    save_training_dataset,
)
from flywheel.features._definitions import (
    Definition,
    FeatureService,
    FeatureView,
    OnDemandFeatureView,
    StreamFeatureView,
)
from flywheel.features._errors import FeatureNotFound, FeatureStoreError
from flywheel.features._materialize import (
    EPOCH,
    MaterializeReport,
    Progress,
    run_materialization,
    watermarks,
)
from flywheel.features._metrics import metrics
from flywheel.features._offline import (
    AggregationQuery,
    ViewQuery,
    point_in_time_join,
)
from flywheel.features._online import OnlineStore, open_online_store
from flywheel.features._online_read import EntityRows, read_online
from flywheel.features._push import encode_events
from flywheel.features._resolve import Definitions, FeatureRefs, Resolved
from flywheel.features._response import OnlineResponse
from flywheel.features._stream import StreamProcessor
from flywheel.lineage import Node, lineage
from flywheel.project import Project


@dataclass(frozen=True)
class PushResult:
    """What ``push`` appended: the stream, how many events, and their log ids."""

    stream: str
    count: int
    ids: list[str]


class FeatureStore:
    """The feature store of one project.

    Args:
        project_or_path: a ``Project``, or a folder / ``flywheel.yaml`` path (``"."`` reads
            ``./flywheel.yaml``). A path is opened and its metadata schema brought up to date.
    """

    def __init__(self, project_or_path: Project | str | Path = ".") -> None:
        if isinstance(project_or_path, Project):
            self.project = project_or_path
        else:
            self.project = Project.open(project_or_path)
            self.project.prepare()
        self.catalog = Catalog(self.project.db)
        self.definitions = Definitions(self.catalog)
        self._online: Any = None
        self._event_log: Any = None

    # -- locations --------------------------------------------------------------------------------

    @property
    def root(self) -> Path:
        return self.project.root

    @property
    def offline_root(self) -> Path:
        return self.project.config.offline_store_path

    def stream_archive(self, view_ref: str) -> Path:
        """Where processors archive the events applied to a stream view (Parquet, for offline)."""
        return self.offline_root / "streams" / view_ref.replace("@", "__")

    def source_path(self, view: FeatureView) -> Path:
        assert view.source is not None
        return self.project.config.resolve_path(view.source.path)

    # -- catalog ----------------------------------------------------------------------------------

    def apply(self, objects: Sequence[Definition], *, prune: bool = False) -> ApplyPlan:
        """Apply definitions; returns the plan (added / changed / removed).

        Compatible changes (new fields, docs, TTL, source) are applied in place; breaking ones
        raise ``BreakingChangeError`` unless the view is declared as a new version (``name@v2``).
        With ``prune=True`` the objects are the whole desired state and others are removed.
        """
        for obj in objects:
            if isinstance(obj, OnDemandFeatureView):
                self.definitions.local_udfs[obj.name] = obj
        plan = self.catalog.apply(list(objects), prune=prune)
        self.definitions.invalidate()
        return plan

    def plan(self, objects: Sequence[Definition], *, prune: bool = False) -> ApplyPlan:
        """What ``apply`` would do, without doing it."""
        return self.catalog.plan(list(objects), prune=prune)

    def list_definitions(self, kind: str | None = None) -> list[CatalogEntry]:
        """Catalog entries (every version), optionally of one kind."""
        return self.catalog.entries(kind)

    def get_feature_view(self, name: str) -> FeatureView | StreamFeatureView:
        """A view by ``name`` (newest version) or ``name@vN``."""
        return self.definitions.view(name)

    def get_feature_service(self, name: str) -> FeatureService:
        self.definitions.refresh()
        if name not in self.definitions.services:
            raise FeatureNotFound(f"feature service {name!r} does not exist")
        return self.definitions.services[name]

    def describe(self, name: str) -> dict[str, Any]:
        """Schema, versions, change history, freshness and lineage of any catalog object."""
        entries = [e for e in self.catalog.entries() if e.name == name]
        if not entries:
            raise FeatureNotFound(f"{name!r} is not in the catalog; run `flywheel features list`")
        marks = watermarks(self.project.db)
        out: dict[str, Any] = {"name": name, "kind": entries[0].kind, "versions": []}
        for e in entries:
            item = e.to_dict()
            if e.kind in ("feature_view", "stream_feature_view"):
                mark = marks.get(e.ref)
                item["freshness"] = (
                    {"materialized_until": mark[0].isoformat(), "rows": mark[1]} if mark else None
                )
                node = Node("feature_view", e.ref)
            elif e.kind == "on_demand_feature_view":
                node = Node("feature_view", e.name)
            elif e.kind == "feature_service":
                node = Node("feature_service", e.name)
            elif e.kind == "event_stream":
                node = Node("event_stream", e.name)
            else:
                node = None
            if node is not None:
                item["lineage"] = lineage(self.project.db, node).to_dict()
            out["versions"].append(item)
        out["history"] = self.catalog.history(name)
        return out

    # -- offline ----------------------------------------------------------------------------------

    def _queries(
        self, resolved: Resolved, full: bool
    ) -> tuple[list[ViewQuery], list[AggregationQuery]]:
        views: list[ViewQuery] = []
        aggs: list[AggregationQuery] = []
        for sel in resolved.views:
            view = sel.view

            def out(feat: str, view: FeatureView | StreamFeatureView = view) -> str:
                return f"{view.name}__{feat}" if full else feat

            if isinstance(view, FeatureView):
                assert view.source is not None
                views.append(
                    ViewQuery(
                        ref=view.ref,
                        path=self.source_path(view),
                        join_keys=sel.join_keys,
                        timestamp_field=view.source.timestamp_field,
                        created_timestamp_field=view.source.created_timestamp_field,
                        features=tuple((f, out(f)) for f in sel.features),
                        ttl_seconds=view.ttl,
                    )
                )
            else:
                assert view.source is not None
                by_name = {a.feature_name: a for a in view.aggregations}
                aggs.append(
                    AggregationQuery(
                        ref=view.ref,
                        path=self.stream_archive(view.ref),
                        join_keys=sel.join_keys,
                        aggregations=tuple(
                            {**by_name[f].to_spec(), "output": out(f)} for f in sel.features
                        ),
                    )
                )
        return views, aggs

    def get_historical_features(
        self,
        entity_df: pd.DataFrame,
        features: FeatureRefs,
        *,
        full_feature_names: bool = False,
    ) -> pd.DataFrame:
        """Point-in-time correct features for each row of ``entity_df``.

        ``entity_df`` holds the join keys and an ``event_timestamp`` column. Every row is kept
        (in order); a value is the latest with event time <= the row's time and within the view's
        TTL, else null. ``features`` is a list of ``"view:feature"`` refs or a ``FeatureService``.
        """
        df, _ = self._historical(entity_df, features, full_feature_names)
        return df

    def _historical(
        self, entity_df: pd.DataFrame, features: FeatureRefs, full: bool
    ) -> tuple[pd.DataFrame, str]:
        resolved = self.definitions.resolve(features, full_feature_names=full)
        views, aggs = self._queries(resolved, full)
        df, sql = point_in_time_join(entity_df, views, aggs)
        if resolved.on_demand:
            from flywheel.features._ondemand import apply_on_demand

            df = apply_on_demand(df, resolved, full)
        if resolved.hidden:
            df = df.drop(columns=[c for c in resolved.hidden if c in df.columns])
        return df, sql

    def create_training_dataset(
        self,
        name: str,
        entity_df: pd.DataFrame,
        features: FeatureRefs,
        *,
        full_feature_names: bool = False,
    ) -> TrainingDataset:
        """Run the point-in-time join and save it as an immutable, catalogued dataset."""
        df, sql = self._historical(entity_df, features, full_feature_names)
        resolved = self.definitions.resolve(features, full_feature_names=full_feature_names)
        views = [v.ref for v in resolved.views] + [o.name for o, _ in resolved.on_demand]
        return save_training_dataset(
            self.project.db,
            self.offline_root / "datasets",
            name,
            df,
            features=[ref for ref, _ in resolved.outputs],
            views=views,
            query=sql,
            feature_service=resolved.service,
        )

    def get_training_dataset(self, name: str) -> TrainingDataset:
        """A saved training dataset by name."""
        return load_training_dataset(self.project.db, self.offline_root / "datasets", name)

    def list_training_datasets(self) -> list[TrainingDataset]:
        return list_training_datasets(self.project.db, self.offline_root / "datasets")

    # -- online -----------------------------------------------------------------------------------

    @property
    def online_store(self) -> OnlineStore:
        """The configured online store (opened on first use)."""
        if self._online is None:
            self._online = open_online_store(
                self.project.config.online_store_url, namespace=self.project.config.project
            )
        store: OnlineStore = self._online
        return store

    def get_online_features(
        self,
        features: FeatureRefs,
        entity_rows: EntityRows,
        *,
        full_feature_names: bool = False,
    ) -> OnlineResponse:
        """The freshest value of each feature for each entity, in one round trip to the store.

        Args:
            features: ``"view:feature"`` refs or a ``FeatureService``.
            entity_rows: ``[{"user_id": 1}, ...]`` or ``{"user_id": [1, 2, ...]}``.

        Each value comes with a status (present / missing / expired by the view's TTL) and the
        event time of the row it came from (``OnlineResponse.statuses`` / ``event_timestamps``).
        """
        resolved = self.definitions.resolve(features, full_feature_names=full_feature_names)
        return read_online(
            self.online_store, resolved, entity_rows, full_feature_names=full_feature_names
        )

    def _materialize_targets(self, views: Sequence[str] | None) -> list[FeatureView]:
        self.definitions.refresh()
        if views is None:
            chosen = [
                v
                for v in self.definitions.views.values()
                if isinstance(v, FeatureView) and v.online
            ]
        else:
            chosen = []
            for name in views:
                v = self.definitions.view(name)
                if not isinstance(v, FeatureView):
                    raise FeatureStoreError(
                        f"{v.ref!r} is a stream feature view; its processor keeps it fresh"
                    )
                chosen.append(v)
        return sorted(chosen, key=lambda v: v.ref)

    def materialize(
        self,
        start: datetime,
        end: datetime,
        views: Sequence[str] | None = None,
        *,
        batch_size: int = 20_000,
        progress: Progress | None = None,
    ) -> MaterializeReport:
        """Write the latest row per entity with event time in [start, end) to the online store.

        Idempotent and safe to rerun after a crash; advances each view's watermark to ``end``.
        """
        start, end = _utc(start), _utc(end)
        if end <= start:
            raise FeatureStoreError(f"materialize: end {end} must be after start {start}")
        targets = [
            (v, self.source_path(v), self.definitions.join_keys(v), start, end)
            for v in self._materialize_targets(views)
        ]
        return run_materialization(
            self.project.db, self.online_store, targets, batch_size=batch_size, progress=progress
        )

    def materialize_incremental(
        self,
        end: datetime,
        views: Sequence[str] | None = None,
        *,
        batch_size: int = 20_000,
        progress: Progress | None = None,
    ) -> MaterializeReport:
        """Materialize each view from its watermark (or the beginning) up to ``end``."""
        end = _utc(end)
        marks = watermarks(self.project.db)
        targets = []
        for v in self._materialize_targets(views):
            start = marks[v.ref][0] if v.ref in marks else EPOCH
            if start < end:
                targets.append((v, self.source_path(v), self.definitions.join_keys(v), start, end))
        return run_materialization(
            self.project.db, self.online_store, targets, batch_size=batch_size, progress=progress
        )

    # -- streaming --------------------------------------------------------------------------------

    @property
    def event_log(self) -> EventLog:
        """The configured event log (opened on first use)."""
        if self._event_log is None:
            self._event_log = open_event_log(
                self.project.config.event_log_url, namespace=self.project.config.project
            )
        log: EventLog = self._event_log
        return log

    def push(self, stream: str, rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> PushResult:
        """Validate ``rows`` against the stream's schema and append them to its event log.

        Nothing is written unless every row is valid (``PushValidationError`` names the row index,
        the field and the reason). Stream processors apply the events to the online store.
        """
        self.definitions.refresh()
        definition = self.definitions.streams.get(stream)
        if definition is None:
            raise FeatureNotFound(f"event stream {stream!r} does not exist")
        required: list[str] = []
        for view in self.definitions.views.values():
            if isinstance(view, StreamFeatureView) and view.source and view.source.name == stream:
                required += [k for k in self.definitions.join_keys(view) if k not in required]
        payloads = encode_events(definition, rows, required)
        ids = self.event_log.append(stream, payloads)
        metrics()["pushed"].labels(stream).inc(len(ids))
        return PushResult(stream, len(ids), ids)

    def processor(self, streams: Sequence[str] | None = None, **kwargs: Any) -> StreamProcessor:
        """A stream processor over this store (see ``StreamProcessor``)."""
        return StreamProcessor(self, streams, **kwargs)

    def close(self) -> None:
        """Close the online store and event log connections (the project stays open)."""
        if self._online is not None:
            self._online.close()
            self._online = None
        if self._event_log is not None:
            self._event_log.close()
            self._event_log = None


def _utc(dt: datetime) -> datetime:
    if not isinstance(dt, datetime):
        raise FeatureStoreError(f"expected a datetime, got {dt!r}")
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
