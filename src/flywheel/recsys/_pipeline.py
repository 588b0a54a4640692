"""The served pipeline: feature read -> sources -> blend -> ranker -> re-rank, as one object.

``Pipeline`` is what ``GET /recommendations`` runs (``OnlineRecommender`` adds the experiment
assignment, the deadline on the feature read, this process's fresh events and the exploration
slots around it) and what the offline evaluator replays (``replay``: the same object, the same
feature read from a store ingested as of the cut-off, no exploration). Its parameters
(``PipelineParams``: blend weights per view, chosen on a validation window by
``tune_pipeline``) are registered with the trained artifacts (``recs-pipeline``) and read by
the served pipeline.

Stages:

1. **features** — RFM, last-N items / categories and per-category activity from the online
   store (``read_features``), merged with the events this process saw (``merge_session``);
2. **candidates** — each source of the strategy (``STRATEGY_SOURCES``) through the source
   contract (``top_n``); filters: not-for-sale codes, blocked items, the anchor, and with
   ``new_only`` what the user already bought;
3. **blend** — the registered learned blend of the request's view (``all`` / ``new-only``):
   a LambdaRank model over each source's score and rank and user x item features
   (``flywheel.recsys._learned``); a view without one: ``sum_g w_g * score_g / max score_g``
   with the registered weights, boosted by the share of the item's category in the user's
   recent activity. With ``new_only`` each source proposes ``per_generator`` items beyond the
   user's purchases (which are filtered out), and ``repeat`` is not asked;
4. **rank** — for the ``ranked`` strategy the top ``RANK_TOP`` scored by the LightGBM ranker
   served by ``flywheel.serving`` (unavailable, failing or late: the blended order);
5. **re-rank** — MMR diversity (the registered, tuned value unless ``recsys.diversity`` sets
   one) over content embeddings and categories, then the page is topped up from the rest of
   the order and then popularity.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._candidates import RequestContext
from flywheel.recsys._errors import RecsysError
from flywheel.recsys._ingest import RECENT_VIEW, USER_CATEGORY_VIEW, USER_VIEW
from flywheel.recsys._learned import BlendModel, candidate_features
from flywheel.recsys._learned import prepare as prepare_learned
from flywheel.recsys._params import PipelineParams
from flywheel.recsys._rerank import for_sale, mmr
from flywheel.recsys._sources import (
    EASE_LAMBDA,
    STRATEGY_SOURCES,
    HistoryContentSource,
    served_sources,
)

if TYPE_CHECKING:
    from flywheel.features import FeatureStore
    from flywheel.project import Project
    from flywheel.recsys._models import ModelHandles
    from flywheel.recsys._state import OnlineState

log = logging.getLogger(__name__)

STRATEGIES = ("ranked", "hybrid", "content", "popularity", "session")
RANK_TOP = 200  # candidates sent to the ranker (set by hand: the ranker's latency budget)
RANKER_RETRY_S = 2.0  # after a ranker failure, skip it this long
NEW_ONLY_EXTRA_MAX = 1_000  # set by hand: bounds a new-only request's extra source depth
Gens = dict[str, tuple[np.ndarray, np.ndarray]]


def _transient(exc: BaseException | None) -> bool:
    """True for a ranker error that says nothing about the next request: a late answer, or a
    shed for this request's budget."""
    from flywheel.serving import DeadlineExceeded, QueueFull

    if isinstance(exc, DeadlineExceeded):
        return True
    return isinstance(exc, QueueFull) and exc.reason == "expected_wait"


@dataclass(frozen=True)
class RecsysSettings:
    """Knobs of the request path (``recsys:`` in ``flywheel.yaml``; see ``RecsysConfig``).

    ``pipeline_model``: the registered ``PipelineParams`` (``tune_pipeline``) the blend reads.
    """

    deadline_ms: float = 50.0
    feature_budget: float = 0.5  # share of the deadline the feature read may take
    experiment: str | None = None
    strategy: str = "ranked"
    per_generator: int = 100
    trending_half_life_days: float = 14.0
    explore_experiment: str | None = "recs-explore"
    explore_slots: tuple[int, ...] = (4, 11)
    diversity: float | None = None  # None: the registered pipeline's (tuned) diversity
    blocked_items: tuple[str, ...] = ()
    content_method: str = "auto"
    two_tower_model: str | None = "recs-two-tower"
    ranker_endpoint: str | None = "recs-ranker"
    ranker_budget: float = 0.35
    pipeline_model: str | None = "recs-pipeline"
    background_interval_s: float = 1.0  # catalogue follow, reward flush
    model_refresh_s: float = 5.0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise RecsysError(f"strategy: {self.strategy!r} is not one of {', '.join(STRATEGIES)}")


def settings_for(project: Project) -> RecsysSettings:
    """``RecsysSettings`` from the ``recsys:`` section of the project's config."""
    cfg = getattr(project.config, "recsys", None)
    if cfg is None:
        return RecsysSettings()
    return RecsysSettings(
        deadline_ms=cfg.deadline_ms,
        feature_budget=cfg.feature_budget,
        experiment=cfg.experiment,
        strategy=cfg.strategy,
        explore_experiment=cfg.explore_experiment,
        explore_slots=tuple(cfg.explore_slots),
        diversity=cfg.diversity,
        blocked_items=tuple(cfg.blocked_items),
        content_method=cfg.content_method,
        two_tower_model=cfg.two_tower_model,
        ranker_endpoint=cfg.ranker_endpoint,
        ranker_budget=cfg.ranker_budget,
    )


@dataclass
class UserContext:
    """What the features stage learned about a user (defaults when the read fell back)."""

    recent_items: list[str] = field(default_factory=list)  # most recent first
    recent_categories: list[str] = field(default_factory=list)
    category_counts: dict[str, float] = field(default_factory=dict)
    rfm: dict[str, Any] = field(default_factory=dict)
    known: bool = False


def read_features(store: FeatureStore, user_id: int) -> UserContext:
    """The user's features from the online store (one read per entity set)."""
    ctx = UserContext()
    user = store.get_online_features(
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
        per_cat = store.get_online_features(
            [f"{USER_CATEGORY_VIEW}:events_1d"],
            {"user_id": [user_id] * len(cats), "category": cats},
        ).to_dict(include_entities=False)
        ctx.category_counts = {
            c: float(n or 0) for c, n in zip(cats, per_cat["events_1d"], strict=True)
        }
    return ctx


def merge_session(ctx: UserContext, session: Sequence[tuple[str, str]]) -> UserContext:
    """``ctx`` with the (item, category) events this process saw but the stream processor may
    not have applied yet: recent items most recent first, category counts at least as high."""
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
    return ctx


@dataclass(frozen=True)
class PipelineRequest:
    """One request: who, how many, on which surface, with which filters and strategy."""

    user_id: int
    k: int = 20
    surface: str = "home"
    item_id: str | None = None
    category: str | None = None
    new_only: bool = False
    strategy: str = "ranked"


@dataclass
class PipelineResult:
    """The pipeline's answer before exploration: the page (diversified, ``k - reserve`` rows),
    the whole order it came from, each row's blended score and reasons."""

    page: list[int]
    ordered: list[int]
    score: dict[int, float]
    reasons: dict[int, list[str]]
    sources: tuple[str, ...]
    exclude: set[int]
    spent: bool = False


class Stages:
    """Callbacks around the stages (``OnlineRecommender`` times them and opens spans)."""

    def begin(self, name: str) -> None:
        """A stage starts."""

    def lap(self, stage: str) -> None:
        """A stage ended (its latency is recorded under ``stage``)."""


class Pipeline:
    """The served pipeline over fitted sources (see the module docstring).

    Args:
        state: the fitted sources and catalogue (``OnlineState``).
        params: the blend weights (``PipelineParams``; registered by ``tune_pipeline``).
        settings: per-source depth, diversity, blocked items, ranker budget.
        models: the registered two-tower and the ranker client (None: neither).
        store: the feature store the features and the ranker's item features are read from.
    """

    def __init__(
        self,
        state: OnlineState,
        params: PipelineParams,
        settings: RecsysSettings | None = None,
        *,
        models: ModelHandles | None = None,
        store: FeatureStore | None = None,
    ) -> None:
        self.state = state
        self.settings = settings or RecsysSettings()
        self.models = models
        self.store = store
        self.sources = served_sources(state, models)
        self.params = params
        self._ranker_retry_at = 0.0

    @property
    def params(self) -> PipelineParams:
        """The blend weights and source parameters served now (swapped on refresh)."""
        return self._params

    @params.setter
    def params(self, params: PipelineParams) -> None:
        lam = float(params.source_params.get("ease", {}).get("lambda", EASE_LAMBDA))
        self.state.ease(lam)  # fitted here (start-up, refresh), not by the first request
        self.sources["ease"].lam = lam
        models = {view: BlendModel.from_text(text) for view, text in params.rankers.items()}
        if models:
            prepare_learned(self.state)  # here (start-up, refresh), not in the first request
        self._served = (params, models)  # swapped as one: a request reads a consistent pair

    @property
    def _params(self) -> PipelineParams:
        return self._served[0]

    def blend_model(self, new_only: bool) -> BlendModel | None:
        """The learned blend of the request's view, if the registered parameters have one."""
        return self._served[1].get("new-only" if new_only else "all")

    @property
    def diversity(self) -> float:
        """The re-rank's MMR diversity: ``recsys.diversity`` when set, else the tuned one."""
        d = self.settings.diversity
        return self._params.diversity if d is None else float(d)

    # -- stages -------------------------------------------------------------------------------

    def read(self, user_id: int) -> UserContext:
        """The features stage without a deadline (the replay's read)."""
        if self.store is None:
            return UserContext()
        return read_features(self.store, user_id)

    def request_context(self, request: PipelineRequest, ctx: UserContext) -> RequestContext:
        """What the sources may read for this request (rows of the fitted catalogue)."""
        st = self.state
        n_train = st.n_train
        recent_rows = [
            st.item_index[i]
            for i in ctx.recent_items
            if i in st.item_index and st.item_index[i] < n_train
        ]
        anchor = request.item_id
        anchor_row = st.item_index.get(anchor) if anchor is not None else None
        counts = dict(ctx.category_counts)
        return RequestContext(
            user_row=st.user_index.get(request.user_id),
            recent_rows=tuple(recent_rows),
            anchor_row=anchor_row if anchor_row is not None and anchor_row < n_train else None,
            anchor_catalog_row=anchor_row if request.surface == "product" else None,
            anchor_item=anchor,
            recent_items=tuple(ctx.recent_items),
            history_items=tuple(st.history(request.user_id)),
            category_counts=counts,
            context_category=request.category if request.strategy != "popularity" else None,
        )

    def candidates(
        self,
        request: PipelineRequest,
        context: RequestContext,
        fallbacks: list[str],
        depth: int | None = None,
    ) -> Gens:
        """Each source of the strategy: its top ``depth`` (default ``per_generator``) (rows,
        scores), sparse. With ``new_only``, ``repeat`` (the user's purchases) is not asked."""
        from flywheel import telemetry

        n = self.settings.per_generator if depth is None else depth
        out: Gens = {}
        missing: list[str] = []
        for name in STRATEGY_SOURCES[request.strategy]:
            if request.new_only and name == "repeat":
                continue
            source = self.sources[name]
            reason = source.missing()
            if reason is not None:
                missing.append(reason)
                continue
            attrs: dict[str, Any] = {"flywheel.source": name}
            with telemetry.span("recs.source", **attrs) as sp:
                rows, scores = source.top_n(context, n)
                if len(rows):
                    out[name] = (rows, scores)
                sp.set_attribute("flywheel.returned", len(rows))
        fallbacks.extend(dict.fromkeys(missing))
        return out

    def popularity(self, n: int) -> Gens:
        """The last resort: the ``n`` most popular items."""
        return {"popularity": self.sources["popularity"].top_n(RequestContext(), n)}

    def blend(
        self,
        gens: Mapping[str, tuple[np.ndarray, np.ndarray]],
        request: PipelineRequest,
        counts: Mapping[str, float],
        exclude: set[int] | frozenset[int] = frozenset(),
    ) -> tuple[dict[int, float], dict[int, list[str]]]:
        """Each candidate's score: the learned blend of the request's view over the candidates
        not in ``exclude`` (``candidate_features``), else the weighted sum of the sources'
        max-normalised scores times ``1 + category_boost * share`` of the item's category in
        the user's activity. A lone source (the popularity fallback) keeps its own order."""
        model = self.blend_model(request.new_only)
        if model is not None and len(gens) > 1:
            return self._learned_blend(model, gens, request, exclude)
        weights = self.params.weights_for(request.new_only)
        score: dict[int, float] = {}
        reasons: dict[int, list[str]] = {}
        only = len(gens) == 1
        for name, (rows, values) in gens.items():
            # A lone source (the popularity fallback) keeps its own order whatever its weight.
            w = 1.0 if only else weights.get(name, 0.0)
            if not len(rows) or w <= 0:
                continue
            top = float(values[0]) or 1.0
            for r, v in zip(rows.tolist(), values.tolist(), strict=True):
                score[r] = score.get(r, 0.0) + w * v / top
                reasons.setdefault(r, []).append(name)
        total = sum(counts.values())
        boost = self.params.category_boost
        if total > 0 and boost:
            cats = self.state.categories
            for r in score:
                score[r] *= 1.0 + boost * counts.get(str(cats[r]), 0.0) / total
        return score, reasons

    def _learned_blend(
        self,
        model: BlendModel,
        gens: Mapping[str, tuple[np.ndarray, np.ndarray]],
        request: PipelineRequest,
        exclude: set[int] | frozenset[int],
    ) -> tuple[dict[int, float], dict[int, list[str]]]:
        reasons: dict[int, list[str]] = {}
        for name, (rows, _values) in gens.items():
            for r in rows.tolist():
                reasons.setdefault(r, []).append(name)
        names = self.state.item_ids
        cand = np.asarray(
            sorted(r for r in reasons if r not in exclude and for_sale(names[r])), dtype=np.int64
        )
        if not len(cand):
            return {}, {}
        user_row = self.state.user_index.get(request.user_id)
        scores = model.predict(candidate_features(self.state, user_row, gens, cand))
        score = dict(zip(cand.tolist(), scores.tolist(), strict=True))
        return score, {r: reasons[r] for r in score}

    def excluded(self, request: PipelineRequest, bought_here: Iterable[str] = ()) -> set[int]:
        """Rows never shown: blocked items, the anchor, and with ``new_only`` the user's
        purchases (ingested, plus ``bought_here``: purchases this process saw)."""
        st = self.state
        out = {st.item_index[i] for i in self.settings.blocked_items if i in st.item_index}
        if request.item_id is not None and request.item_id in st.item_index:
            out.add(st.item_index[request.item_id])
        if request.new_only:
            out.update(st.purchased_rows(request.user_id).tolist())
            out.update(st.item_index[i] for i in bought_here if i in st.item_index)
        return out

    def rank(
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
        ranker = None if self.models is None else self.models.ranker
        if not rows or not self.settings.ranker_endpoint:  # no ranker configured: blend order
            return rows
        if ranker is None or time.monotonic() < self._ranker_retry_at:
            fallbacks.append("ranker_unavailable")
            return rows
        try:
            features = self._ranker_features(rows, gens, ctx, user_id)
            left = budget_s - (time.perf_counter() - started)
            scores, version = ranker.score(features, user_id=user_id, timeout_s=max(left, 0.001))
        except Exception as exc:
            log.debug("ranker fallback: %s", exc)
            fallbacks.append("ranker_unavailable")
            # A circuit breaker: do not pay for features while nothing is served; try again
            # after RANKER_RETRY_S (a promoted version is picked up within that time). A late
            # answer, or one shed because its expected wait exceeded this request's budget
            # (429 "expected_wait": it depends on the budget), is only this request's fallback:
            # the next one may be in time. A full queue opens the breaker like a failure.
            if not _transient(exc.__cause__):
                self._ranker_retry_at = time.monotonic() + RANKER_RETRY_S
            return rows
        versions["ranker"] = version
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        return [rows[i] for i in order.tolist()]

    def _ranker_features(
        self, rows: list[int], gens: Gens, ctx: UserContext, user_id: int
    ) -> np.ndarray:
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
        # profile (the retrieval source also follows the session and the anchor).
        cands.pop("content", None)
        row = st.user_index.get(user_id)
        history_content = HistoryContentSource(st).top_n(RequestContext(user_row=row), depth)
        if len(history_content[0]):
            cands["content"] = history_content
        if self.store is None:
            raise RecsysError("ranker: no feature store to read the item features from")
        return ranker_features(
            ctx.rfm,
            cands,
            rows,
            items=read_item_features(self.store, [st.item_ids[r] for r in rows]),
            history=st.history_index().history(row),
            categories=st.categories,
        )

    def diversify(self, rows: list[int], k: int, *, diversity: float | None = None) -> list[int]:
        """The top ``k`` of ``rows`` (best first) re-picked by MMR; relevance decays with the
        position like a DCG discount, so diversity mostly reshuffles the lower positions.
        ``diversity``: default the served one (``Pipeline.diversity``)."""
        lam = 1.0 - (self.diversity if diversity is None else diversity)
        if lam >= 1.0 or len(rows) <= 1:
            return rows[:k]
        pool = rows[: max(3 * k, 60)]
        rel = (1.0 / np.log2(np.arange(len(pool)) + 2.0)).tolist()
        st = self.state
        picked = mmr(
            rel, [str(st.categories[r]) for r in pool], k, lam, st.content[np.asarray(pool)]
        )
        return [pool[i] for i in picked]

    # -- the whole pipeline -------------------------------------------------------------------

    def run(
        self,
        request: PipelineRequest,
        ctx: UserContext,
        *,
        reserve: int = 0,
        deadline: float = float("inf"),
        fallbacks: list[str] | None = None,
        versions: dict[str, str] | None = None,
        stages: Stages | None = None,
        bought_here: Iterable[str] = (),
        ranker_budget_s: float | None = None,
    ) -> PipelineResult:
        """Sources -> blend -> rank -> re-rank for a user whose features are ``ctx``.

        ``reserve``: positions left for exploration (the page holds ``k - reserve`` rows);
        ``deadline``: a ``time.perf_counter()`` instant; past it the page is popularity;
        ``ranker_budget_s``: the most the ranker may take (default: its share of the deadline).
        """
        fallbacks = [] if fallbacks is None else fallbacks
        versions = {} if versions is None else versions
        stages = stages or Stages()
        st = self.state
        exclude = self.excluded(request, bought_here)
        n = max(self.settings.per_generator, request.k)
        depth = n + min(len(exclude), NEW_ONLY_EXTRA_MAX) if request.new_only else n
        spent = time.perf_counter() >= deadline
        stages.begin("candidates")
        if spent:
            fallbacks.append("deadline")
            gens = self.popularity(n + len(exclude))
        else:
            try:
                context = self.request_context(request, ctx)
                gens = self.candidates(request, context, fallbacks, depth)
            except Exception:  # a source broke: popularity keeps the page full
                log.exception("recsys sources failed")
                fallbacks.append("generators_missing")
                gens = {}
            if sum(len(r) for r, _ in gens.values()) == 0:
                gens = self.popularity(n + len(exclude))
        stages.lap("candidates")
        stages.begin("blend")
        score, reasons = self.blend(gens, request, ctx.category_counts, exclude)
        names = st.item_ids
        ordered = [
            r
            for r in sorted(score, key=lambda r: (-score[r], r))
            if r not in exclude and for_sale(names[r])
        ]
        stages.begin("rank")
        if request.strategy == "ranked" and not spent:
            now = time.perf_counter()
            share = self._ranker_budget_s() if ranker_budget_s is None else ranker_budget_s
            budget = min(deadline - now, share)
            head = self.rank(
                ordered[:RANK_TOP], gens, ctx, request.user_id, budget, fallbacks, versions
            )
            ordered = head + ordered[RANK_TOP:]
        stages.lap("ranking")
        stages.begin("rerank")
        size = request.k - reserve
        page = self.diversify(ordered, size) if not spent else ordered[: request.k]
        return PipelineResult(page, ordered, score, reasons, tuple(gens), exclude, spent)

    def _ranker_budget_s(self) -> float:
        return self.settings.deadline_ms / 1000.0 * self.settings.ranker_budget

    def fill(self, result: PipelineResult, k: int, explore: Sequence[int] = ()) -> list[int]:
        """Top the page up to ``k - len(explore)`` rows: from the rest of the order, then
        popularity (reason ``popularity``). Returns the page; ``result`` gains the rows."""
        page, score, reasons = result.page, result.score, result.reasons
        if len(page) + len(explore) < k:
            have = set(page) | set(explore)
            page += [r for r in result.ordered if r not in have][: k - len(page) - len(explore)]
        if len(page) + len(explore) < k:
            have = set(page) | set(explore) | result.exclude
            n = max(self.settings.per_generator, k)
            more = self.popularity(n + k + len(have))["popularity"][0].tolist()
            names = self.state.item_ids
            for r in more:
                if r not in have and for_sale(names[r]):
                    page.append(r)
                    reasons.setdefault(r, ["popularity"])
                    score.setdefault(r, 0.0)
                    if len(page) + len(explore) >= k:
                        break
        return page

    def replay(self, request: PipelineRequest) -> list[str]:
        """The served page (item ids) for ``request``, features read now from the store: what
        ``GET /recommendations`` returns with no exploration and no events of its own."""
        ctx = merge_session(self.read(request.user_id), [])
        result = self.run(request, ctx)
        page = self.fill(result, request.k)[: request.k]
        return [self.state.item_ids[r] for r in page]
