"""The served candidate sources: one object per source, each answering ``top_n(context, n)``.

The request path (``Pipeline``) calls only this contract. Each source reads the fitted state
(``OnlineState``) through its public methods and the request's ``RequestContext``; none reads
a generator's private fields. ``missing()`` names the fallback a source counts when it cannot
serve (``generators_missing``: its generator was not built; ``index_missing``: no two-tower
index is loaded although one is configured), ``None`` when it can.

* ``repeat`` / ``co-occurrence`` — the fitted ``RepeatPurchase`` / ``CoOccurrence``
  (their own ``top_n``: the same ranking as their offline ``score``);
* ``session`` — items bought with the session's recent items (``CoOccurrence.session_top_n``);
* ``two-tower`` — the registered retriever: user tower over recent items and history, FAISS
  search over the item tower (items added while serving included);
* ``content`` — text embeddings close to the anchor, recent items and history;
* ``category`` — trending items of the categories the user browses (and the page's);
* ``similar`` — the product surface: bought with the viewed item, plus its category;
* ``ease`` — EASE^R item-item weights over the user's purchases (``OnlineState.ease``; λ from
  the registered parameters; catalogues over ``MAX_DENSE_ITEMS`` items have none);
* ``trending`` / ``popularity`` — the same list for everyone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from flywheel.recsys._candidates import RequestContext, sparse_top

if TYPE_CHECKING:
    from flywheel.recsys._models import ModelHandles
    from flywheel.recsys._state import OnlineState

Hits = tuple[np.ndarray, np.ndarray]
_EMPTY: Hits = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))
EASE_LAMBDA = 500.0  # BASELINES.md's reference λ, used until tune_pipeline chooses one
SIMILAR_SAME_CATEGORY = 0.2  # set by hand in the first online version: a weak same-category prior


class ServedSource(Protocol):
    """What the request path needs of a source: a name, ``missing()`` and ``top_n``."""

    name: str

    def missing(self) -> str | None: ...

    def top_n(self, context: RequestContext, n: int) -> Hits: ...


class _StateSource:
    name = ""

    def __init__(self, state: OnlineState) -> None:
        self.state = state

    def missing(self) -> str | None:
        return None


class RepeatSource(_StateSource):
    """The user's own past items (``RepeatPurchase.top_n``)."""

    name = "repeat"

    def missing(self) -> str | None:
        return "generators_missing" if self.state.repeat is None else None

    def top_n(self, context: RequestContext, n: int) -> Hits:
        repeat = self.state.repeat
        return _EMPTY if repeat is None else repeat.top_n(context, n)


class CoOccurrenceSource(_StateSource):
    """Items bought with the user's purchases (``CoOccurrence.top_n``; copy-on-write snapshot)."""

    name = "co-occurrence"

    def missing(self) -> str | None:
        return "generators_missing" if self.state.cooc is None else None

    def top_n(self, context: RequestContext, n: int) -> Hits:
        cooc = self.state.cooc
        return _EMPTY if cooc is None else cooc.top_n(context, n)


class SessionSource(CoOccurrenceSource):
    """Items bought with the session's items (``CoOccurrence.session_top_n``)."""

    name = "session"

    def top_n(self, context: RequestContext, n: int) -> Hits:
        cooc = self.state.cooc
        if cooc is None or not context.recent_rows:
            return _EMPTY
        return cooc.session_top_n(context, n)


class TwoTowerSource(_StateSource):
    """The registered two-tower retriever (``ModelHandles.retriever``)."""

    name = "two-tower"

    def __init__(self, state: OnlineState, models: ModelHandles | None) -> None:
        super().__init__(state)
        self.models = models

    def missing(self) -> str | None:
        if self.models is None or not self.models.two_tower_model:
            return None
        return "index_missing" if self.models.retriever is None else None

    def top_n(self, context: RequestContext, n: int) -> Hits:
        retriever = None if self.models is None else self.models.retriever
        if retriever is None:
            return _EMPTY
        history = list(dict.fromkeys(list(context.recent_items) + list(context.history_items)))
        vec = retriever.embed_users([history])
        ids, scores = retriever.search(vec, n)[0]
        index = self.state.item_index
        pairs = [(index[i], float(s)) for i, s in zip(ids, scores, strict=False) if i in index]
        if not pairs:
            return _EMPTY
        rows = np.asarray([p[0] for p in pairs], dtype=np.int64)
        # Inner products of unit vectors: shift to (0, 2] so that every hit counts as positive.
        values = np.asarray([p[1] for p in pairs], dtype=np.float64) + 1.0 + 1e-6
        return rows, values


class ContentSource(_StateSource):
    """Text embeddings close to the anchor, the recent items and the history (newest first)."""

    name = "content"

    def top_n(self, context: RequestContext, n: int) -> Hits:
        st = self.state
        index = st.content_index
        if index is None:
            return _EMPTY
        items = [context.anchor_item] if context.anchor_item else []
        items += list(context.recent_items) + list(context.history_items)
        profile = st.content_profile(list(dict.fromkeys(items))[:20])
        if profile is None:
            return _EMPTY
        ids, scores = index.search(profile[None, :].astype(np.float32), n)
        rows = [st.item_index[i] for i in ids[0] if i in st.item_index]
        if not rows:
            return _EMPTY
        values = np.clip(np.asarray(scores[0][: len(rows)], dtype=np.float64), 1e-6, None)
        return np.asarray(rows, dtype=np.int64), values


class HistoryContentSource(_StateSource):
    """Content as ``ContentSimilarity`` defines it offline (the ranker's ``content`` feature):
    cosine to the user's time-decayed purchase profile."""

    name = "content"

    def top_n(self, context: RequestContext, n: int) -> Hits:
        st = self.state
        if context.user_row is None or st.repeat is None or st.content_index is None:
            return _EMPTY
        w = st.repeat.user_weights(context.user_row)
        if not w.nnz:
            return _EMPTY
        profile = np.asarray(w.data, dtype=np.float32) @ st.content[w.indices]
        norm = float(np.linalg.norm(profile))
        if norm == 0:
            return _EMPTY
        ids, scores = st.content_index.search((profile / norm)[None, :].astype(np.float32), n)
        pairs = [(st.item_index[i], float(v)) for i, v in zip(ids[0], scores[0], strict=False)]
        rows = np.asarray([r for r, _ in pairs], dtype=np.int64)
        return rows, np.asarray([v for _, v in pairs], dtype=np.float64)


class CategorySource(_StateSource):
    """Trending items of the user's (and the page's) categories, by the category's share."""

    name = "category"

    def top_n(self, context: RequestContext, n: int) -> Hits:
        st = self.state
        counts = dict(context.category_counts)
        if context.context_category:
            cat = context.context_category
            counts[cat] = counts.get(cat, 0.0) + max(1.0, sum(counts.values()))
        trend = st.trending.scores  # read without a copy: a racing += is harmless here
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
            return _EMPTY
        return sparse_top(np.concatenate(parts_rows), np.concatenate(parts_scores), n)


class SimilarSource(CoOccurrenceSource):
    """Items like the viewed one: bought with it (normalised ``S`` row), plus its category."""

    name = "similar"

    def top_n(self, context: RequestContext, n: int) -> Hits:
        st = self.state
        a = context.anchor_catalog_row
        if a is None:
            return _EMPTY
        same = st.category_rows.get(str(st.categories[a]), np.empty(0, dtype=np.int64))
        scores: dict[int, float] = dict.fromkeys(same.tolist(), SIMILAR_SAME_CATEGORY)
        cooc = st.cooc
        if cooc is not None and a < st.n_train:
            sim_row = cooc.similarity()[a]
            top = float(sim_row.data.max()) if sim_row.nnz else 1.0
            for j, v in zip(sim_row.indices.tolist(), sim_row.data.tolist(), strict=True):
                scores[j] = scores.get(j, 0.0) + v / top
        scores.pop(a, None)
        if not scores:
            return _EMPTY
        return sparse_top(
            np.fromiter(scores.keys(), dtype=np.int64, count=len(scores)),
            np.fromiter(scores.values(), dtype=np.float64, count=len(scores)),
            n,
        )


class EaseSource(_StateSource):
    """EASE^R scores of the user's purchases (``X_u B``), λ set from ``PipelineParams``."""

    name = "ease"

    def __init__(self, state: OnlineState, lam: float = EASE_LAMBDA) -> None:
        super().__init__(state)
        self.lam = lam

    def top_n(self, context: RequestContext, n: int) -> Hits:
        if context.user_row is None:
            return _EMPTY
        model = self.state.ease(self.lam)
        if model is None:
            return _EMPTY
        scores = model.score(np.asarray([context.user_row]))[0]
        return sparse_top(np.arange(len(scores)), scores, n)


class TrendingSource(_StateSource):
    """Trending items (half-life decayed counts, live events added)."""

    name = "trending"

    def top_n(self, context: RequestContext, n: int) -> Hits:
        del context
        return self.state.trending_top(n)


class PopularitySource(_StateSource):
    """All-time popular items (the last resort of every page)."""

    name = "popularity"

    def top_n(self, context: RequestContext, n: int) -> Hits:
        del context
        return self.state.popularity_top(n)


# Which sources each strategy runs (the request's experiment variant or the configured one).
STRATEGY_SOURCES: Mapping[str, tuple[str, ...]] = {
    "ranked": (
        "repeat",
        "co-occurrence",
        "ease",
        "session",
        "two-tower",
        "content",
        "category",
        "similar",
        "trending",
    ),
    "hybrid": (
        "repeat",
        "co-occurrence",
        "ease",
        "session",
        "two-tower",
        "content",
        "category",
        "similar",
        "trending",
    ),
    "session": ("session", "category", "similar", "trending"),
    "content": ("content", "category", "similar", "trending"),
    "popularity": ("trending",),
}
SERVED_SOURCES = STRATEGY_SOURCES["ranked"]
"""Every source the served pipeline can blend (its weights cover these)."""


def served_sources(state: OnlineState, models: ModelHandles | None) -> dict[str, Any]:
    """The named served sources over ``state`` (and the two-tower of ``models``)."""
    sources: list[Any] = [
        RepeatSource(state),
        CoOccurrenceSource(state),
        EaseSource(state),
        SessionSource(state),
        TwoTowerSource(state, models),
        ContentSource(state),
        CategorySource(state),
        SimilarSource(state),
        TrendingSource(state),
        PopularitySource(state),
    ]
    return {s.name: s for s in sources}
