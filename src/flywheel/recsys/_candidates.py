"""Candidate generators that need no other system, their union (with reasons) and a blend.

Every generator follows the ``CandidateGenerator`` contract: it has a ``name`` (recorded as
the *reason* an item was proposed), ``params``, ``fit(train)`` returning itself, and
``score(user_rows)`` returning dense scores over the train items where ``-inf`` means "not a
candidate" (a generator may have no candidates at all for some users). Higher is better.

* ``RepeatPurchase`` — the user's own past items, by time-decayed number of invoices;
* ``CoOccurrence`` — items bought in the same basket (or session) as the user's items,
  normalised like cosine; ``update(baskets)`` adds new baskets incrementally (identical to
  refitting on all of them);
* ``Popularity`` — all-time popularity, or *trending* with a half-life; ``update`` adds events;
* ``ContentSimilarity`` — cosine between product-text embeddings (MiniLM, TF-IDF fallback) and
  the user's time-decayed profile; it scores every item, so new items have a path in;
* ``CandidateUnion`` — the union of each generator's top ``per_generator`` items,
  de-duplicated, each with the names of the generators that proposed it, ordered by
  reciprocal-rank fusion;
* ``HybridBlend`` — a weighted sum of the generators' per-user max-normalised scores, weights
  chosen on a validation split (``tune_blend_weights``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from flywheel.recsys._errors import RecsysError
from flywheel.recsys._metrics import View, metrics_from_rankings, top_k, view_truth
from flywheel.recsys._text import TextEmbedder, TextMethod

if TYPE_CHECKING:
    import scipy.sparse as sp

    from flywheel.recsys._metrics import ViewMetrics
    from flywheel.recsys._protocol import Split, TrainData


@runtime_checkable
class CandidateGenerator(Protocol):
    """Proposes items for users. ``score`` rows: one per user, one column per train item;
    ``-inf`` = not proposed. ``score`` never changes the generator."""

    name: str
    params: dict[str, Any]

    def fit(self, train: TrainData) -> CandidateGenerator: ...

    def score(self, user_rows: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class RequestContext:
    """What a source may read to answer one request online (rows of the fitted catalogue)."""

    user_row: int | None = None  # the user's train row (None: unknown user)
    recent_rows: tuple[int, ...] = ()  # the session's train items, most recent first
    anchor_row: int | None = None  # the item being viewed, when it is a train item
    anchor_catalog_row: int | None = None  # the item viewed on the product surface (any row)
    anchor_item: str | None = None  # its id
    recent_items: tuple[str, ...] = ()  # the session's items (new ones too), most recent first
    history_items: tuple[str, ...] = ()  # the user's ingested purchases, most recent first
    category_counts: Mapping[str, float] = field(default_factory=dict)  # recent activity
    context_category: str | None = None  # the category the request names


@runtime_checkable
class CandidateSource(CandidateGenerator, Protocol):
    """A generator served online from the same fitted state it is measured with offline:
    ``score`` (dense, offline) and ``top_n`` (sparse, per request) rank alike."""

    def top_n(self, context: RequestContext, n: int) -> tuple[np.ndarray, np.ndarray]: ...


def sparse_top(rows: np.ndarray, values: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``n`` best positive (row, value) pairs, best first (ties: lower row first)."""
    keep = np.isfinite(values) & (values > 0)
    rows, values = np.asarray(rows)[keep], np.asarray(values, dtype=np.float64)[keep]
    if len(rows) > n:
        part = np.argpartition(-values, n - 1)[:n]
        rows, values = rows[part], values[part]
    order = np.lexsort((rows, -values))
    return rows[order].astype(np.int64), values[order]


_EMPTY = (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float64))


def decayed_user_item(train: TrainData, half_life_days: float | None) -> sp.csr_matrix:
    """User x item weights: one per invoice holding the pair, times 0.5 ** (age / half-life)."""
    import scipy.sparse as sp

    ev = train.events
    if half_life_days is None:
        w = np.ones(len(ev), dtype=np.float64)
    else:
        w = np.power(0.5, ev["age_days"].to_numpy() / float(half_life_days))
    m = sp.csr_matrix(
        (w, (ev["user"].to_numpy(), ev["item"].to_numpy())), shape=(train.n_users, train.n_items)
    )
    m.sum_duplicates()
    return m


def _check_half_life(name: str, half_life_days: float | None) -> None:
    if half_life_days is not None and not half_life_days > 0:
        raise RecsysError(f"{name}: half_life_days must be > 0 or None (got {half_life_days})")


class _Generator:
    name = ""
    params: dict[str, Any]

    def __init__(self) -> None:
        self.params = {}
        self._train: TrainData | None = None

    @property
    def train(self) -> TrainData:
        if self._train is None:
            raise RecsysError(f"{self.name}: score() called before fit()")
        return self._train


def _sparse_rows_to_scores(rows: sp.spmatrix) -> np.ndarray:
    dense = np.asarray(rows.toarray(), dtype=np.float64)
    dense[dense <= 0] = -np.inf
    return dense


class RepeatPurchase(_Generator):
    """The user's own past items, by time-decayed invoice count (ties by popularity)."""

    name = "repeat"

    def __init__(self, half_life_days: float | None = 60.0) -> None:
        super().__init__()
        _check_half_life(self.name, half_life_days)
        self.params = {"half_life_days": half_life_days}

    def fit(self, train: TrainData) -> RepeatPurchase:
        self._train = train
        self._weights = decayed_user_item(train, self.params["half_life_days"])
        pop = np.asarray(train.X.sum(axis=0)).ravel()
        self._tiebreak = 1.0 + 1e-6 * pop / max(pop.max(), 1.0)
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        _ = self.train
        return _sparse_rows_to_scores(self._weights[user_rows]) * self._tiebreak

    def user_weights(self, user_row: int) -> sp.csr_matrix:
        """The user's decayed purchase weights (a 1 x items sparse row)."""
        _ = self.train
        return self._weights[user_row]

    def top_n(self, context: RequestContext, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``score``'s ranking of the user's row, computed on its non-zeros only."""
        if context.user_row is None:
            return _EMPTY
        w = self.user_weights(context.user_row)
        return sparse_top(w.indices, w.data * self._tiebreak[w.indices], n)


class CoOccurrence(_Generator):
    """Items bought together: ``S_ij = co(i, j) / (n_i^α · n_j^(1-α))`` over baskets.

    ``basket="invoice"`` counts pairs within one invoice; ``"session"`` within one user's day.
    A user's score is their time-decayed item weights times ``S``. ``update(baskets)`` adds
    new baskets (each a sequence of item rows) to the counts. ``max_neighbours`` keeps only each
    item's strongest neighbours in ``S`` (ties: lower row first): at a million items a popular
    item co-occurs with 10^5 others, so a user's ``profile @ S`` costs ~8 ms at p99 with every
    neighbour and ~1 ms with 200, keeping ~93 % of the top 100 (``None``: all, the default).
    """

    name = "co-occurrence"

    def __init__(
        self,
        half_life_days: float | None = 60.0,
        alpha: float = 0.5,
        basket: str = "invoice",
        max_neighbours: int | None = None,
    ) -> None:
        super().__init__()
        _check_half_life(self.name, half_life_days)
        if not 0.0 <= alpha <= 1.0:
            raise RecsysError(f"{self.name}: alpha must be within [0, 1] (got {alpha})")
        if basket not in ("invoice", "session"):
            raise RecsysError(f"{self.name}: basket must be 'invoice' or 'session' (got {basket})")
        if max_neighbours is not None and (
            isinstance(max_neighbours, bool)
            or not isinstance(max_neighbours, int)
            or max_neighbours < 1
        ):
            raise RecsysError(
                f"{self.name}: max_neighbours must be an integer >= 1 or None "
                f"(got {max_neighbours!r})"
            )
        self.params = {"half_life_days": half_life_days, "alpha": alpha, "basket": basket}
        if max_neighbours is not None:
            self.params["max_neighbours"] = max_neighbours
        self._similarity: sp.csr_matrix | None = None

    def fit(self, train: TrainData) -> CoOccurrence:
        import scipy.sparse as sp

        self._train = train
        ev = train.events
        if self.params["basket"] == "invoice":
            key = ev["invoice"].to_numpy()
        else:
            day = np.floor(ev["age_days"].to_numpy()).astype(np.int64)
            key = ev["user"].to_numpy().astype(np.int64) * 100_000 + day
        _, basket = np.unique(key, return_inverse=True)
        b = sp.csr_matrix(
            (np.ones(len(ev)), (basket, ev["item"].to_numpy())),
            shape=(int(basket.max()) + 1 if len(ev) else 0, train.n_items),
        )
        b.data[:] = 1.0  # an item twice in one basket counts once
        b.sum_duplicates()
        b.data[:] = 1.0
        self._counts = sp.csr_matrix((train.n_items, train.n_items))
        self._item_baskets = np.zeros(train.n_items)
        self._add(b)
        self._profiles = decayed_user_item(train, self.params["half_life_days"])
        return self

    def _add(self, b: sp.csr_matrix) -> None:
        co = (b.T @ b).tocsr()
        self._item_baskets = self._item_baskets + co.diagonal()
        co.setdiag(0)
        co.eliminate_zeros()
        self._counts = (self._counts + co).tocsr()
        self._similarity = None

    def update(self, baskets: Iterable[Sequence[int]]) -> None:
        """Add new, complete baskets (sequences of item rows) to the item-item counts.

        The counts (and so ``similarity`` and ``similar_items``) end up exactly as if ``fit``
        had seen these baskets too; each call's baskets are new baskets (an item listed twice
        in one basket counts once). Users' purchase profiles are not changed here: they come
        from ``fit`` (online, from the feature store's user history).
        """
        import scipy.sparse as sp

        _ = self.train
        rows, cols = [], []
        for r, items in enumerate(baskets):
            uniq = np.unique(np.asarray(items, dtype=np.int64))
            if len(uniq) and (uniq.min() < 0 or uniq.max() >= self.train.n_items):
                raise RecsysError(f"{self.name}: basket {r} holds an unknown item row")
            rows.extend([r] * len(uniq))
            cols.extend(uniq.tolist())
        if not rows:
            return
        b = sp.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(rows[-1] + 1, self.train.n_items)
        )
        self._add(b)

    @property
    def counts(self) -> sp.csr_matrix:
        """Raw co-occurrence counts (items x items, zero diagonal)."""
        return self._counts

    def similarity(self) -> sp.csr_matrix:
        """The normalised item-item matrix ``S`` (recomputed after updates)."""
        if self._similarity is None:
            import scipy.sparse as sp

            a = self.params["alpha"]
            n = np.maximum(self._item_baskets, 1.0)
            left = sp.diags(n ** (-a))
            right = sp.diags(n ** (a - 1.0))
            sim = (left @ self._counts @ right).tocsr()
            k = self.params.get("max_neighbours")
            self._similarity = sim if k is None else _strongest_per_row(sim, k)
        return self._similarity

    def similar_items(self, item_rows: np.ndarray, n: int = 20) -> np.ndarray:
        """For each item row, the ``n`` items most often bought with it (``-1`` padded)."""
        sim = _sparse_rows_to_scores(self.similarity()[np.asarray(item_rows)])
        return top_k(sim, n)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        _ = self.train
        profiles = self._profiles[user_rows]
        return _sparse_rows_to_scores(profiles @ self.similarity())

    def top_n(self, context: RequestContext, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``score``'s ranking of the user's row (sparse profile times sparse ``S``)."""
        _ = self.train
        if context.user_row is None:
            return _EMPTY
        s = (self._profiles[context.user_row] @ self.similarity()).tocsr()
        return sparse_top(s.indices, s.data, n)

    def session_top_n(
        self, context: RequestContext, n: int, decay: float = 0.8
    ) -> tuple[np.ndarray, np.ndarray]:
        """Items bought with the session's items, the latest weighted most (``decay`` per
        step back; 0.8 set by hand in the first online version, not tuned)."""
        import scipy.sparse as sp

        if not context.recent_rows:
            return _EMPTY
        rows = list(context.recent_rows)
        weights = decay ** np.arange(len(rows))
        s = (sp.csr_matrix(weights[None, :]) @ self.similarity()[rows]).tocsr()
        return sparse_top(s.indices, s.data, n)


def _strongest_per_row(m: sp.csr_matrix, k: int) -> sp.csr_matrix:
    """``m`` with only the ``k`` largest entries of each row (ties: lower column first)."""
    import scipy.sparse as sp

    m = m.tocsr()
    m.sort_indices()
    lengths = np.diff(m.indptr)
    if not len(lengths) or lengths.max() <= k:
        return m
    rows = np.repeat(np.arange(m.shape[0]), lengths)
    order = np.lexsort((m.indices, -m.data, rows))  # by row, then value desc, then column
    rank = np.arange(len(order)) - np.repeat(m.indptr[:-1], lengths)
    keep = np.sort(order[rank < k])
    out = sp.csr_matrix((m.data[keep], (rows[keep], m.indices[keep])), shape=m.shape)
    out.sort_indices()
    return out


class Popularity(_Generator):
    """Popular items for everyone: distinct buyers (all time) or, with a half-life, *trending*
    (invoices weighted by 0.5 ** (age / half-life)). ``update`` adds fresh purchases."""

    def __init__(self, half_life_days: float | None = None) -> None:
        super().__init__()
        _check_half_life("popularity", half_life_days)
        self.params = {"half_life_days": half_life_days}
        self.name = "popularity" if half_life_days is None else "trending"

    def fit(self, train: TrainData) -> Popularity:
        self._train = train
        h = self.params["half_life_days"]
        if h is None:
            self._scores = np.asarray(train.X.sum(axis=0), dtype=np.float64).ravel()
        else:
            self._scores = np.asarray(
                decayed_user_item(train, h).sum(axis=0), dtype=np.float64
            ).ravel()
        return self

    @property
    def scores(self) -> np.ndarray:
        """The live per-item scores (not a copy: ``update`` adds to it in place)."""
        _ = self.train
        return self._scores

    def extend(self, n_items: int) -> None:
        """Grow to ``n_items`` items (new ones start at 0)."""
        grow = n_items - len(self.scores)
        if grow > 0:
            self._scores = np.concatenate([self._scores, np.zeros(grow)])

    def top_n(self, context: RequestContext, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``score``'s ranking (the same for every user)."""
        del context
        return sparse_top(np.arange(len(self.scores)), self.scores, n)

    def update(self, item_rows: Sequence[int], age_days: float = 0.0) -> None:
        """Count purchases of these items, ``age_days`` before the train end (0 = at the end)."""
        _ = self.train
        h = self.params["half_life_days"]
        weight = 1.0 if h is None else 0.5 ** (age_days / h)
        np.add.at(self._scores, np.asarray(item_rows, dtype=np.int64), weight)

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        _ = self.train
        s = np.where(self._scores > 0, self._scores, -np.inf)
        return np.tile(s, (len(user_rows), 1))


class ContentSimilarity(_Generator):
    """Items whose product text is close to the user's (time-decayed) purchase profile.

    Embeddings come from ``embed_texts`` (MiniLM offline, TF-IDF fallback); ``method_used``
    says which. Users with no history get no candidates.
    """

    name = "content"

    def __init__(
        self,
        method: TextMethod = "auto",
        half_life_days: float | None = 60.0,
        cache_dir: str | Path | None = None,
        embedder: TextEmbedder | None = None,
    ) -> None:
        super().__init__()
        _check_half_life(self.name, half_life_days)
        self.params = {"method": method, "half_life_days": half_life_days}
        self._embedder = embedder or TextEmbedder(method, cache_dir=cache_dir)
        self.method_used = ""

    def fit(self, train: TrainData) -> ContentSimilarity:
        self._train = train
        self._embeddings = self._embedder([str(t) for t in train.item_text])
        self.method_used = self._embedder.method_used
        self._profiles = decayed_user_item(train, self.params["half_life_days"])
        return self

    @property
    def embeddings(self) -> np.ndarray:
        """Item embeddings (train items x dims), L2-normalised."""
        _ = self.train
        return self._embeddings

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        _ = self.train
        profile = np.asarray(self._profiles[user_rows] @ self._embeddings)
        norms = np.linalg.norm(profile, axis=1, keepdims=True)
        s = (profile / np.where(norms > 0, norms, 1.0)) @ self._embeddings.T
        s = s.astype(np.float64)
        s[norms.ravel() == 0] = -np.inf
        return s


def normalise_rows(scores: np.ndarray) -> np.ndarray:
    """Per row: finite scores shifted to >= 0 and divided by the row maximum; -inf -> 0."""
    s = np.array(scores, dtype=np.float64, copy=True)
    finite = np.isfinite(s)
    low = np.where(finite, s, np.inf).min(axis=1, keepdims=True)
    low = np.where(np.isfinite(low), np.minimum(low, 0.0), 0.0)
    s = np.where(finite, s - low, 0.0)
    top = s.max(axis=1, keepdims=True)
    return s / np.where(top > 0, top, 1.0)


@dataclass(frozen=True)
class Candidates:
    """One user's de-duplicated candidates: item rows, fused score and why each is there."""

    user_row: int
    items: np.ndarray
    scores: np.ndarray
    reasons: tuple[tuple[str, ...], ...]


class CandidateUnion(_Generator):
    """Union of the generators' top ``per_generator`` items with reasons, ordered by RRF.

    Reciprocal-rank fusion: ``Σ_g 1 / (rrf_k + rank_g(i))`` over the generators proposing ``i``.
    The generators must be fitted (``fit`` fits them).
    """

    name = "union"

    def __init__(
        self, generators: Sequence[CandidateGenerator], per_generator: int = 50, rrf_k: int = 60
    ) -> None:
        super().__init__()
        names = [g.name for g in generators]
        if not generators or len(set(names)) != len(names):
            raise RecsysError(f"union: needs generators with distinct names (got {names})")
        if per_generator < 1:
            raise RecsysError(f"union: per_generator must be >= 1 (got {per_generator})")
        self.generators = list(generators)
        self.params = {"generators": names, "per_generator": per_generator, "rrf_k": rrf_k}

    def fit(self, train: TrainData) -> CandidateUnion:
        self._train = train
        for g in self.generators:
            g.fit(train)
        return self

    def _ranked(self, user_rows: np.ndarray) -> list[np.ndarray]:
        n = self.params["per_generator"]
        return [top_k(g.score(user_rows), n) for g in self.generators]

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        return self._fuse(self._ranked(user_rows), len(user_rows))

    def _fuse(self, ranked: list[np.ndarray], n_users: int) -> np.ndarray:
        fused = np.zeros((n_users, self.train.n_items))
        proposed = np.zeros((n_users, self.train.n_items), dtype=bool)
        k = self.params["rrf_k"]
        for tops in ranked:
            weights = np.broadcast_to(1.0 / (k + 1.0 + np.arange(tops.shape[1])), tops.shape)
            rows = np.broadcast_to(np.arange(n_users)[:, None], tops.shape)
            valid = tops >= 0
            np.add.at(fused, (rows[valid], tops[valid]), weights[valid])
            proposed[rows[valid], tops[valid]] = True
        return np.where(proposed, fused, -np.inf)

    def candidates(self, user_rows: np.ndarray) -> list[Candidates]:
        """Each user's candidates, best first, each with the generators that proposed it."""
        rows = np.asarray(user_rows)
        tops = self._ranked(rows)
        fused = self._fuse(tops, len(rows))
        names = self.params["generators"]
        result = []
        for r, u in enumerate(rows):
            reasons: dict[int, list[str]] = {}
            for g, t in enumerate(tops):
                for item in t[r][t[r] >= 0].tolist():
                    reasons.setdefault(item, []).append(names[g])
            items = np.array(sorted(reasons, key=lambda i: (-fused[r, i], i)), dtype=np.int64)
            result.append(
                Candidates(
                    user_row=int(u),
                    items=items,
                    scores=fused[r, items],
                    reasons=tuple(tuple(reasons[i]) for i in items.tolist()),
                )
            )
        return result


class HybridBlend(_Generator):
    """``Σ_g w_g · normalise_rows(score_g)``; items no weighted generator proposes stay -inf."""

    name = "hybrid"

    def __init__(
        self, generators: Sequence[CandidateGenerator], weights: Mapping[str, float]
    ) -> None:
        super().__init__()
        names = [g.name for g in generators]
        unknown = set(weights) - set(names)
        if unknown:
            raise RecsysError(f"hybrid: weights for unknown generators {sorted(unknown)}")
        if any(w < 0 for w in weights.values()):
            raise RecsysError("hybrid: weights must be >= 0")
        self.generators = list(generators)
        self.weights = {n: float(weights.get(n, 0.0)) for n in names}
        self.params = {"weights": dict(self.weights)}

    def fit(self, train: TrainData) -> HybridBlend:
        self._train = train
        for g in self.generators:
            g.fit(train)
        return self

    def component_scores(self, user_rows: np.ndarray) -> dict[str, np.ndarray]:
        """Each generator's normalised scores and its proposal mask, for tuning."""
        return {g.name: g.score(user_rows) for g in self.generators}

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        _ = self.train
        return blend(self.component_scores(user_rows), self.weights)


def blend(components: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Weighted sum of normalised component scores; -inf where no weighted component proposes."""
    total: np.ndarray | None = None
    proposed: np.ndarray | None = None
    for name, raw in components.items():
        w = weights.get(name, 0.0)
        if w <= 0:
            continue
        part = w * normalise_rows(raw)
        mask = np.isfinite(raw)
        total = part if total is None else total + part
        proposed = mask if proposed is None else proposed | mask
    if total is None or proposed is None:
        first = next(iter(components.values()))
        return np.full(first.shape, -np.inf)
    return np.where(proposed, total, -np.inf)


def tune_blend_weights(
    generators: Sequence[CandidateGenerator],
    validation: Split,
    view: View,
    grid: Sequence[float] = (0.0, 0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0),
    rounds: int = 2,
    k: int = 20,
    max_users: int = 2_000,
    seed: int = 0,
) -> tuple[dict[str, float], ViewMetrics]:
    """Coordinate ascent on validation NDCG@20 over the generators' blend weights.

    ``generators`` must already be fitted on ``validation.train``. At most ``max_users``
    validation users (a seeded sample) are used. Returns the weights and their metrics.
    The generator best alone on validation gets weight 1 (it sets the scale); the others'
    weights are searched over ``grid``.
    """
    import copy

    if not generators:
        raise RecsysError("hybrid: nothing to tune (no generators)")
    users = validation.test_users
    sub = copy.copy(validation)
    if len(users) > max_users:
        keep = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
        sub.test_users = users[keep]
        sub.ground_truth = [validation.ground_truth[i] for i in keep]
    rows = sub.test_users
    # Everything that does not depend on the weights is computed once.
    raw = {g.name: g.score(rows) for g in generators}
    masks = {n: np.isfinite(s) for n, s in raw.items()}
    normed = {n: normalise_rows(s) for n, s in raw.items()}
    del raw
    if view == "new-only":
        seen = sub.train.X[rows].nonzero()
        for n in masks:
            masks[n][seen] = False
    truth = view_truth(sub, view)

    def metrics(weights: Mapping[str, float]) -> ViewMetrics:
        total = np.zeros(next(iter(normed.values())).shape)
        proposed = np.zeros(total.shape, dtype=bool)
        for n, w in weights.items():
            if w > 0:
                total += w * normed[n]
                proposed |= masks[n]
        return metrics_from_rankings(top_k(np.where(proposed, total, -np.inf), k), truth, k)

    names = [g.name for g in generators]
    # The anchor (weight 1, sets the scale) is the generator that is best alone on validation.
    alone = {n: metrics({n: 1.0}) for n in names}
    anchor = max(names, key=lambda n: (alone[n].ndcg, -names.index(n)))
    weights = {n: (1.0 if n == anchor else 0.0) for n in names}
    best = alone[anchor]
    for _ in range(rounds):
        changed = False
        for name in [n for n in names if n != anchor]:
            for w in grid:
                if w == weights[name]:
                    continue
                trial = {**weights, name: w}
                m = metrics(trial)
                if m.ndcg > best.ndcg + 1e-9:
                    best, weights, changed = m, trial, True
        if not changed:
            break
    return weights, best
