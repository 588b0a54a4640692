"""The pipeline's learned blend: LambdaRank over the sources' scores and user x item features.

``Pipeline.blend`` orders a request's candidates (the union of its sources' ``top_n``) with the
LightGBM LambdaRank model of the request's view when ``PipelineParams`` carries one; otherwise
with the linear blend of max-normalised scores. ``tune_pipeline`` trains the model on the
validation window before a cut-off (sources fitted before the window, labels: bought in the
window) and keeps it only when it beats, on validation users held out of its training, both the
linear blend and the best single source. It is registered with the blend weights
(``recs-pipeline``), so the process that serves and the replay that measures read the same
model.

**Features** (``BLEND_FEATURES``, float32; ``candidate_features`` computes them from the fitted
``OnlineState`` at request time, so training and serving share one function):

* per source in ``FEATURE_SOURCES``: its score over its best score for this request, its rank
  (0 = best; ``RANK_MISSING`` when it did not propose the item) and, for sources whose scale
  means something across users, the raw score; how many sources proposed the item;
* user x item, from the purchase history (``HistoryIndex``): invoices holding the item (what
  RepeatFreq ranks by), days since the user last bought it, the share of the user's invoices in
  the item's category;
* user: distinct items bought, (item, invoice) pairs, days since the last purchase, invoices,
  the share of their items bought in more than one invoice, days per invoice since the first;
* item: distinct buyers and trending score, each over the catalogue's best (what MostPop and
  RepeatFreq's tie-break rank by; shares, so that they keep their meaning as data accrue),
  whether it was added after the fit (no history at all), the share of its buyers who bought
  it in more than one invoice, days since its first sale.

Sources that only live events feed (``session``, ``category``, ``similar``) and a two-tower
that is not loaded propose nothing on a purchase log's cut-off: their columns are constant in
training, so the model gives them no weight; their candidates are ordered by the other columns.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._errors import RecsysError

if TYPE_CHECKING:
    from flywheel.recsys._state import OnlineState

FEATURE_SOURCES: tuple[str, ...] = (
    "repeat",
    "co-occurrence",
    "ease",
    "content",
    "trending",
    "session",
    "category",
    "similar",
    "two-tower",
)
_RAW_SCORED = ("repeat", "co-occurrence", "ease", "content")
RANK_MISSING = 1000.0
MISSING = -1.0


def _source_columns() -> tuple[str, ...]:
    cols: list[str] = []
    for s in FEATURE_SOURCES:
        cols += [f"{s}_norm", f"{s}_rank"]
        if s in _RAW_SCORED:
            cols.append(f"{s}_score")
    return tuple(cols)


BLEND_FEATURES: tuple[str, ...] = (
    *_source_columns(),
    "n_sources",
    "repeat_count",
    "days_since_item",
    "category_share",
    "user_items",
    "user_lines",
    "user_recency_days",
    "user_invoices",
    "user_repeat_share",
    "user_days_per_invoice",
    "item_buyers",
    "item_trending",
    "item_added",
    "item_repeat_rate",
    "item_age_days",
)
"""The learned blend's input columns, in order."""

# LightGBM settings, set by hand (not searched: each fit takes tens of seconds on 2 cores);
# the number of trees is chosen by early stopping on held-out validation users.
LGBM_PARAMS: dict[str, Any] = {
    "learning_rate": 0.05,
    "num_leaves": 31,
    "min_child_samples": 50,
    "colsample_bytree": 0.9,
    "subsample": 0.8,
    "subsample_freq": 1,
    "reg_lambda": 1.0,
}
MAX_ROUNDS = 600
EARLY_STOP = 40
NDCG_AT = 20


def candidate_features(
    state: OnlineState,
    user_row: int | None,
    gens: Mapping[str, tuple[np.ndarray, np.ndarray]],
    rows: Sequence[int] | np.ndarray,
) -> np.ndarray:
    """The ``BLEND_FEATURES`` matrix (len(rows), n) of one request's candidate ``rows``."""
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    out = np.empty((n, len(BLEND_FEATURES)), dtype=np.float32)
    j = 0
    proposed = np.zeros(n)
    for s in FEATURE_SOURCES:
        norm = np.full(n, MISSING)
        rank = np.full(n, RANK_MISSING)
        raw = np.full(n, MISSING)
        hits = gens.get(s)
        if hits is not None and len(hits[0]) and n:
            g_rows, g_scores = np.asarray(hits[0]), np.asarray(hits[1], dtype=np.float64)
            order = np.argsort(g_rows, kind="stable")
            sorted_rows = g_rows[order]
            pos = np.minimum(np.searchsorted(sorted_rows, rows), len(g_rows) - 1)
            hit = sorted_rows[pos] == rows
            idx = order[pos[hit]]
            top = float(g_scores[0]) or 1.0
            rank[hit] = idx
            raw[hit] = g_scores[idx]
            norm[hit] = g_scores[idx] / top
            proposed += hit
        out[:, j], out[:, j + 1] = norm, rank
        j += 2
        if s in _RAW_SCORED:
            out[:, j] = raw
            j += 1
    out[:, j] = proposed
    j += 1
    history = state.history_index().history(user_row)
    repeat_count = np.zeros(n)
    days_since = np.full(n, MISSING)
    if len(history.rows) and n:
        order = np.argsort(history.rows)
        h_rows = history.rows[order]
        pos = np.minimum(np.searchsorted(h_rows, rows), len(h_rows) - 1)
        hit = h_rows[pos] == rows
        repeat_count[hit] = history.invoices[order][pos[hit]]
        days_since[hit] = history.days_since[order][pos[hit]]
    cats = state.categories
    shares = history.category_share
    share = np.asarray([shares.get(str(cats[r]), 0.0) for r in rows.tolist()], dtype=np.float64)
    n_train = state.n_train
    buyers = state.popularity.scores
    trend = state.trending.scores
    in_pop = rows < len(buyers)
    in_trend = rows < len(trend)
    # Relative to the catalogue's best: counts grow with the data and the season, a share does
    # not (the model trains on states fitted a month or two before the one it serves).
    top_buyers = float(buyers.max()) if len(buyers) else 0.0
    top_trend = float(trend.max()) if len(trend) else 0.0
    item_buyers = np.where(in_pop, buyers[np.minimum(rows, len(buyers) - 1)], 0.0)
    item_buyers = item_buyers / top_buyers if top_buyers > 0 else item_buyers
    item_trend = np.where(in_trend, trend[np.minimum(rows, len(trend) - 1)], 0.0)
    item_trend = item_trend / top_trend if top_trend > 0 else item_trend
    user_items = float(len(history.rows))
    user_lines = 0.0 if user_row is None else float(state.train.C[user_row].sum())
    recency = float(history.days_since.min()) if len(history.rows) else MISSING
    stats = _stats(state)
    invoices = float(stats.user_invoices[user_row]) if user_row is not None else 0.0
    span = float(stats.user_first_age[user_row]) if user_row is not None else MISSING
    repeat_share = float((history.invoices > 1).mean()) if len(history.rows) else MISSING
    known = rows < len(stats.item_repeat_rate)
    safe = np.minimum(rows, len(stats.item_repeat_rate) - 1)
    cols = (
        repeat_count,
        days_since,
        share,
        np.full(n, user_items),
        np.full(n, user_lines),
        np.full(n, recency),
        np.full(n, invoices),
        np.full(n, repeat_share),
        np.full(n, span / invoices if invoices > 0 else MISSING),
        item_buyers,
        item_trend,
        (rows >= n_train).astype(np.float64),
        np.where(known, stats.item_repeat_rate[safe], MISSING),
        np.where(known, stats.item_first_age[safe], 0.0),
    )
    for col in cols:
        out[:, j] = col
        j += 1
    if j != len(BLEND_FEATURES):  # pragma: no cover - a programming error
        raise RecsysError(f"learned blend: {j} columns computed, {len(BLEND_FEATURES)} declared")
    return out


@dataclass(frozen=True)
class _TrainStats:
    """Per-user and per-item aggregates of the fitted purchases (computed once per state)."""

    user_invoices: np.ndarray
    user_first_age: np.ndarray
    item_repeat_rate: np.ndarray
    item_first_age: np.ndarray


_STATS: weakref.WeakKeyDictionary[Any, _TrainStats] = weakref.WeakKeyDictionary()
_STATS_LOCK = threading.Lock()


def prepare(state: OnlineState) -> None:
    """Compute what ``candidate_features`` reads of ``state`` once, before the first request
    (the aggregates scan every purchase: seconds at a million users)."""
    _stats(state)
    state.history_index()


def _stats(state: OnlineState) -> _TrainStats:
    """``state``'s ``_TrainStats`` (the fitted purchases never change while it serves)."""
    train = state.train
    with _STATS_LOCK:
        got = _STATS.get(state)
    if got is not None:
        return got
    ev = train.events
    user_invoices = np.zeros(train.n_users)
    per_user = ev.groupby("user")["invoice"].nunique()
    user_invoices[per_user.index.to_numpy()] = per_user.to_numpy()
    user_first_age = np.zeros(train.n_users)
    first = ev.groupby("user")["age_days"].max()
    user_first_age[first.index.to_numpy()] = first.to_numpy()
    c = train.C.tocsc()
    buyers = np.diff(c.indptr).astype(np.float64)
    again = np.asarray((c > 1).sum(axis=0)).ravel().astype(np.float64)
    item_repeat_rate = np.where(buyers > 0, again / np.maximum(buyers, 1.0), MISSING)
    item_first_age = np.zeros(train.n_items)
    age = ev.groupby("item")["age_days"].max()
    item_first_age[age.index.to_numpy()] = age.to_numpy()
    got = _TrainStats(user_invoices, user_first_age, item_repeat_rate, item_first_age)
    with _STATS_LOCK:
        _STATS[state] = got
    return got


@dataclass
class BlendModel:
    """A fitted LambdaRank blend (a LightGBM booster over ``BLEND_FEATURES``)."""

    booster: Any  # lightgbm.Booster
    best_iteration: int

    def predict(self, features: np.ndarray) -> np.ndarray:
        """One score per row (higher first); one thread: it runs on the request path."""
        if features.shape[1] != len(BLEND_FEATURES):
            raise RecsysError(
                f"learned blend: features must have {len(BLEND_FEATURES)} columns, "
                f"got {features.shape[1]}"
            )
        return np.asarray(
            self.booster.predict(features, num_iteration=self.best_iteration, num_threads=1),
            dtype=np.float64,
        )

    def to_text(self) -> str:
        return str(self.booster.model_to_string(num_iteration=self.best_iteration))

    @classmethod
    def from_text(cls, text: str) -> BlendModel:
        import lightgbm as lgb

        booster = lgb.Booster(model_str=text)
        return cls(booster, int(booster.current_iteration()))


def fit_blend(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    valid: tuple[np.ndarray, np.ndarray, np.ndarray],
    *,
    seed: int = 0,
) -> BlendModel:
    """LambdaRank on ``train`` (features, labels, group sizes), early-stopped on NDCG@20 of
    ``valid``."""
    import lightgbm as lgb

    x, y, g = train
    vx, vy, vg = valid
    if not len(g) or not len(vg):
        raise RecsysError("learned blend: no training or no validation queries")
    model = lgb.LGBMRanker(
        objective="lambdarank",
        n_estimators=MAX_ROUNDS,
        random_state=seed,
        n_jobs=1,
        verbose=-1,
        deterministic=True,
        force_row_wise=True,
        **LGBM_PARAMS,
    )
    model.fit(
        x,
        y,
        group=g,
        eval_X=(vx,),
        eval_y=(vy,),
        eval_group=[vg],
        eval_at=[NDCG_AT],
        callbacks=[lgb.early_stopping(EARLY_STOP, verbose=False)],
    )
    best = int(model.best_iteration_ or model.n_estimators)
    return BlendModel(model.booster_, best)
