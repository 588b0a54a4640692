"""The ranking stage: one feature function for training and serving, point-in-time training
datasets, the scheduled LightGBM job, and the client that scores through ``flywheel.serving``.

**Features** (``RANKER_FEATURES``, in this order, float32). For one user and their candidates:

* per retrieval generator in ``RANKER_GENERATORS`` (``repeat``, ``co-occurrence``, ``content``,
  ``trending``): the score normalised by the generator's best score for this user, the rank
  (0 = best) and, where it has a scale of its own, the raw score; ``n_generators`` proposing;
* user×item, from the user's purchase history (``HistoryIndex``): invoices holding the item,
  days since they last bought it, the share of their history (and of their 20 latest items) in
  the item's category, their number of distinct items and the median price of what they buy;
* user (``recs_user_rfm``: recency, frequency, monetary) and item (``recs_item_metadata:price``,
  ``recs_item_popularity``: buyers over 7 / 30 days and all time) features from the feature
  store — point in time for training (``create_training_dataset``), the online store at request
  time (``get_online_features``);
* derived: the item's price relative to the user's median price, 7-day / 30-day buyer ratio.

``pair_inputs`` computes the user×item and retrieval columns and ``ranker_matrix`` turns them,
with the feature-store columns, into the matrix; ``ranker_features`` (serving) and
``build_ranker_frame`` (training) both go through these two functions, so a (user, item) gets the
same row offline and online. Missing values become ``MISSING`` (ranks: ``RANK_MISSING``): the
model never sees NaN, so serving keeps rejecting NaN inputs.

**Training data** (``build_ranker_frame``, ``write_ranker_dataset``): for several cut-off dates
inside the training period, the generators are fitted on the purchases before the cut-off; a
query is (user, cut-off), its candidates the union of each generator's top ``per_generator``,
the label whether the user bought the item within ``window_days`` after the cut-off. The last
cut-off's queries are the validation set (early stopping); the training cut-offs end their
label windows before it. Feature-store columns are joined point in time at the cut-off.

**Serving**: ``ranker_job_spec`` trains and registers ``recs-ranker`` (flavor ``lightgbm``, one
float32 input ``features`` of shape (-1, len(RANKER_FEATURES))); ``RankerClient`` scores through
``server_for(project).predict_blocking`` and raises ``RankerUnavailable`` when it cannot.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._errors import RecsysError
from flywheel.recsys._history import HistoryIndex, UserHistory
from flywheel.recsys._ingest import ITEM_VIEW, POPULARITY_VIEW, USER_VIEW

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.features import FeatureStore
    from flywheel.project import Project
    from flywheel.recsys._candidates import CandidateGenerator
    from flywheel.recsys._protocol import TrainData
    from flywheel.training import JobSpec

RANKER_GENERATORS: tuple[str, ...] = ("repeat", "co-occurrence", "content", "trending")
"""Generators whose scores and ranks are features (others may propose candidates too)."""
_RAW_SCORED = ("repeat", "co-occurrence", "content")  # raw scores comparable across users

USER_FEATURE_REFS: tuple[str, ...] = (
    f"{USER_VIEW}:recency_days",
    f"{USER_VIEW}:frequency",
    f"{USER_VIEW}:monetary",
)
ITEM_FEATURE_REFS: tuple[str, ...] = (
    f"{ITEM_VIEW}:price",
    f"{POPULARITY_VIEW}:buyers_7d",
    f"{POPULARITY_VIEW}:buyers_30d",
    f"{POPULARITY_VIEW}:buyers_all",
)
USER_COLUMNS: tuple[str, ...] = tuple(r.split(":", 1)[1] for r in USER_FEATURE_REFS)
ITEM_COLUMNS: tuple[str, ...] = tuple(r.split(":", 1)[1] for r in ITEM_FEATURE_REFS)


def _generator_columns() -> tuple[str, ...]:
    cols: list[str] = []
    for g in RANKER_GENERATORS:
        cols += [f"{g}_norm", f"{g}_rank"]
        if g in _RAW_SCORED:
            cols.append(f"{g}_score")
    return tuple(cols)


PAIR_COLUMNS: tuple[str, ...] = (
    *_generator_columns(),
    "n_generators",
    "repeat_count",
    "days_since_item",
    "category_share",
    "recent_category_share",
    "user_items",
    "user_median_price",
)
"""Per (user, item) inputs computed from retrieval and the purchase history (``pair_inputs``)."""
DERIVED_COLUMNS: tuple[str, ...] = ("price_ratio", "buyers_7d_30d")
RANKER_FEATURES: tuple[str, ...] = (*PAIR_COLUMNS, *USER_COLUMNS, *ITEM_COLUMNS, *DERIVED_COLUMNS)
"""The ranker's input columns, in order (the model's ``features`` input)."""

MISSING = -1.0
RANK_MISSING = 1000.0
DEFAULT_MODEL = "recs-ranker"

Retrieved = Mapping[str, tuple[np.ndarray, np.ndarray]]
"""Generator name -> (item rows, scores), best first."""
Progress = Callable[[str], None]


# -- features -------------------------------------------------------------------------------


def pair_inputs(
    candidates: Retrieved,
    rows: Sequence[int] | np.ndarray,
    history: UserHistory,
    categories: np.ndarray,
) -> dict[str, np.ndarray]:
    """The ``PAIR_COLUMNS`` of one user's candidate ``rows`` (NaN = missing), in that order.

    ``candidates`` holds each generator's (rows, scores), best first; generators not in
    ``RANKER_GENERATORS`` are ignored here. ``categories`` maps every item row to its category.
    """
    rows = np.asarray(rows, dtype=np.int64)
    n = len(rows)
    out: dict[str, np.ndarray] = {}
    proposed = np.zeros(n, dtype=np.float64)
    for g in RANKER_GENERATORS:
        norm = np.full(n, np.nan)
        rank = np.full(n, np.nan)
        raw = np.full(n, np.nan)
        found = candidates.get(g)
        if found is not None and len(found[0]):
            g_rows = np.asarray(found[0], dtype=np.int64)
            g_scores = np.asarray(found[1], dtype=np.float64)
            top = float(np.max(np.abs(g_scores))) or 1.0
            order = np.argsort(g_rows, kind="stable")
            pos = np.searchsorted(g_rows[order], rows)
            pos = np.minimum(pos, len(g_rows) - 1)
            hit = g_rows[order][pos] == rows
            idx = order[pos[hit]]
            rank[hit] = idx
            raw[hit] = g_scores[idx]
            norm[hit] = g_scores[idx] / top
            proposed += hit
        out[f"{g}_norm"] = norm
        out[f"{g}_rank"] = rank
        if g in _RAW_SCORED:
            out[f"{g}_score"] = raw
    out["n_generators"] = proposed
    repeat_count = np.zeros(n)
    days_since = np.full(n, np.nan)
    if len(history.rows):
        order = np.argsort(history.rows)
        h_rows = history.rows[order]
        pos = np.minimum(np.searchsorted(h_rows, rows), len(h_rows) - 1)
        hit = h_rows[pos] == rows
        repeat_count[hit] = history.invoices[order][pos[hit]]
        days_since[hit] = history.days_since[order][pos[hit]]
    out["repeat_count"] = repeat_count
    out["days_since_item"] = days_since
    cats = [str(c) for c in np.asarray(categories, dtype=object)[rows].tolist()]
    shares, recent = history.category_share, history.recent_category_share
    out["category_share"] = np.asarray([shares.get(c, 0.0) for c in cats], dtype=np.float64)
    out["recent_category_share"] = np.asarray([recent.get(c, 0.0) for c in cats], dtype=np.float64)
    out["user_items"] = np.full(n, float(len(history.rows)))
    out["user_median_price"] = np.full(n, history.median_price)
    return out


def ranker_missing_values() -> dict[str, float]:
    """Feature -> the value ``ranker_matrix`` puts where that input is missing (recorded in the
    registered version's config, so that drift fills its reference the same way)."""
    return {n: RANK_MISSING if n.endswith("_rank") else MISSING for n in RANKER_FEATURES}


def ranker_matrix(columns: Mapping[str, Any]) -> np.ndarray:
    """The float32 feature matrix (rows, len(RANKER_FEATURES)) from ``PAIR_COLUMNS`` and the
    feature-store columns (``USER_COLUMNS``, ``ITEM_COLUMNS``; None/NaN = missing).

    Used by training (on a dataset frame) and by ``ranker_features`` (online): the one place
    where inputs become model features.
    """
    base = {c: _floats(columns[c]) for c in (*PAIR_COLUMNS, *USER_COLUMNS, *ITEM_COLUMNS)}
    n = len(base[PAIR_COLUMNS[0]])
    with np.errstate(divide="ignore", invalid="ignore"):
        price, median = base["price"], base["user_median_price"]
        base["price_ratio"] = np.where(median > 0, price / median, np.nan)
        base["buyers_7d_30d"] = base["buyers_7d"] / (base["buyers_30d"] + 1.0)
    out = np.empty((n, len(RANKER_FEATURES)), dtype=np.float32)
    fills = ranker_missing_values()
    for j, name in enumerate(RANKER_FEATURES):
        col = base[name]
        if len(col) != n:
            raise RecsysError(f"ranker: column {name!r} has {len(col)} values, expected {n}")
        out[:, j] = np.where(np.isfinite(col), col, fills[name])
    return out


def _floats(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype == object:
        arr = np.asarray([np.nan if v is None else v for v in arr.tolist()], dtype=np.float64)
    return arr.astype(np.float64)


def ranker_features(
    user_ctx: Mapping[str, Any],
    candidates: Retrieved,
    rows: Sequence[int] | np.ndarray,
    *,
    items: Mapping[str, Any],
    history: UserHistory,
    categories: np.ndarray,
) -> np.ndarray:
    """The ranker's input for one user: float32 (len(rows), len(RANKER_FEATURES)).

    Args:
        user_ctx: the user's ``USER_COLUMNS`` (``recs_user_rfm`` from ``get_online_features``;
            absent or None = unknown user).
        candidates: generator -> (item rows, scores), best first (the retrieval stage).
        rows: the candidate item rows to score, in the order of the output rows.
        items: ``ITEM_COLUMNS`` aligned with ``rows`` (``read_item_features``).
        history: the user's purchases (``HistoryIndex.history``).
        categories: category of every item row.
    """
    n = len(rows)
    cols: dict[str, Any] = dict(pair_inputs(candidates, rows, history, categories))
    for c in USER_COLUMNS:
        v = user_ctx.get(c)
        cols[c] = np.full(n, np.nan if v is None else float(v))
    for c in ITEM_COLUMNS:
        cols[c] = items[c]
    return ranker_matrix(cols)


def read_item_features(store: FeatureStore, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
    """``ITEM_COLUMNS`` of ``item_ids`` from the online store (NaN where unknown)."""
    got = store.get_online_features(list(ITEM_FEATURE_REFS), {"item_id": list(item_ids)}).to_dict(
        include_entities=False
    )
    return {c: _floats(got[c]) for c in ITEM_COLUMNS}


def read_user_features(store: FeatureStore, user_id: int) -> dict[str, Any]:
    """``USER_COLUMNS`` of one user from the online store (None where unknown)."""
    got = store.get_online_features(list(USER_FEATURE_REFS), {"user_id": [int(user_id)]}).to_dict(
        include_entities=False
    )
    return {c: got[c][0] for c in USER_COLUMNS}


# -- training data --------------------------------------------------------------------------


@dataclass(frozen=True)
class RankerConfig:
    """How the ranker's training data is built and how LightGBM trains on it.

    Generator parameters match the online request path's defaults (``OnlineState``) so the
    retrieval features mean the same thing in training and serving.
    """

    window_days: int = 28  # the label window after a cut-off (a multiple of 7: weekly snapshots)
    cutoffs: int = 6  # training cut-offs (plus one validation cut-off); chosen on validation
    cutoff_every_days: int = 14
    per_generator: int = 50
    repeat_half_life_days: float = 60.0
    cooc_half_life_days: float = 60.0
    content_half_life_days: float = 60.0
    trending_half_life_days: float = 14.0
    text_method: str = "tfidf"
    n_estimators: int = 500
    learning_rate: float = 0.1
    num_leaves: int = 31
    min_child_samples: int = 50
    subsample: float = 0.8
    colsample_bytree: float = 0.8
    max_bin: int = 63
    truncation_level: int = 20  # lambdarank pairs are formed within the top 20 (NDCG@20)
    early_stopping_rounds: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        if self.window_days < 1 or self.cutoffs < 1 or self.cutoff_every_days < 1:
            raise RecsysError("ranker: window_days, cutoffs and cutoff_every_days must be >= 1")
        if self.per_generator < 1:
            raise RecsysError(f"ranker: per_generator must be >= 1 (got {self.per_generator})")
        if self.text_method not in ("auto", "minilm", "tfidf"):
            raise RecsysError(f"ranker: text_method {self.text_method!r} is not auto/minilm/tfidf")

    def lgbm_params(self) -> dict[str, Any]:
        return {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "subsample": self.subsample,
            "subsample_freq": 1,
            "colsample_bytree": self.colsample_bytree,
            "max_bin": self.max_bin,
            "lambdarank_truncation_level": self.truncation_level,
            "early_stopping_rounds": self.early_stopping_rounds,
            "seed": self.seed,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RankerConfig:
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecsysError(f"ranker: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**dict(data))


def ranker_cutoffs(
    end: pd.Timestamp, config: RankerConfig, *, align: pd.DatetimeIndex | None = None
) -> tuple[list[pd.Timestamp], pd.Timestamp]:
    """(training cut-offs, validation cut-off) for labels that must end by ``end``.

    Validation: ``end - window``; training cut-offs: ``window`` before that and then every
    ``cutoff_every_days`` back, so no training label reaches the validation window. With
    ``align`` (the feature store's snapshot times), each date moves back to the nearest
    snapshot at or before it, so the point-in-time features are exact snapshots.
    """
    import pandas as pd

    window = pd.Timedelta(days=config.window_days)
    step = pd.Timedelta(days=config.cutoff_every_days)

    def snap(t: pd.Timestamp) -> pd.Timestamp:
        if align is None:
            return t
        before = align[align <= t]
        if not len(before):
            raise RecsysError(
                f"ranker: a cut-off on {t:%Y-%m-%d} is before the data's first weekly snapshot; "
                "use fewer cutoffs or a shorter window"
            )
        return pd.Timestamp(before[-1])

    valid = snap(pd.Timestamp(end) - window)
    train = [snap(valid - window - i * step) for i in range(config.cutoffs)]
    return sorted(set(train)), valid


@dataclass
class FittedGenerators:
    """The generators fitted on the purchases before one cut-off."""

    train: TrainData
    generators: list[CandidateGenerator]
    history: HistoryIndex

    @classmethod
    def fit(
        cls,
        train: TrainData,
        config: RankerConfig,
        categories: np.ndarray,
        prices: np.ndarray,
        embedder: Any | None = None,
    ) -> FittedGenerators:
        from flywheel.recsys._candidates import (
            ContentSimilarity,
            CoOccurrence,
            Popularity,
            RepeatPurchase,
        )
        from flywheel.recsys._text import TextEmbedder

        gens: list[CandidateGenerator] = [
            RepeatPurchase(config.repeat_half_life_days),
            CoOccurrence(config.cooc_half_life_days, basket="invoice"),
            ContentSimilarity(
                half_life_days=config.content_half_life_days,
                embedder=embedder or TextEmbedder(config.text_method),  # type: ignore[arg-type]
            ),
            Popularity(config.trending_half_life_days),
            Popularity(),
        ]
        for g in gens:
            g.fit(train)
        return cls(train, gens, HistoryIndex(train, categories, prices))

    def candidates(self, user_rows: np.ndarray, per_generator: int) -> list[dict[str, Any]]:
        """Each user's candidates: generator -> (rows, scores) best first, for ``user_rows``."""
        from flywheel.recsys._metrics import top_k

        out: list[dict[str, Any]] = [{} for _ in user_rows]
        for g in self.generators:
            scores = g.score(user_rows)
            tops = top_k(scores, per_generator)
            for i, top in enumerate(tops):
                top = top[top >= 0]
                out[i][g.name] = (top, scores[i, top])
        return out


class _CatalogueEmbedder:
    """A ``TextEmbedder`` stand-in over a ``ContentEncoder`` fitted once: any text, seen or
    not, is embedded into the same space (``ContentSimilarity`` calls it with item texts)."""

    def __init__(self, config: RankerConfig, texts: Sequence[str]) -> None:
        from flywheel.recsys._text import ContentEncoder

        self._encoder = ContentEncoder(config.text_method).fit(list(texts))  # type: ignore[arg-type]
        self.method_used = self._encoder.method_used
        self._known: dict[str, np.ndarray] = {}

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        new = sorted({t for t in texts if t not in self._known})
        if new:
            self._known.update(zip(new, self._encoder.encode(new), strict=True))
        return np.stack([self._known[t] for t in texts]).astype(np.float32)


def union_rows(candidates: Retrieved) -> np.ndarray:
    """The distinct candidate rows of all generators, in first-proposed order."""
    seen: dict[int, None] = {}
    for rows, _ in candidates.values():
        for r in np.asarray(rows).tolist():
            seen.setdefault(int(r), None)
    return np.fromiter(seen, dtype=np.int64, count=len(seen))


def _item_frame(lines: pd.DataFrame) -> pd.DataFrame:
    """The item table ``ingest`` would write for ``lines`` (the catalogue the store holds)."""
    from flywheel.recsys._ingest import item_table, snapshot_times

    end = lines["InvoiceDate"].max() + np.timedelta64(1, "s")
    return item_table(lines, snapshot_times(lines["InvoiceDate"].min(), end))


def _catalogue_from(items_df: pd.DataFrame, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Category and price of each of ``items`` (item ids) from an item table."""
    from flywheel.recsys._ingest import OTHER_CATEGORY

    frame = items_df.set_index(items_df["item_id"].astype(str))
    ids = [str(i) for i in items]
    cats = frame["category"].reindex(ids).fillna(OTHER_CATEGORY).to_numpy(dtype=object)
    prices = frame["price"].reindex(ids).to_numpy(dtype=np.float64)
    return cats, prices


def build_ranker_frame(
    lines: pd.DataFrame,
    cutoffs: Sequence[pd.Timestamp],
    config: RankerConfig,
    *,
    catalogue: pd.DataFrame | None = None,
    labelled_only: bool = True,
    users: Mapping[pd.Timestamp, Sequence[int]] | None = None,
    progress: Progress | None = None,
) -> tuple[pd.DataFrame, dict[pd.Timestamp, FittedGenerators]]:
    """Candidate rows with ``PAIR_COLUMNS`` and labels for every (user, cut-off) query.

    For each cut-off ``c``: the generators are fitted on the lines before ``c``; a user's
    candidates are the union of each generator's top ``per_generator`` items; ``label`` is 1
    when they bought the item in ``[c, c + window_days)``. With ``labelled_only`` only users who
    bought a candidate in the window are kept (the others carry no ranking signal); ``users``
    restricts a cut-off to those CustomerIDs. ``catalogue`` is the item table (``load_items``;
    default: derived from ``lines``).

    Returns the frame (columns ``query``, ``user_id``, ``item_id``, ``event_timestamp`` (the
    cut-off, UTC), ``label`` and ``PAIR_COLUMNS``; queries contiguous) and the fitted generators
    per cut-off.
    """
    import pandas as pd

    from flywheel.recsys._protocol import build_train_data

    say = progress or (lambda _m: None)
    catalogue = catalogue if catalogue is not None else _item_frame(lines)
    # One text space for every cut-off, fitted once on the catalogue's texts (as the online
    # state does): product texts are catalogue data, not behaviour, and one fit instead of a
    # TF-IDF refit per cut-off is what keeps this fast.
    embedder = _CatalogueEmbedder(config, sorted(set(catalogue["description"].astype(str))))
    window = pd.Timedelta(days=config.window_days)
    parts: list[dict[str, np.ndarray]] = []
    stamps: list[pd.Timestamp] = []  # the cut-offs, UTC
    fitted: dict[pd.Timestamp, FittedGenerators] = {}
    next_query = 0
    for c in cutoffs:
        c = pd.Timestamp(c)
        say(f"ranker data: generators before {c:%Y-%m-%d}")
        train = build_train_data(lines, c)
        cats, prices = _catalogue_from(catalogue, train.items)
        fg = FittedGenerators.fit(train, config, cats, prices, embedder)
        fitted[c] = fg
        later = lines.loc[(lines["InvoiceDate"] >= c) & (lines["InvoiceDate"] < c + window)]
        bought = later.groupby("CustomerID")["StockCode"].agg(lambda s: set(s.astype(str)))
        if users is not None and c in users:
            wanted = np.asarray(users[c], dtype=np.int64)
        elif labelled_only:
            wanted = bought.index.to_numpy(dtype=np.int64)
        else:
            wanted = np.asarray(train.users, dtype=np.int64)
        user_rows = np.searchsorted(train.users, wanted)
        user_rows = np.minimum(user_rows, train.n_users - 1)
        known = train.users[user_rows] == wanted
        user_rows, wanted = user_rows[known], wanted[known]
        say(f"ranker data: candidates of {len(user_rows):,} users at {c:%Y-%m-%d}")
        ts = pd.Timestamp(c).tz_localize("UTC") if c.tzinfo is None else c.tz_convert("UTC")
        for b in range(0, len(user_rows), 500):
            batch = user_rows[b : b + 500]
            for u_row, uid, cands in zip(
                batch, wanted[b : b + 500], fg.candidates(batch, config.per_generator), strict=True
            ):
                rows = union_rows(cands)
                if not len(rows):
                    continue
                ids = train.items[rows]
                truth = bought.get(uid, set())
                label = np.fromiter((i in truth for i in ids.tolist()), dtype=np.int8)
                if labelled_only and not label.any():
                    continue
                cols = pair_inputs(cands, rows, fg.history.history(int(u_row)), cats)
                n = len(rows)
                parts.append(
                    {
                        "query": np.full(n, next_query, dtype=np.int64),
                        "user_id": np.full(n, uid, dtype=np.int64),
                        "item_id": ids.astype(str),
                        "cutoff": np.full(n, len(stamps), dtype=np.int64),
                        "label": label,
                        **cols,
                    }
                )
                next_query += 1
        stamps.append(ts)
    if not parts:
        raise RecsysError("ranker: no query has a candidate the user bought in its window")
    frame = pd.DataFrame({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    when = pd.DatetimeIndex(stamps).take(frame.pop("cutoff").to_numpy())
    frame.insert(3, "event_timestamp", when)
    return frame, fitted


def store_columns(
    lines: pd.DataFrame, frame: pd.DataFrame, *, catalogue: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The feature-store columns for ``frame``'s (user, item, cut-off) rows, computed from
    ``lines`` with the same snapshot functions ``ingest`` writes (a point-in-time lookup on
    weekly snapshots plus one at every cut-off). For offline evaluation without a project;
    ``write_ranker_dataset`` reads them from the feature store instead."""
    import pandas as pd

    from flywheel.recsys._ingest import popularity_snapshots, snapshot_times, user_snapshots

    cut = pd.DatetimeIndex(frame["event_timestamp"].unique()).tz_convert("UTC").tz_localize(None)
    end = cut.max()
    before = lines.loc[lines["InvoiceDate"] < end]
    times = snapshot_times(before["InvoiceDate"].min(), end).union(cut)
    catalogue = catalogue if catalogue is not None else _item_frame(lines)
    users = user_snapshots(before, times)
    pop = popularity_snapshots(before, times, pd.Index(catalogue["item_id"].astype(str)))
    out = frame[["user_id", "item_id", "event_timestamp"]].copy()
    out["__row"] = np.arange(len(out))
    out = _asof(out, users, "user_id", USER_COLUMNS)
    out = _asof(out, pop, "item_id", ("buyers_7d", "buyers_30d", "buyers_all"))
    out = _asof(out, catalogue, "item_id", ("price",))
    return out.sort_values("__row").drop(columns="__row").reset_index(drop=True)


def _asof(left: pd.DataFrame, right: pd.DataFrame, key: str, cols: Sequence[str]) -> pd.DataFrame:
    import pandas as pd

    r = right[[key, "event_timestamp", *cols]].sort_values("event_timestamp")
    left = left.sort_values("event_timestamp")
    r = r.assign(event_timestamp=r["event_timestamp"].astype(left["event_timestamp"].dtype))
    return pd.merge_asof(left, r, on="event_timestamp", by=key, direction="backward")


def _dataset_name() -> str:
    return f"recs-ranker-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def write_ranker_dataset(
    project: Project,
    *,
    config: RankerConfig | None = None,
    end: str | pd.Timestamp | None = None,
    name: str | None = None,
    store: FeatureStore | None = None,
    progress: Progress | None = None,
) -> str:
    """Build the ranker's training data from the last ``ingest`` and save it as a feature-store
    training dataset (point-in-time join of ``USER_FEATURE_REFS`` and ``ITEM_FEATURE_REFS`` at
    each query's cut-off; catalogued, with lineage from the views). Returns its name.

    Only purchases before ``end`` (default: the end of the ingested data) are read; cut-offs
    (``ranker_cutoffs``) fall on the feature store's weekly snapshots. Columns: ``query``,
    ``user_id``, ``item_id``, ``event_timestamp``, ``label``, ``split`` ("train"/"valid"),
    ``PAIR_COLUMNS`` and the feature-store columns.
    """
    import pandas as pd

    from flywheel.features import FeatureStore
    from flywheel.recsys._ingest import load_items, load_purchases

    config = config or RankerConfig()
    say = progress or (lambda _m: None)
    lines = load_purchases(project)
    data_end = lines["InvoiceDate"].max() + pd.Timedelta(seconds=1)
    horizon = data_end if end is None else min(_timestamp(end, "end"), data_end)
    lines = lines.loc[lines["InvoiceDate"] < horizon]
    if lines.empty:
        raise RecsysError(f"end: no ingested purchases before {horizon:%Y-%m-%d}")
    grid = _snapshot_grid(project, lines, data_end)
    train_cuts, valid_cut = ranker_cutoffs(horizon, config, align=grid)
    if train_cuts[0] <= lines["InvoiceDate"].min():
        raise RecsysError(
            f"ranker: the first cut-off {train_cuts[0]:%Y-%m-%d} is before the data starts; "
            "use fewer cutoffs or a shorter window"
        )
    frame, _ = build_ranker_frame(
        lines, [*train_cuts, valid_cut], config, catalogue=load_items(project), progress=say
    )
    valid_ts = valid_cut.tz_localize("UTC")
    frame["split"] = np.where(frame["event_timestamp"] == valid_ts, "valid", "train")
    if not (frame["split"] == "valid").any() or not (frame["split"] == "train").any():
        raise RecsysError("ranker: the training or the validation cut-off has no labelled query")
    say(f"ranker data: point-in-time join of {len(frame):,} rows")
    own = store is None
    fs = store if store is not None else FeatureStore(project)
    try:
        ds = fs.create_training_dataset(
            name or _dataset_name(), frame, [*USER_FEATURE_REFS, *ITEM_FEATURE_REFS]
        )
    finally:
        if own:
            fs.close()
    return ds.name


def _snapshot_grid(project: Project, lines: pd.DataFrame, end: pd.Timestamp) -> pd.DatetimeIndex:
    """The snapshot times the last ``ingest`` wrote (``ingest(history_weeks=...)`` may have
    kept fewer than ``snapshot_times`` would)."""
    import pandas as pd

    from flywheel.recsys._ingest import data_dir, snapshot_times

    path = data_dir(project) / "users.parquet"
    if not path.is_file():
        return snapshot_times(lines["InvoiceDate"].min(), end)
    stamps = pd.read_parquet(path, columns=["event_timestamp"])["event_timestamp"].unique()
    times = pd.DatetimeIndex(stamps)
    if times.tz is not None:
        times = times.tz_convert("UTC").tz_localize(None)
    return times.sort_values()


def _timestamp(value: str | pd.Timestamp, what: str) -> pd.Timestamp:
    import pandas as pd

    try:
        ts = pd.Timestamp(value)
    except (TypeError, ValueError):
        ts = pd.NaT
    if ts is pd.NaT:
        raise RecsysError(f"{what}: {value!r} is not a date (use YYYY-MM-DD)")
    return ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts


def ranker_job_spec(
    project: Project,
    *,
    dataset: str,
    config: RankerConfig | None = None,
    register: str = DEFAULT_MODEL,
    name: str = DEFAULT_MODEL,
    team: str = "default",
    priority: int = 50,
) -> JobSpec:
    """A one-process scheduled job that trains the LightGBM ranker on ``dataset``
    (``write_ranker_dataset``), logs NDCG@20 to tracking and registers ``register``."""
    from flywheel.training import JobSpec, Resources

    cfg = config or RankerConfig()
    return JobSpec(
        name=name,
        entrypoint="flywheel.recsys._ranker_train:main",
        team=team,
        priority=priority,
        max_restarts=1,
        resources=Resources(nodes=1, procs_per_node=1, cpus_per_proc=1),
        dataset=dataset,
        hyperparameters=cfg.to_dict(),
        experiment=name,
        register=register,
        workdir=str(project.root),
    )


__all__ = [
    "DEFAULT_MODEL",
    "ITEM_COLUMNS",
    "ITEM_FEATURE_REFS",
    "PAIR_COLUMNS",
    "RANKER_FEATURES",
    "RANKER_GENERATORS",
    "USER_COLUMNS",
    "USER_FEATURE_REFS",
    "FittedGenerators",
    "HistoryIndex",
    "RankerConfig",
    "UserHistory",
    "build_ranker_frame",
    "pair_inputs",
    "ranker_cutoffs",
    "ranker_features",
    "ranker_job_spec",
    "ranker_matrix",
    "ranker_missing_values",
    "read_item_features",
    "read_user_features",
    "store_columns",
    "union_rows",
    "write_ranker_dataset",
]
