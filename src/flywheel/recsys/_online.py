"""The online request path: ``OnlineRecommender.recommend``, ``record_events`` and ``add_items``.

A request runs the served ``Pipeline`` (``flywheel.recsys._pipeline``: features -> sources ->
blend -> ranker -> re-rank, the object the offline evaluator replays) inside what only a live
process has, each stage timed (``latency_ms``) against a deadline budget (default 50 ms):

1. **experiment** — the strategy comes from the A/B test or bandit named by ``experiment``
   (variants named after ``STRATEGIES``), else ``strategy`` (default ``ranked``);
2. **features** — the pipeline's feature read in a worker thread that gets at most
   ``feature_budget`` of the deadline (slow or failing: defaults, the ``features_timeout`` /
   ``features_error`` fallback), merged with the events this process saw;
3. **candidates, blend, rank, re-rank** — the pipeline, with the blend weights registered as
   ``recs-pipeline`` (``tune_pipeline``; equal weights until one is registered);
4. **exploration** — ``explore_slots`` filled by the source that the ``explore_experiment``
   bandit chooses (``_explore``); clicks and purchases of explored items are its rewards
   (``ExplorationLedger``).

``record_events`` validates a batch, pushes it to the feature store's ``recs_events`` stream
(all or nothing) and applies it to the in-memory state (recent items per user, co-occurrence of
purchases, trending counts, exploration rewards), so the next request of this process reflects
it at once; other processes see it through the stream features. ``add_items`` puts new
products into the catalogue stream ``recs_catalog`` and into this process's indexes at once;
every other recommender process follows that stream in the background.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import functools
import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from opentelemetry.trace import SpanKind

from flywheel import telemetry
from flywheel.recsys._errors import RecsysError
from flywheel.recsys._explore import Explorer
from flywheel.recsys._ingest import EVENT_STREAM, EVENT_TYPES
from flywheel.recsys._models import ModelHandles
from flywheel.recsys._params import PipelineParams, load_pipeline
from flywheel.recsys._pipeline import (
    STRATEGIES,
    Pipeline,
    PipelineRequest,
    RecsysSettings,
    Stages,
    UserContext,
    merge_session,
    read_features,
)
from flywheel.recsys._rerank import ExplorationLedger, for_sale, place_exploration
from flywheel.recsys._sources import SERVED_SOURCES
from flywheel.recsys._state import NewItem, OnlineState

if TYPE_CHECKING:
    from flywheel.experiments import Experiments
    from flywheel.features import FeatureStore, PushResult
    from flywheel.project import Project

log = logging.getLogger(__name__)

SURFACES = ("home", "product")
CATALOG_STREAM = "recs_catalog"
FALLBACK_REASONS = (
    "features_timeout",
    "features_error",
    "generators_missing",
    "index_missing",
    "ranker_unavailable",
    "deadline",
    "experiment_error",
)
_MAX_SESSIONS = 100_000


@functools.cache
def recsys_metrics() -> dict[str, Any]:
    """Prometheus metrics of the request path (registered once, on first use)."""
    from prometheus_client import Counter, Histogram

    return {
        "fallbacks": Counter(
            "flywheel_recsys_fallbacks_total",
            "Recommendation requests that took a fallback path, by reason.",
            ["reason"],
        ),
        "stage": Histogram(
            "flywheel_recsys_stage_seconds",
            "Time spent per stage of GET /recommendations.",
            ["stage"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        ),
        "events": Counter(
            "flywheel_recsys_events_total", "Events accepted by POST /events.", ["event_type"]
        ),
        "requests": Counter(
            "flywheel_recsys_requests_total",
            "Recommendation requests served, by strategy.",
            ["strategy"],
        ),
    }


@dataclass(frozen=True)
class Event:
    """One interaction, already validated (``event_type`` in ``EVENT_TYPES``)."""

    user_id: int
    item_id: str
    event_type: str
    timestamp: datetime | None = None
    event_id: str | None = None


@dataclass
class Recommendation:
    """The answer of one request (``to_dict`` is the HTTP body)."""

    user_id: int
    surface: str
    items: list[dict[str, Any]]
    variant: str | None
    strategy: str
    model_versions: dict[str, str]
    latency_ms: dict[str, float]
    fallbacks: list[str]
    preview: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "surface": self.surface,
            "items": self.items,
            "experiment_variant": self.variant,
            "strategy": self.strategy,
            "model_versions": self.model_versions,
            "latency_ms": self.latency_ms,
            "fallbacks": self.fallbacks,
            "preview": self.preview,
        }


class OnlineRecommender:
    """Recommendations for one project, from the feature store, in-memory generators and the
    registered two-tower and ranker.

    Args:
        project: the project whose feature store holds the recommender's data (``ingest``).
        settings: deadline, budgets, strategy, experiments (``RecsysSettings``).
        store: a ``FeatureStore`` to use (default: one opened on ``project``).
        state: the fitted generators (default: fitted from the last ``ingest``).
        background: run the background thread (catalogue follow, model refresh, rewards).
    """

    def __init__(
        self,
        project: Project,
        settings: RecsysSettings | None = None,
        *,
        store: FeatureStore | None = None,
        state: OnlineState | None = None,
        background: bool = True,
    ) -> None:
        from flywheel.features import FeatureStore

        self.project = project
        self.settings = settings or RecsysSettings()
        self.store = store if store is not None else FeatureStore(project)
        self._own_store = store is None
        self.state = state or OnlineState.from_project(
            project,
            self.settings.trending_half_life_days,
            content_method=self.settings.content_method,  # type: ignore[arg-type]
        )
        self.models = ModelHandles(
            project,
            two_tower_model=self.settings.two_tower_model,
            ranker_endpoint=self.settings.ranker_endpoint,
        )
        self.models.refresh(self.state)
        self.pipeline = Pipeline(
            self.state, self._load_params(), self.settings, models=self.models, store=self.store
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="recsys-feat")
        self._sessions: OrderedDict[int, deque[tuple[str, str]]] = OrderedDict()
        self._session_lock = threading.Lock()
        self._seen_ids: OrderedDict[str, None] = OrderedDict()  # retried event ids
        self._experiments: Experiments | None = None
        self._experiments_lock = threading.Lock()
        self.ledger = ExplorationLedger(self._log_rewards)
        self.replica = uuid.uuid4().hex[:12]
        self._catalog_ready = False
        self.explorer = Explorer(self.state, self.settings, self._experiments_client)
        self._pending_baskets: list[list[int]] = []
        self._bought: OrderedDict[tuple[int, str], bool] = OrderedDict()  # purchases seen here
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._background, name="recsys-background", daemon=True
            )
            self._thread.start()

    def warm_up(self) -> None:
        """Open the stores and resolve the feature refs in every worker thread (one read each),
        so the first requests are not served by a fallback."""
        user = next(iter(self.state.user_index), 0)
        futures = [self._pool.submit(self.read_features, user) for _ in range(4)]
        for f in futures:
            try:
                f.result(timeout=30)
            except Exception as exc:  # the request path has its fallbacks; say why here
                log.warning("recsys warm-up read failed: %s", exc)
        self.recommend(user, 20, deadline_ms=10_000)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.ledger.flush(now=float("inf"))
        except Exception as exc:  # the database may be gone at shutdown
            log.warning("recsys: exploration rewards not written at close: %s", exc)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.models.close()
        if self._experiments is not None:
            self._experiments.close()
        if self._own_store:
            self.store.close()

    def _load_params(self) -> PipelineParams:
        """The registered blend (``recs-pipeline``), else equal weights (untuned)."""
        name = self.settings.pipeline_model
        if name:
            try:
                params = load_pipeline(self.project, name)
            except Exception as exc:  # keep serving with what we have
                log.warning("recsys: could not load %s: %s", name, exc)
                params = None
            if params is not None:
                return params
        current = getattr(self, "pipeline", None)
        return current.params if current is not None else PipelineParams.untuned(SERVED_SOURCES)

    # -- background ---------------------------------------------------------------------------

    def _background(self) -> None:
        next_refresh = time.monotonic() + self.settings.model_refresh_s
        while not self._stop.wait(self.settings.background_interval_s):
            for task in (self.apply_pending, self.follow_catalog, self.ledger.flush):
                try:
                    task()
                except Exception as exc:  # retried on the next round
                    log.warning("recsys background %s failed: %s", task.__name__, exc)
            if time.monotonic() >= next_refresh:
                self.models.refresh(self.state)
                self.pipeline.params = self._load_params()
                next_refresh = time.monotonic() + self.settings.model_refresh_s

    def _experiments_client(self) -> Experiments:
        with self._experiments_lock:
            if self._experiments is None:
                from flywheel.experiments import Experiments

                self._experiments = Experiments(self.project)
            return self._experiments

    def _log_rewards(self, experiment: str, rows: list[dict[str, object]]) -> None:
        self._experiments_client().log_rewards(experiment, rows)

    # -- features ---------------------------------------------------------------------------

    def read_features(self, user_id: int) -> UserContext:
        """The user's features from the online store (the pipeline's read)."""
        return read_features(self.store, user_id)

    def _features(
        self, user_id: int, budget_s: float, fallbacks: list[str]
    ) -> tuple[UserContext, dict[str, float]]:
        future = self._pool.submit(self.read_features, user_id)
        try:
            ctx = future.result(timeout=max(budget_s, 0.0))
        except concurrent.futures.TimeoutError:
            future.cancel()
            fallbacks.append("features_timeout")
            ctx = UserContext()
        except Exception:  # the store is down or a view is missing: serve without it
            fallbacks.append("features_error")
            ctx = UserContext()
        # Merge what this process saw but the stream processor may not have applied yet.
        with self._session_lock:
            session = list(self._sessions.get(user_id, ()))
        ctx = merge_session(ctx, session)
        return ctx, ctx.category_counts

    def _bought_here(self, user_id: int) -> list[str]:
        """Items this process saw the user buy (not yet in the ingested purchases)."""
        with self._session_lock:
            return [i for i, _ in self._sessions.get(user_id, ()) if self._bought.get((user_id, i))]

    def _variant(self, user_id: int, surface: str, fallbacks: list[str]) -> str | None:
        name = self.settings.experiment
        if not name:
            return None
        try:
            return (
                self._experiments_client().assign(name, str(user_id), {"surface": surface}).variant
            )
        except Exception:  # a missing or stopped experiment must not break recommendations
            fallbacks.append("experiment_error")
            return None

    def recommend(
        self,
        user_id: int,
        k: int = 20,
        *,
        surface: str = "home",
        item_id: str | None = None,
        category: str | None = None,
        new_only: bool = False,
        deadline_ms: float | None = None,
        preview: bool = False,
    ) -> Recommendation:
        """The top ``k`` items for ``user_id`` (see the module docstring for the stages).

        ``preview``: served as usual but with no experiment enrolment (no assignment, so no
        exposure), no exploration slots (they are a bandit's assignment) and nothing logged;
        the strategy is the configured default.

        Traced as ``recs.request`` (kind SERVER) with one child span per stage:
        ``recs.experiment``, ``recs.features``, ``recs.candidates`` (one ``recs.source`` per
        source, attribute ``flywheel.source``), ``recs.blend``, ``recs.rank``, ``recs.rerank``.
        """
        attrs: dict[str, Any] = {"flywheel.user_id": user_id, "flywheel.k": k}
        with telemetry.span("recs.request", kind=SpanKind.SERVER, **attrs):
            return self._recommend(
                user_id,
                k,
                surface=surface,
                item_id=item_id,
                category=category,
                new_only=new_only,
                deadline_ms=deadline_ms,
                preview=preview,
            )

    def _recommend(
        self,
        user_id: int,
        k: int = 20,
        *,
        surface: str = "home",
        item_id: str | None = None,
        category: str | None = None,
        new_only: bool = False,
        deadline_ms: float | None = None,
        preview: bool = False,
    ) -> Recommendation:
        """``recommend`` without its root span."""
        if surface not in SURFACES:
            raise RecsysError(f"surface: {surface!r} is not one of {', '.join(SURFACES)}")
        if surface == "product" and not item_id:
            raise RecsysError("item_id: the product surface needs the item being viewed")
        if k < 1 or k > 500:
            raise RecsysError(f"k: must be within 1..500 (got {k})")
        budget = (self.settings.deadline_ms if deadline_ms is None else deadline_ms) / 1000.0
        t0 = time.perf_counter()
        fallbacks: list[str] = []
        latency: dict[str, float] = {}
        versions: dict[str, str] = {}
        req = PipelineRequest(
            user_id, k, surface=surface, item_id=item_id, category=category, new_only=new_only
        )
        with contextlib.ExitStack() as stage_span:
            clock = _Clock(t0, latency, stage_span)
            return self._stages(
                user_id, k, req, budget, preview, t0, fallbacks, latency, versions, clock
            )

    def _stages(
        self,
        user_id: int,
        k: int,
        request: PipelineRequest,
        budget: float,
        preview: bool,
        t0: float,
        fallbacks: list[str],
        latency: dict[str, float],
        versions: dict[str, str],
        clock: _Clock,
    ) -> Recommendation:
        m = recsys_metrics()
        clock.begin("experiment")
        variant = None if preview else self._variant(user_id, request.surface, fallbacks)
        strategy = variant if variant in STRATEGIES else self.settings.strategy
        request = PipelineRequest(**{**request.__dict__, "strategy": strategy})
        clock.lap("experiment")
        clock.begin("features")
        ctx, _ = self._features(user_id, budget * self.settings.feature_budget, fallbacks)
        clock.lap("features")
        slots = [s for s in self.settings.explore_slots if s < k]
        # No bandit configured, a preview or no time left: no slots (the page is the pipeline's).
        if not self.settings.explore_experiment or preview or time.perf_counter() - t0 >= budget:
            slots = []
        pipe = self.pipeline
        result = pipe.run(
            request,
            ctx,
            reserve=len(slots),
            deadline=t0 + budget,
            fallbacks=fallbacks,
            versions=versions,
            stages=clock,
            bought_here=self._bought_here(user_id) if request.new_only else (),
            ranker_budget_s=budget * self.settings.ranker_budget,
        )
        if result.spent:
            slots = []
        arm: str | None = None
        decision: str | None = None
        explore: list[int] = []
        names = self.state.item_ids
        if slots:
            arm, decision, explore = self.explorer.choose(
                user_id,
                ctx,
                request.surface,
                request.item_id,
                request.category,
                result.exclude | set(result.page),
                len(slots),
                fallbacks,
            )
            explore = [r for r in explore if for_sale(names[r])]
        page = pipe.fill(result, k, explore)
        score, reasons = result.score, result.reasons
        for r in explore:
            reasons[r] = [f"explore:{arm}"]
            score.setdefault(r, 0.0)
        final = place_exploration(page, explore, slots)[:k]
        if decision is not None and arm is not None and explore:
            self.ledger.shown(
                self.settings.explore_experiment or "",
                user_id,
                decision,
                [names[r] for r in explore],
            )
        clock.lap("rerank")
        retriever_version = self.models.retriever_version
        if "two-tower" in result.sources and retriever_version is not None:
            versions["two_tower"] = f"{self.settings.two_tower_model}/{retriever_version}"
        if pipe.params.version:
            versions["pipeline"] = pipe.params.version
        latency["total"] = round((time.perf_counter() - t0) * 1000.0, 3)
        for reason in dict.fromkeys(fallbacks):
            m["fallbacks"].labels(reason).inc()
        m["requests"].labels(strategy).inc()
        st = self.state
        items = [
            {
                "item_id": names[r],
                "score": round(float(score.get(r, 0.0)), 6),
                "reasons": reasons.get(r, ["popularity"]),
                "category": str(st.categories[r]),
            }
            for r in final
        ]
        return Recommendation(
            user_id=user_id,
            surface=request.surface,
            items=items,
            variant=variant,
            strategy=strategy,
            model_versions=versions,
            latency_ms=latency,
            fallbacks=list(dict.fromkeys(fallbacks)),
            preview=preview,
        )

    # -- events -------------------------------------------------------------------------------

    def record_events(self, events: Sequence[Event]) -> PushResult:
        """Push ``events`` to the ``recs_events`` stream (all or none), then update the state."""
        if not events:
            raise RecsysError("events: at least one event is needed")
        now = datetime.now(UTC)
        rows = []
        for i, e in enumerate(events):
            if e.event_type not in EVENT_TYPES:
                raise RecsysError(
                    f"events.{i}.event_type: {e.event_type!r} is not one of "
                    + ", ".join(EVENT_TYPES)
                )
            if not e.item_id:
                raise RecsysError(f"events.{i}.item_id: must not be empty")
            row: dict[str, Any] = {
                "user_id": int(e.user_id),
                "item_id": e.item_id,
                "category": self.state.category_of(e.item_id),
                "event_type": e.event_type,
                "is_purchase": int(e.event_type == "purchase"),
                "event_timestamp": e.timestamp or now,
            }
            # The stream's event id is required (#17 item 5): a caller's id makes a retry
            # idempotent; without one each event gets a fresh id, as the log's own ids were.
            row["event_id"] = e.event_id or uuid.uuid4().hex
            rows.append(row)
        result = self.store.push(EVENT_STREAM, rows)
        self._apply([r for r in rows if self._first_time(r.get("event_id"))])
        m = recsys_metrics()
        for r in rows:
            m["events"].labels(r["event_type"]).inc()
        return result

    def _first_time(self, event_id: str | None) -> bool:
        """False for an ``event_id`` this process already applied (a retried request)."""
        if event_id is None:
            return True
        with self._session_lock:
            if event_id in self._seen_ids:
                return False
            self._seen_ids[event_id] = None
            if len(self._seen_ids) > _MAX_SESSIONS:
                self._seen_ids.popitem(last=False)
            return True

    def _apply(self, rows: Sequence[Mapping[str, Any]]) -> None:
        st = self.state
        baskets: dict[int, list[int]] = {}
        trending: list[int] = []
        with self._session_lock:
            for r in rows:
                uid = int(r["user_id"])
                session = self._sessions.get(uid)
                if session is None:
                    session = self._sessions[uid] = deque(maxlen=50)
                    if len(self._sessions) > _MAX_SESSIONS:
                        self._sessions.popitem(last=False)
                else:
                    self._sessions.move_to_end(uid)
                session.append((str(r["item_id"]), str(r["category"])))
                row = st.item_index.get(str(r["item_id"]))
                if r["event_type"] == "purchase":
                    self._bought[(uid, str(r["item_id"]))] = True
                    if len(self._bought) > _MAX_SESSIONS:
                        self._bought.popitem(last=False)
                if row is not None:
                    trending.append(row)
                    if r["event_type"] == "purchase" and row < st.n_train:
                        baskets.setdefault(uid, []).append(row)
        for r in rows:
            if r["event_type"] in ("click", "add_to_cart", "purchase"):
                self.ledger.acted(int(r["user_id"]), str(r["item_id"]))
        if trending:
            st.count_trending(trending)
        if baskets:
            with self._session_lock:
                self._pending_baskets.extend(baskets.values())
            if self._thread is None:  # no background thread: apply now
                self.apply_pending()

    def apply_pending(self) -> int:
        """Fold queued purchase baskets into co-occurrence (copy on write: requests keep reading
        the old matrix until the new one is ready); returns how many baskets. The background
        thread calls this every ``background_interval_s``: one rebuild per interval, not one per
        POST."""
        st = self.state
        with self._session_lock:
            baskets, self._pending_baskets = self._pending_baskets, []
        if not baskets or st.cooc is None:
            return 0
        with st.update_lock:
            fresh = copy.copy(st.cooc)
            fresh.update(baskets)
            fresh.similarity()
            st.cooc = fresh
        return len(baskets)

    # -- catalogue ------------------------------------------------------------------------------

    def _ensure_catalog(self) -> bool:
        """Declare the ``recs_catalog`` stream (once); False when the store refuses."""
        if self._catalog_ready:
            return True
        from flywheel.features import EventStream, Field

        self.store.apply(
            [
                EventStream(
                    CATALOG_STREAM,
                    [
                        Field("item_id", "string"),
                        Field("description", "string"),
                        Field("price", "float64", nullable=True),
                        Field("category", "string", nullable=True),
                    ],
                    description="Products added while serving (POST /items).",
                )
            ]
        )
        self._catalog_ready = True
        return True

    def add_items(self, items: Sequence[NewItem]) -> PushResult:
        """Add products to the catalogue: pushed to ``recs_catalog`` (all or none), embedded and
        indexed in this process at once (other processes follow the stream)."""
        if not items:
            raise RecsysError("items: at least one item is needed")
        for i, item in enumerate(items):
            if not item.item_id:
                raise RecsysError(f"items.{i}.item_id: must not be empty")
            if not item.description or not item.description.strip():
                raise RecsysError(f"items.{i}.description: must not be empty")
            if item.price is not None and not (item.price >= 0 and np.isfinite(item.price)):
                raise RecsysError(f"items.{i}.price: must be a finite number >= 0")
        self._ensure_catalog()
        now = datetime.now(UTC)
        result = self.store.push(
            CATALOG_STREAM,
            [
                {
                    "item_id": it.item_id,
                    "description": it.description,
                    "price": it.price,
                    "category": it.category,
                    "event_timestamp": now,
                }
                for it in items
            ],
        )
        self._add_to_indexes(items)
        return result

    def _add_to_indexes(self, items: Sequence[NewItem]) -> None:
        rows = self.state.add_items(items)
        retriever = self.models.retriever
        if retriever is not None:
            st = self.state
            retriever.add_items(
                [st.item_ids[r] for r in rows],
                [st.descriptions[r] for r in rows],
                [str(st.categories[r]) for r in rows],
                [st.prices[r] for r in rows],
            )

    def follow_catalog(self) -> int:
        """Apply products other processes added (``recs_catalog``); returns how many."""
        import orjson

        if not self._catalog_ready:
            entries = self.store.list_definitions("event_stream")
            if not any(e.name == CATALOG_STREAM for e in entries):
                return 0
            self._catalog_ready = True
        log_ = self.store.event_log
        group = f"recsys-{self.replica}"
        events = log_.read(CATALOG_STREAM, group, "c", 500, 0)
        if not events:
            return 0
        items = []
        for _, payload in events:
            data = orjson.loads(payload)
            items.append(
                NewItem(
                    str(data["item_id"]),
                    str(data.get("description") or ""),
                    data.get("price"),
                    data.get("category"),
                )
            )
        self._add_to_indexes(items)
        log_.ack(CATALOG_STREAM, group, [eid for eid, _ in events])
        return len(items)


class _Clock(Stages):
    """Times each stage (``latency_ms`` and the stage histogram) and opens one span per stage."""

    def __init__(self, t0: float, latency: dict[str, float], spans: contextlib.ExitStack) -> None:
        self.last = t0
        self.latency = latency
        self.spans = spans

    def begin(self, name: str) -> None:  # one span per stage: close the last, open the next
        self.spans.close()
        self.spans.enter_context(telemetry.span(f"recs.{name}"))

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.latency[stage] = round((now - self.last) * 1000.0, 3)
        recsys_metrics()["stage"].labels(stage).observe(now - self.last)
        self.last = now
