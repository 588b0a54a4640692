"""The online request path: ``OnlineRecommender.recommend``, ``record_events`` and ``add_items``.

A request runs in stages, each timed (``latency_ms``) against a deadline budget (default 50 ms):

1. **experiment** — the strategy comes from the A/B test or bandit named by ``experiment``
   (variants named after ``STRATEGIES``), else ``strategy`` (default ``ranked``);
2. **features** — the user's RFM, last-N items / categories and per-category activity, read
   from the feature store (``get_online_features``) in a worker thread that gets at most
   ``feature_budget`` of the deadline. Slow or failing → defaults (no history), counted as the
   ``features_timeout`` / ``features_error`` fallback;
3. **candidates** — named generators: ``two-tower`` (user tower over the purchase history and
   recent items, FAISS search over the item tower's embeddings, new items included),
   ``repeat``, ``co-occurrence`` (bought with their purchases), ``session`` (bought with the
   items of their recent events), ``content`` (text embeddings close to what they look at now;
   new items included), ``category`` (trending in the categories they browse or the one in the
   request's context), ``similar`` (product surface) and ``trending``. A generator that is
   missing or fails is skipped (``generators_missing``; ``index_missing`` when the two-tower has
   no loaded index); no candidates at all, or the budget already spent, → ``popularity``
   (``deadline``). Filters apply here: not-for-sale codes, ``blocked_items``, the anchor item,
   and with ``new_only`` what the user already bought;
4. **ranking** — a blend of the generators' max-normalised scores, boosted by the share of the
   item's category in the user's recent activity; for the ``ranked`` strategy the top
   ``RANK_TOP`` are then scored by the LightGBM ranker served by ``flywheel.serving`` within
   ``ranker_budget`` of the deadline (unavailable, failing or late → the blended order,
   ``ranker_unavailable``);
5. **rerank** — MMR diversity over content embeddings and categories (``diversity``), then
   ``explore_slots`` filled by the source that the ``explore_experiment`` bandit chooses
   (``new-items``: the newest catalogue items closest to the user's taste; ``category-trending``;
   ``content``: the long tail closest to the user's taste). Clicks and purchases of explored
   items are its rewards (``ExplorationLedger``).

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from opentelemetry.trace import SpanKind

from flywheel import telemetry
from flywheel.recsys._candidates import CoOccurrence, RequestContext, sparse_top
from flywheel.recsys._errors import RecsysError
from flywheel.recsys._ingest import (
    EVENT_STREAM,
    EVENT_TYPES,
    RECENT_VIEW,
    USER_CATEGORY_VIEW,
    USER_VIEW,
)
from flywheel.recsys._models import ModelHandles
from flywheel.recsys._rerank import ExplorationLedger, for_sale, mmr, place_exploration
from flywheel.recsys._state import NewItem, OnlineState

if TYPE_CHECKING:
    from flywheel.experiments import Experiments
    from flywheel.features import FeatureStore, PushResult
    from flywheel.project import Project

log = logging.getLogger(__name__)

SURFACES = ("home", "product")
STRATEGIES = ("ranked", "hybrid", "content", "popularity", "session")
EXPLORE_ARMS = ("new-items", "category-trending", "content")
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
WEIGHTS: dict[str, float] = {
    "similar": 1.5,
    "session": 1.2,
    "repeat": 1.0,
    "co-occurrence": 1.0,
    "two-tower": 0.8,
    "content": 0.5,
    "category": 0.6,
    "trending": 0.3,
    "popularity": 0.2,
}
RANK_TOP = 200  # candidates sent to the ranker
RANKER_RETRY_S = 2.0  # after a ranker failure, skip it this long
NEW_ITEM_WINDOW_S = 7 * 86_400.0  # how long an added item counts as "new" for exploration
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
class RecsysSettings:
    """Knobs of the request path (``recsys:`` in ``flywheel.yaml``; see ``RecsysConfig``)."""

    deadline_ms: float = 50.0
    feature_budget: float = 0.5  # share of the deadline the feature read may take
    experiment: str | None = None
    strategy: str = "ranked"
    per_generator: int = 100
    trending_half_life_days: float = 14.0
    explore_experiment: str | None = "recs-explore"
    explore_slots: tuple[int, ...] = (4, 11)
    diversity: float = 0.15
    blocked_items: tuple[str, ...] = ()
    content_method: str = "auto"
    two_tower_model: str | None = "recs-two-tower"
    ranker_endpoint: str | None = "recs-ranker"
    ranker_budget: float = 0.35
    background_interval_s: float = 1.0  # catalogue follow, reward flush
    model_refresh_s: float = 5.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise RecsysError(f"strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}")


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


Gens = dict[str, tuple[np.ndarray, np.ndarray]]


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
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="recsys-feat")
        self._sessions: OrderedDict[int, deque[tuple[str, str]]] = OrderedDict()
        self._session_lock = threading.Lock()
        self._seen_ids: OrderedDict[str, None] = OrderedDict()  # retried event ids
        self._experiments: Experiments | None = None
        self._experiments_lock = threading.Lock()
        self.ledger = ExplorationLedger(self._log_rewards)
        self.replica = uuid.uuid4().hex[:12]
        self._catalog_ready = False
        self._explore_checked: str | None = None
        self._pending_baskets: list[list[int]] = []
        self._ranker_retry_at = 0.0
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
        context_category: str | None,
        strategy: str,
        fallbacks: list[str],
    ) -> Gens:
        """Each generator's top ``per_generator`` (rows, scores), computed on sparse rows only
        (no per-request pass over the whole catalogue)."""
        st = self.state
        n = self.settings.per_generator
        out: Gens = {}
        row = st.user_index.get(user_id)
        n_train = st.n_train
        recent_rows = [
            st.item_index[i]
            for i in ctx.recent_items
            if i in st.item_index and st.item_index[i] < n_train
        ]
        anchor_row = st.item_index.get(anchor) if anchor is not None else None
        request = RequestContext(
            user_row=row,
            recent_rows=tuple(recent_rows),
            anchor_row=anchor_row if anchor_row is not None and anchor_row < n_train else None,
        )
        missing = False
        # Events swap in a new co-occurrence object (copy on write); read one snapshot.
        repeat, cooc = st.repeat, st.cooc
        trend = st.trending.scores  # read without a copy: a racing += is harmless here

        def source(name: str, fn: Callable[[], tuple[np.ndarray, np.ndarray] | None]) -> None:
            attrs: dict[str, Any] = {"flywheel.source": name}
            with telemetry.span("recs.source", **attrs) as sp:
                got = fn()
                if got is not None and len(got[0]):
                    out[name] = got
                sp.set_attribute("flywheel.returned", 0 if got is None else len(got[0]))

        if strategy in ("ranked", "hybrid", "session"):
            if strategy != "session" and row is not None:
                if repeat is None:
                    missing = True
                else:
                    source("repeat", lambda: repeat.top_n(request, n))
                if cooc is None:
                    missing = True
                else:
                    source("co-occurrence", lambda: cooc.top_n(request, n))
            if recent_rows:
                if cooc is None:
                    missing = True
                else:
                    source("session", lambda: cooc.session_top_n(request, n))
        if strategy in ("ranked", "hybrid"):
            source("two-tower", lambda: self._two_tower(ctx, user_id, n, fallbacks))
        if strategy in ("ranked", "hybrid", "content"):
            profile_items = ([anchor] if anchor else []) + ctx.recent_items + st.history(user_id)
            source("content", lambda: self._content(profile_items, n))
        if strategy != "popularity":
            counts = dict(ctx.category_counts)
            if context_category:
                counts[context_category] = counts.get(context_category, 0.0) + max(
                    1.0, sum(counts.values())
                )
            source("category", lambda: self._category(counts, trend, n))
            if surface == "product" and anchor_row is not None:
                if cooc is None:
                    missing = True
                source("similar", lambda: self._similar(anchor_row, cooc, n))
        source("trending", lambda: st.trending_top(n))
        if missing:
            fallbacks.append("generators_missing")
        return out

    def _category(
        self, counts: Mapping[str, float], trend: np.ndarray, n: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Trending items of the user's (and the page's) categories, by the category's share."""
        st = self.state
        total = sum(counts.values()) or 1.0
        parts_rows, parts_scores = [], []
        for cat, count in counts.items():
            rows = st.category_rows.get(cat)
            if rows is not None and len(rows):
                rows = rows[rows < len(trend)]  # items added after `trend` was read
                t = trend[rows]
                parts_rows.append(rows)
                parts_scores.append((count / total) * (1.0 + t / (t.max() or 1.0)))
        if not parts_rows:
            return None
        return sparse_top(np.concatenate(parts_rows), np.concatenate(parts_scores), n)

    def _similar(
        self, a: int, cooc: CoOccurrence | None, n: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Items like the viewed one: bought with it (normalised ``S`` row), plus its category."""
        st = self.state
        same = st.category_rows.get(str(st.categories[a]), np.empty(0, dtype=np.int64))
        scores: dict[int, float] = dict.fromkeys(same.tolist(), 0.2)
        if cooc is not None and a < st.n_train:
            sim_row = cooc.similarity()[a]
            top = float(sim_row.data.max()) if sim_row.nnz else 1.0
            for j, v in zip(sim_row.indices.tolist(), sim_row.data.tolist(), strict=True):
                scores[j] = scores.get(j, 0.0) + v / top
        scores.pop(a, None)
        if not scores:
            return None
        return sparse_top(
            np.fromiter(scores.keys(), dtype=np.int64, count=len(scores)),
            np.fromiter(scores.values(), dtype=np.float64, count=len(scores)),
            n,
        )

    def _two_tower(
        self, ctx: UserContext, user_id: int, n: int, fallbacks: list[str]
    ) -> tuple[np.ndarray, np.ndarray] | None:
        retriever = self.models.retriever
        if retriever is None:
            if self.settings.two_tower_model:
                fallbacks.append("index_missing")
            return None
        history = list(dict.fromkeys(ctx.recent_items + self.state.history(user_id)))
        vec = retriever.embed_users([history])
        ids, scores = retriever.search(vec, n)[0]
        index = self.state.item_index
        pairs = [(index[i], float(s)) for i, s in zip(ids, scores, strict=False) if i in index]
        if not pairs:
            return None
        rows = np.asarray([p[0] for p in pairs], dtype=np.int64)
        # Inner products of unit vectors: shift to (0, 2] so that every hit counts as positive.
        values = np.asarray([p[1] for p in pairs], dtype=np.float64) + 1.0 + 1e-6
        return rows, values

    def _content(
        self, profile_items: Sequence[str], n: int
    ) -> tuple[np.ndarray, np.ndarray] | None:
        st = self.state
        index = st.content_index
        if index is None:
            return None
        profile = st.content_profile(list(dict.fromkeys(profile_items))[:20])
        if profile is None:
            return None
        ids, scores = index.search(profile[None, :].astype(np.float32), n)
        rows = [st.item_index[i] for i in ids[0] if i in st.item_index]
        if not rows:
            return None
        values = np.clip(np.asarray(scores[0][: len(rows)], dtype=np.float64), 1e-6, None)
        return np.asarray(rows, dtype=np.int64), values

    def _history_content(self, user_id: int, n: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Content candidates as ``ContentSimilarity`` defines them offline: cosine to the
        user's purchase profile weighted by 0.5 ** (age / 60 days)."""
        st = self.state
        row = st.user_index.get(user_id)
        if row is None or st.repeat is None or st.content_index is None:
            return None
        w = st.repeat.user_weights(row)
        if not w.nnz:
            return None
        profile = np.asarray(w.data, dtype=np.float32) @ st.content[w.indices]
        norm = float(np.linalg.norm(profile))
        if norm == 0:
            return None
        ids, scores = st.content_index.search((profile / norm)[None, :].astype(np.float32), n)
        pairs = [(st.item_index[i], float(v)) for i, v in zip(ids[0], scores[0], strict=False)]
        rows = np.asarray([r for r, _ in pairs], dtype=np.int64)
        return rows, np.asarray([v for _, v in pairs], dtype=np.float64)

    def _popularity(self, n: int) -> Gens:
        return {"popularity": self.state.popularity_top(n)}

    # -- ranking ----------------------------------------------------------------------------

    def _blend(
        self, gens: Mapping[str, tuple[np.ndarray, np.ndarray]], counts: Mapping[str, float]
    ) -> tuple[dict[int, float], dict[int, list[str]]]:
        st = self.state
        score: dict[int, float] = {}
        reasons: dict[int, list[str]] = {}
        for name, (rows, values) in gens.items():
            if not len(rows):
                continue
            top = float(values[0]) or 1.0
            w = WEIGHTS.get(name, 0.5)
            for r, v in zip(rows.tolist(), values.tolist(), strict=True):
                score[r] = score.get(r, 0.0) + w * v / top
                reasons.setdefault(r, []).append(name)
        total = sum(counts.values())
        if total > 0:
            for r in score:
                share = counts.get(str(st.categories[r]), 0.0) / total
                score[r] *= 1.0 + 0.5 * share
        return score, reasons

    def _excluded(self, user_id: int, anchor: str | None, new_only: bool) -> set[int]:
        st = self.state
        out = {st.item_index[i] for i in self.settings.blocked_items if i in st.item_index}
        if anchor is not None and anchor in st.item_index:
            out.add(st.item_index[anchor])
        if new_only:
            out.update(st.purchased_rows(user_id).tolist())
            with self._session_lock:
                out.update(
                    st.item_index[i]
                    for i, _ in self._sessions.get(user_id, ())
                    if i in st.item_index and self._bought.get((user_id, i))
                )
        return out

    def _ranked(
        self,
        rows: list[int],
        gens: Gens,
        ctx: UserContext,
        user_id: int,
        budget_s: float,
        fallbacks: list[str],
        versions: dict[str, str],
    ) -> list[int]:
        """``rows`` (blended order) re-ordered by the served ranker, or unchanged on fallback."""
        started = time.perf_counter()
        ranker = self.models.ranker
        if not rows or not self.settings.ranker_endpoint:  # no ranker configured: blend order
            return rows
        if ranker is None or time.monotonic() < self._ranker_retry_at:
            fallbacks.append("ranker_unavailable")
            return rows
        try:
            from flywheel.recsys._ranker import (
                RANKER_GENERATORS,
                RankerConfig,
                ranker_features,
                read_item_features,
            )

            st = self.state
            depth = RankerConfig.per_generator  # the candidates' depth the ranker trained on
            cands = {
                g: (gens[g][0][:depth], gens[g][1][:depth]) for g in RANKER_GENERATORS if g in gens
            }
            # The ranker's content feature has its training definition: the time-decayed purchase
            # profile (the retrieval generator above also follows the session and the anchor).
            cands.pop("content", None)
            history_content = self._history_content(user_id, depth)
            if history_content is not None:
                cands["content"] = history_content
            features = ranker_features(
                ctx.rfm,
                cands,
                rows,
                items=read_item_features(self.store, [st.item_ids[r] for r in rows]),
                history=st.history_index().history(st.user_index.get(user_id)),
                categories=st.categories,
            )
            left = budget_s - (time.perf_counter() - started)
            scores, version = ranker.score(features, user_id=user_id, timeout_s=max(left, 0.001))
        except Exception as exc:
            log.debug("ranker fallback: %s", exc)
            fallbacks.append("ranker_unavailable")
            # A circuit breaker: do not pay for features while nothing is served; try again
            # after RANKER_RETRY_S (a promoted version is picked up within that time). A late
            # answer is only this request's fallback: the next one may be in time.
            from flywheel.serving import DeadlineExceeded

            if not isinstance(exc.__cause__, DeadlineExceeded):
                self._ranker_retry_at = time.monotonic() + RANKER_RETRY_S
            return rows
        versions["ranker"] = version
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return [rows[i] for i in order.tolist()]

    # -- re-ranking -------------------------------------------------------------------------------

    def _diversify(self, rows: list[int], k: int) -> list[int]:
        """The top ``k`` of ``rows`` (best first) re-picked by MMR; relevance decays with the
        position like a DCG discount, so diversity mostly reshuffles the lower positions."""
        lam = 1.0 - self.settings.diversity
        if lam >= 1.0 or len(rows) <= 1:
            return rows[:k]
        pool = rows[: max(3 * k, 60)]
        rel = (1.0 / np.log2(np.arange(len(pool)) + 2.0)).tolist()
        st = self.state
        picked = mmr(
            rel,
            [str(st.categories[r]) for r in pool],
            k,
            lam,
            st.content[np.asarray(pool)],
        )
        return [pool[i] for i in picked]

    def _explore(
        self,
        user_id: int,
        ctx: UserContext,
        surface: str,
        anchor: str | None,
        context_category: str | None,
        taken: set[int],
        slots: int,
        fallbacks: list[str],
    ) -> tuple[str | None, str | None, list[int]]:
        """(arm, decision id, rows) of the exploration items, chosen by the bandit."""
        name = self.settings.explore_experiment
        if not name or slots <= 0:
            return None, None, []
        try:
            exps = self._experiments_client()
            self._ensure_explore_experiment(exps, name)
            assignment = exps.assign(name, str(user_id), {"surface": surface})
        except Exception as exc:
            log.debug("exploration off: %s", exc)
            fallbacks.append("experiment_error")
            return None, None, []
        if not assignment.in_experiment:
            return None, None, []
        arm = assignment.variant
        profile_items = (
            ([anchor] if anchor else []) + ctx.recent_items + self.state.history(user_id)
        )
        rows = self._explore_rows(arm, profile_items, ctx, context_category, taken, slots)
        return arm, assignment.decision_id, rows

    def _explore_rows(
        self,
        arm: str,
        profile_items: list[str],
        ctx: UserContext,
        context_category: str | None,
        taken: set[int],
        slots: int,
    ) -> list[int]:
        st = self.state
        profile = st.content_profile(list(dict.fromkeys(profile_items))[:20])
        if arm == "new-items":
            now = time.time()
            with st.lock:
                added = [r for r, at in st.new_items if now - at <= NEW_ITEM_WINDOW_S]
            added = [r for r in reversed(added) if r not in taken]  # newest first
            # then the catalogue's newest arrivals (by first sale in the ingested data)
            arrivals = [int(r) for r in st.newest_rows[:200].tolist() if int(r) not in taken]
            picked: list[int] = []
            for group in (added, arrivals):
                if profile is not None and group:
                    sims = st.content[np.asarray(group)] @ profile
                    group = [group[i] for i in np.argsort(-sims, kind="stable").tolist()]
                picked += group[: slots - len(picked)]
                if len(picked) >= slots:
                    break
            return picked
        if arm == "category-trending":
            cats = [context_category] if context_category else []
            cats += sorted(ctx.category_counts, key=lambda c: -ctx.category_counts[c])
            trend = st.trending.scores
            for cat in cats:
                rows = st.category_rows.get(cat)
                if rows is None or not len(rows):
                    continue
                rows = rows[rows < len(trend)]  # items added after `trend` was read
                order = rows[np.argsort(-trend[rows], kind="stable")]
                # past the head of the category: the head is on the page already
                pick = [int(r) for r in order[5:].tolist() if int(r) not in taken]
                if pick:
                    return pick[:slots]
            # no category in context: rising items, just below the head of trending
            head = st.trending_top(20 + 100)[0]
            rising = [int(r) for r in head[20:].tolist() if int(r) not in taken]
            return rising[:slots]
        if arm == "content" and profile is not None and st.content_index is not None:
            ids, _ = st.content_index.search(profile[None, :].astype(np.float32), 100)
            near = [st.item_index[i] for i in ids[0] if i in st.item_index]
            # the long tail of the user's taste: skip the nearest 20, which retrieval covers
            return [r for r in near[20:] if r not in taken][:slots]
        return []

    def _ensure_explore_experiment(self, exps: Experiments, name: str) -> None:
        if self._explore_checked == name:
            return
        from flywheel.experiments import ExperimentExists, ExperimentNotFound

        try:
            exps.get(name)
        except ExperimentNotFound:
            with contextlib.suppress(ExperimentExists):
                exps.create(
                    {
                        "name": name,
                        "description": "Which source fills the recommender's exploration slots.",
                        "bandit": {
                            "policy": "thompson",
                            "arms": list(EXPLORE_ARMS),
                            "min_exploration": 0.05,
                            "reward_event": "explore_reward",
                        },
                        "tags": {"system": "recsys"},
                    }
                )
        self._explore_checked = name

    # -- the request --------------------------------------------------------------------------

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
        m = recsys_metrics()
        budget = (self.settings.deadline_ms if deadline_ms is None else deadline_ms) / 1000.0
        t0 = time.perf_counter()
        fallbacks: list[str] = []
        latency: dict[str, float] = {}
        versions: dict[str, str] = {}

        def lap(stage: str, since: float) -> float:
            now = time.perf_counter()
            latency[stage] = round((now - since) * 1000.0, 3)
            m["stage"].labels(stage).observe(now - since)
            return now

        with contextlib.ExitStack() as stage_span:

            def begin(name: str) -> None:  # one span per stage: close the last, open the next
                stage_span.close()
                stage_span.enter_context(telemetry.span(f"recs.{name}"))

            return self._stages(
                user_id,
                k,
                surface,
                item_id,
                category,
                new_only,
                budget,
                preview,
                t0,
                fallbacks,
                latency,
                versions,
                lap,
                begin,
            )

    def _stages(
        self,
        user_id: int,
        k: int,
        surface: str,
        item_id: str | None,
        category: str | None,
        new_only: bool,
        budget: float,
        preview: bool,
        t0: float,
        fallbacks: list[str],
        latency: dict[str, float],
        versions: dict[str, str],
        lap: Callable[[str, float], float],
        begin: Callable[[str], None],
    ) -> Recommendation:
        m = recsys_metrics()
        begin("experiment")
        variant = None if preview else self._variant(user_id, surface, fallbacks)
        strategy = variant if variant in STRATEGIES else self.settings.strategy
        t = lap("experiment", t0)
        begin("features")
        ctx, counts = self._features(user_id, budget * self.settings.feature_budget, fallbacks)
        t = lap("features", t)
        st = self.state
        exclude = self._excluded(user_id, item_id, new_only)
        n = max(self.settings.per_generator, k)
        spent = time.perf_counter() - t0 >= budget
        begin("candidates")
        if spent:
            fallbacks.append("deadline")
            gens = self._popularity(n + len(exclude))
        else:
            try:
                gens = self._generators(
                    ctx, user_id, surface, item_id, category, strategy, fallbacks
                )
            except Exception:  # a generator broke: popularity keeps the page full
                log.exception("recsys generators failed")
                fallbacks.append("generators_missing")
                gens = {}
            if sum(len(r) for r, _ in gens.values()) == 0:
                gens = self._popularity(n + len(exclude))
        t = lap("candidates", t)
        begin("blend")
        score, reasons = self._blend(gens, counts)
        names = st.item_ids
        ordered = [
            r
            for r in sorted(score, key=lambda r: (-score[r], r))
            if r not in exclude and for_sale(names[r])
        ]
        begin("rank")
        if strategy == "ranked" and not spent:
            left = budget - (time.perf_counter() - t0)
            head = self._ranked(
                ordered[:RANK_TOP],
                gens,
                ctx,
                user_id,
                min(left, budget * self.settings.ranker_budget),
                fallbacks,
                versions,
            )
            ordered = head + ordered[RANK_TOP:]
        t = lap("ranking", t)
        begin("rerank")
        slots = [s for s in self.settings.explore_slots if s < k]
        if spent or preview:
            slots = []
        page = self._diversify(ordered, k - len(slots)) if not spent else ordered[:k]
        arm: str | None = None
        decision: str | None = None
        explore: list[int] = []
        if slots:
            arm, decision, explore = self._explore(
                user_id, ctx, surface, item_id, category, exclude | set(page), len(slots), fallbacks
            )
            explore = [r for r in explore if for_sale(names[r])]
        if len(page) + len(explore) < k:  # top up from the rest of the order, then popularity
            have = set(page) | set(explore)
            page += [r for r in ordered if r not in have][: k - len(page) - len(explore)]
        if len(page) + len(explore) < k:
            have = set(page) | set(explore) | exclude
            more = self._popularity(n + k + len(have))["popularity"][0].tolist()
            for r in more:
                if r not in have and for_sale(names[r]):
                    page.append(r)
                    reasons.setdefault(r, ["popularity"])
                    score.setdefault(r, 0.0)
                    if len(page) + len(explore) >= k:
                        break
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
        lap("rerank", t)
        retriever_version = self.models.retriever_version
        if "two-tower" in gens and retriever_version is not None:
            versions["two_tower"] = f"{self.settings.two_tower_model}/{retriever_version}"
        latency["total"] = round((time.perf_counter() - t0) * 1000.0, 3)
        for reason in dict.fromkeys(fallbacks):
            m["fallbacks"].labels(reason).inc()
        m["requests"].labels(strategy).inc()
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
            surface=surface,
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
