"""The online request path: ``OnlineRecommender.recommend`` and ``record_events``.

A request runs in stages, each timed (``latency_ms``) against a deadline budget (default 50 ms):

1. **features** — the user's RFM, last-N items / categories and per-category activity, read
   from the feature store (``get_online_features``) in a worker thread that gets at most
   ``feature_budget`` of the deadline. Slow or failing → defaults (no history), counted as the
   ``features_timeout`` / ``features_error`` fallback;
2. **candidates** — named generators over the in-memory state fitted on the ingested purchases:
   ``repeat`` (the user's own purchases), ``co-occurrence`` (bought with their purchases),
   ``session`` (bought with the items of their recent events), ``category`` (trending items of
   the categories they are browsing now), ``similar`` (product surface: bought with / same
   category as the anchor item) and ``trending``. A generator that is missing or fails is
   skipped (``generators_missing``); no candidates at all, or the budget already spent, →
   ``popularity`` (``deadline``);
3. **ranking** — a blend of each generator's max-normalised score, boosted by the share of the
   item's category in the user's recent activity and the item's 1h stream activity (no learned
   ranker yet: ``model_versions`` is empty).

``record_events`` validates a batch, pushes it to the feature store's ``recs_events`` stream
(all or nothing) and applies it to the in-memory state (recent items per user, co-occurrence of
purchases, trending counts), so the next request of this process reflects it at once; other
processes see it through the stream features.
"""

from __future__ import annotations

import concurrent.futures
import copy
import functools
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._errors import RecsysError
from flywheel.recsys._ingest import (
    EVENT_STREAM,
    EVENT_TYPES,
    OTHER_CATEGORY,
    RECENT_VIEW,
    USER_CATEGORY_VIEW,
    USER_VIEW,
    load_items,
    load_purchases,
)

if TYPE_CHECKING:
    from flywheel.experiments import Experiments
    from flywheel.features import FeatureStore, PushResult
    from flywheel.project import Project
    from flywheel.recsys._candidates import CoOccurrence, Popularity, RepeatPurchase
    from flywheel.recsys._protocol import TrainData

SURFACES = ("home", "product")
STRATEGIES = ("hybrid", "popularity", "session")
FALLBACK_REASONS = (
    "features_timeout",
    "features_error",
    "generators_missing",
    "deadline",
    "experiment_error",
)
WEIGHTS: dict[str, float] = {
    "similar": 1.5,
    "session": 1.2,
    "repeat": 1.0,
    "co-occurrence": 1.0,
    "category": 0.6,
    "trending": 0.3,
    "popularity": 0.2,
}
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
    }


@dataclass(frozen=True)
class RecsysSettings:
    """Knobs of the request path (``recsys:`` in ``flywheel.yaml``)."""

    deadline_ms: float = 50.0
    feature_budget: float = 0.5  # share of the deadline the feature read may take
    experiment: str | None = None
    per_generator: int = 100
    trending_half_life_days: float = 14.0


@dataclass
class UserContext:
    """What the features stage learned about a user (defaults when the read fell back)."""

    recent_items: list[str] = field(default_factory=list)  # most recent first
    recent_categories: list[str] = field(default_factory=list)
    category_counts: dict[str, float] = field(default_factory=dict)
    rfm: dict[str, Any] = field(default_factory=dict)
    known: bool = False


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
        }


class OnlineState:
    """The in-memory generators, fitted on the purchases written by ``ingest``.

    ``repeat`` / ``cooc`` may be ``None`` (not built): requests then use what is left.
    """

    def __init__(self, train: TrainData, categories: np.ndarray, half_life_days: float) -> None:
        from flywheel.recsys._candidates import CoOccurrence, Popularity, RepeatPurchase

        self.train = train
        self.item_ids = [str(i) for i in train.items]
        self.item_index = {item: row for row, item in enumerate(self.item_ids)}
        self.user_index = {int(u): row for row, u in enumerate(train.users)}
        self.categories = categories
        self.category_rows: dict[str, np.ndarray] = {
            str(c): np.flatnonzero(categories == c) for c in np.unique(categories)
        }
        self.repeat: RepeatPurchase | None = RepeatPurchase().fit(train)
        self.cooc: CoOccurrence | None = CoOccurrence(basket="invoice").fit(train)
        self.trending: Popularity = Popularity(half_life_days=half_life_days).fit(train)
        self.popularity: Popularity = Popularity().fit(train)
        self.cooc.similarity()  # computed once here, not by the first request
        self.lock = threading.Lock()  # guards the in-place trending counts
        self.update_lock = threading.Lock()  # serialises co-occurrence rebuilds

    @classmethod
    def from_project(cls, project: Project, half_life_days: float = 14.0) -> OnlineState:
        """Fit on the last ``ingest`` of ``project`` (``DataUnavailableError`` when none)."""
        import pandas as pd

        from flywheel.recsys._protocol import build_train_data

        lines = load_purchases(project)
        items = load_items(project)
        end = pd.Timestamp(lines["InvoiceDate"].max()) + pd.Timedelta(seconds=1)
        train = build_train_data(lines, end)
        by_id = dict(zip(items["item_id"].astype(str), items["category"].astype(str), strict=True))
        cats = np.asarray([by_id.get(str(i), OTHER_CATEGORY) for i in train.items], dtype=object)
        return cls(train, cats, half_life_days)

    def category_of(self, item_id: str) -> str:
        row = self.item_index.get(item_id)
        return OTHER_CATEGORY if row is None else str(self.categories[row])


def _top(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores of the ``n`` best finite scores, best first."""
    finite = np.flatnonzero(np.isfinite(scores) & (scores > 0))
    if len(finite) > n:
        finite = finite[np.argpartition(-scores[finite], n - 1)[:n]]
    order = finite[np.argsort(-scores[finite], kind="stable")]
    return order, scores[order]


class OnlineRecommender:
    """Recommendations for one project, from the feature store and the in-memory generators.

    Args:
        project: the project whose feature store holds the recommender's data (``ingest``).
        settings: deadline, feature budget, experiment name (``RecsysSettings``).
        store: a ``FeatureStore`` to use (default: one opened on ``project``).
        state: the fitted generators (default: fitted from the last ``ingest``).
    """

    def __init__(
        self,
        project: Project,
        settings: RecsysSettings | None = None,
        *,
        store: FeatureStore | None = None,
        state: OnlineState | None = None,
    ) -> None:
        from flywheel.features import FeatureStore

        self.project = project
        self.settings = settings or RecsysSettings()
        self.store = store if store is not None else FeatureStore(project)
        self._own_store = store is None
        self.state = state or OnlineState.from_project(
            project, self.settings.trending_half_life_days
        )
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="recsys-feat")
        self._sessions: OrderedDict[int, deque[tuple[str, str]]] = OrderedDict()
        self._session_lock = threading.Lock()
        self._seen_ids: OrderedDict[str, None] = OrderedDict()  # retried event ids
        self._experiments: Experiments | None = None

    def warm_up(self) -> None:
        """Open the stores and resolve the feature refs in every worker thread (one read each),
        so the first requests are not served by a fallback."""
        user = next(iter(self.state.user_index), 0)
        futures = [self._pool.submit(self.read_features, user) for _ in range(4)]
        for f in futures:
            try:
                f.result(timeout=30)
            except Exception as exc:  # the request path has its fallbacks; say why here
                import logging

                logging.getLogger(__name__).warning("recsys warm-up read failed: %s", exc)
        self.recommend(user, 20, deadline_ms=10_000)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._experiments is not None:
            self._experiments.close()
        if self._own_store:
            self.store.close()

    # -- features ---------------------------------------------------------------------------

    def read_features(self, user_id: int) -> UserContext:
        """The user's features from the online store (one read per entity set)."""
        fs = self.store
        ctx = UserContext()
        user = fs.get_online_features(
            [
                f"{USER_VIEW}:recency_days",
                f"{USER_VIEW}:frequency",
                f"{USER_VIEW}:monetary",
                f"{RECENT_VIEW}:last_items",
                f"{RECENT_VIEW}:last_categories",
            ],
            {"user_id": [user_id]},
        ).to_dict(include_entities=False)
        for key in ("recency_days", "frequency", "monetary"):
            if user[key][0] is not None:
                ctx.rfm[key] = user[key][0]
        ctx.known = bool(ctx.rfm)
        ctx.recent_items = [str(i) for i in (user["last_items"][0] or [])]
        ctx.recent_categories = [str(c) for c in (user["last_categories"][0] or [])]
        cats = sorted(set(ctx.recent_categories))
        if cats:
            per_cat = fs.get_online_features(
                [f"{USER_CATEGORY_VIEW}:events_1d"],
                {"user_id": [user_id] * len(cats), "category": cats},
            ).to_dict(include_entities=False)
            ctx.category_counts = {
                c: float(n or 0) for c, n in zip(cats, per_cat["events_1d"], strict=True)
            }
        return ctx

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
        # Most recent first, like the stream view's last_n: this process's events, then the rest.
        seen_items = list(dict.fromkeys([i for i, _ in reversed(session)] + ctx.recent_items))
        counts = dict(ctx.category_counts)
        local: dict[str, float] = {}
        for _item, cat in session:
            local[cat] = local.get(cat, 0.0) + 1.0
        for cat, n in local.items():
            counts[cat] = max(counts.get(cat, 0.0), n)
        for cat in ctx.recent_categories:
            counts.setdefault(cat, 1.0)
        ctx.recent_items = seen_items
        ctx.category_counts = counts
        return ctx, counts

    # -- candidates -------------------------------------------------------------------------

    def _generators(
        self,
        ctx: UserContext,
        user_id: int,
        surface: str,
        anchor: str | None,
        strategy: str,
        fallbacks: list[str],
    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        st = self.state
        n = self.settings.per_generator
        out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        row = st.user_index.get(user_id)
        recent_rows = [st.item_index[i] for i in ctx.recent_items if i in st.item_index]
        missing = False
        # Events swap in a new co-occurrence object (copy on write); read one snapshot.
        repeat, cooc = st.repeat, st.cooc
        with st.lock:
            trend = st.trending._scores.copy()
        if strategy != "popularity":
            if strategy == "hybrid" and row is not None:
                if repeat is None:
                    missing = True
                else:
                    out["repeat"] = _top(repeat.score(np.asarray([row]))[0], n)
                if cooc is None:
                    missing = True
                else:
                    out["co-occurrence"] = _top(cooc.score(np.asarray([row]))[0], n)
            if recent_rows:
                if cooc is None:
                    missing = True
                else:
                    weights = 0.8 ** np.arange(len(recent_rows))  # the latest counts most
                    sim = cooc.similarity()[np.asarray(recent_rows)]
                    out["session"] = _top(np.asarray(sim.T @ weights).ravel(), n)
            if ctx.category_counts:
                total = sum(ctx.category_counts.values()) or 1.0
                scores = np.zeros(len(st.item_ids))
                for cat, count in ctx.category_counts.items():
                    rows = st.category_rows.get(cat)
                    if rows is not None and len(rows):
                        t = trend[rows]
                        scores[rows] = (count / total) * (1.0 + t / (t.max() or 1.0))
                out["category"] = _top(scores, n)
            if surface == "product" and anchor is not None and anchor in st.item_index:
                a = st.item_index[anchor]
                scores = np.zeros(len(st.item_ids))
                same = st.category_rows.get(str(st.categories[a]), np.empty(0, dtype=int))
                scores[same] = 0.2
                if cooc is not None:
                    sim_row = np.asarray(cooc.similarity()[a].todense()).ravel()
                    scores += sim_row / (sim_row.max() or 1.0)
                else:
                    missing = True
                scores[a] = 0.0
                out["similar"] = _top(scores, n)
        out["trending"] = _top(trend, n)
        if missing:
            fallbacks.append("generators_missing")
        return out

    def _popularity(self, n: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        with self.state.lock:
            return {"popularity": _top(self.state.popularity._scores.copy(), n)}

    # -- ranking ----------------------------------------------------------------------------

    def _rank(
        self,
        gens: Mapping[str, tuple[np.ndarray, np.ndarray]],
        counts: Mapping[str, float],
        k: int,
        exclude: set[int],
    ) -> list[dict[str, Any]]:
        st = self.state
        score: dict[int, float] = {}
        reasons: dict[int, list[str]] = {}
        for name, (rows, values) in gens.items():
            if not len(rows):
                continue
            top = float(values[0]) or 1.0
            w = WEIGHTS.get(name, 0.5)
            for r, v in zip(rows.tolist(), values.tolist(), strict=True):
                if r in exclude:
                    continue
                score[r] = score.get(r, 0.0) + w * v / top
                reasons.setdefault(r, []).append(name)
        total = sum(counts.values())
        if total > 0:
            for r in score:
                share = counts.get(str(st.categories[r]), 0.0) / total
                score[r] *= 1.0 + 0.5 * share
        best = sorted(score, key=lambda r: (-score[r], r))[:k]
        return [
            {
                "item_id": st.item_ids[r],
                "score": round(score[r], 6),
                "reasons": reasons[r],
                "category": str(st.categories[r]),
            }
            for r in best
        ]

    # -- the request --------------------------------------------------------------------------

    def _variant(self, user_id: int, surface: str, fallbacks: list[str]) -> str | None:
        name = self.settings.experiment
        if not name:
            return None
        try:
            if self._experiments is None:
                from flywheel.experiments import Experiments

                self._experiments = Experiments(self.project)
            return self._experiments.assign(name, str(user_id), {"surface": surface}).variant
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
        deadline_ms: float | None = None,
    ) -> Recommendation:
        """The top ``k`` items for ``user_id`` (see the module docstring for the stages)."""
        if surface not in SURFACES:
            raise RecsysError(f"surface: {surface!r} is not one of {', '.join(SURFACES)}")
        if surface == "product" and not item_id:
            raise RecsysError("item_id: the product surface needs the item being viewed")
        if k < 1 or k > 500:
            raise RecsysError(f"k: must be within 1..500 (got {k})")
        m = recsys_metrics()
        budget = (self.settings.deadline_ms if deadline_ms is None else deadline_ms) / 1000.0
        t0 = time.perf_counter()
        fallbacks: list[str] = []
        latency: dict[str, float] = {}

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            latency[stage] = round((now - since) * 1000.0, 3)
            m["stage"].labels(stage).observe(now - since)
            return now

        variant = self._variant(user_id, surface, fallbacks)
        strategy = variant if variant in STRATEGIES else "hybrid"
        t = lap("experiment", t0)
        ctx, counts = self._features(user_id, budget * self.settings.feature_budget, fallbacks)
        t = lap("features", t)
        exclude: set[int] = set()
        if item_id is not None and item_id in self.state.item_index:
            exclude.add(self.state.item_index[item_id])
        n = max(self.settings.per_generator, k)
        if time.perf_counter() - t0 >= budget:
            fallbacks.append("deadline")
            gens = self._popularity(n)
        else:
            try:
                gens = self._generators(ctx, user_id, surface, item_id, strategy, fallbacks)
            except Exception:  # a generator broke: popularity keeps the page full
                fallbacks.append("generators_missing")
                gens = {}
            if sum(len(r) for r, _ in gens.values()) == 0:
                gens = self._popularity(n)
        t = lap("candidates", t)
        items = self._rank(gens, counts, k, exclude)
        if len(items) < k and "popularity" not in gens:
            have = {self.state.item_index[i["item_id"]] for i in items}
            more = self._rank(self._popularity(n + k), {}, k, exclude | have)
            items += more[: k - len(items)]
        lap("ranking", t)
        latency["total"] = round((time.perf_counter() - t0) * 1000.0, 3)
        for reason in dict.fromkeys(fallbacks):
            m["fallbacks"].labels(reason).inc()
        return Recommendation(
            user_id=user_id,
            surface=surface,
            items=items,
            variant=variant,
            strategy=strategy,
            model_versions={},
            latency_ms=latency,
            fallbacks=list(dict.fromkeys(fallbacks)),
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
            if e.event_id:
                row["event_id"] = e.event_id
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
                if row is not None:
                    trending.append(row)
                    if r["event_type"] == "purchase":
                        baskets.setdefault(uid, []).append(row)
        if trending:
            with st.lock:
                st.trending.update(trending)
        if baskets and st.cooc is not None:
            # Copy on write: requests keep reading the old matrix until the new one is ready.
            with st.update_lock:
                fresh = copy.copy(st.cooc)
                fresh.update(baskets.values())
                fresh.similarity()
                st.cooc = fresh
