"""What a recommender process keeps in memory: fitted generators, item catalogue, content index.

``OnlineState`` is fitted on the purchases written by the last ``ingest``:

* the item catalogue (ids, categories, content embeddings) — it grows while serving when
  ``add_items`` brings new products: each gets a content embedding at once (``ContentEncoder``:
  MiniLM, or the TF-IDF space fitted on the catalogue) and enters the content index, so the
  ``content`` generator and the ``new-items`` exploration arm can show it;
* ``repeat`` / ``cooc`` / ``trending`` / ``popularity`` generators over the train items (new
  items are not in the co-occurrence matrix until the next refit; trending counts them);
* each known user's purchase history (most recent first), for the two-tower's user tower.

Row numbers: rows ``< n_train`` are train items (the generators' columns); rows from
``n_train`` on are items added while serving.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from flywheel.recsys._errors import RecsysError
from flywheel.recsys._ingest import OTHER_CATEGORY, _head_noun, load_items, load_purchases
from flywheel.recsys._text import ContentEncoder, TextMethod, embed_texts

if TYPE_CHECKING:
    from flywheel.project import Project
    from flywheel.recsys._baselines import EASE
    from flywheel.recsys._candidates import CoOccurrence, Popularity, RepeatPurchase
    from flywheel.recsys._history import HistoryIndex
    from flywheel.recsys._index import ItemIndex
    from flywheel.recsys._protocol import TrainData

HISTORY_LEN = 20  # purchases kept per user for the two-tower's user tower


@dataclass(frozen=True)
class NewItem:
    """A product that arrived after the last ingest (``POST /items``)."""

    item_id: str
    description: str
    price: float | None = None
    category: str | None = None


class OnlineState:
    """The in-memory generators and catalogue (see the module docstring).

    ``repeat`` / ``cooc`` may be ``None`` (not built): requests then use what is left.
    """

    def __init__(
        self,
        train: TrainData,
        categories: np.ndarray,
        half_life_days: float,
        *,
        descriptions: Sequence[str] | None = None,
        prices: Sequence[float] | None = None,
        content_method: TextMethod = "tfidf",
        cache_dir: Path | None = None,
    ) -> None:
        from flywheel.recsys._candidates import CoOccurrence, Popularity, RepeatPurchase

        self.train = train
        self.n_train = len(train.items)
        self.item_ids = [str(i) for i in train.items]
        self.item_index = {item: row for row, item in enumerate(self.item_ids)}
        self.user_index = {int(u): row for row, u in enumerate(train.users)}
        self.categories = categories
        self.category_rows: dict[str, np.ndarray] = {
            str(c): np.flatnonzero(categories == c) for c in np.unique(categories)
        }
        texts = [str(t) for t in (descriptions if descriptions is not None else train.item_text)]
        self.descriptions = texts
        self.prices = list(prices) if prices is not None else [0.0] * self.n_train
        # Source parameters: the generators' defaults (60-day half-lives, invoice baskets), not
        # tuned for serving yet (tune_pipeline tunes the blend weights only).
        self.repeat: RepeatPurchase | None = RepeatPurchase().fit(train)
        self.cooc: CoOccurrence | None = CoOccurrence(basket="invoice").fit(train)
        self.trending: Popularity = Popularity(half_life_days=half_life_days).fit(train)
        self.popularity: Popularity = Popularity().fit(train)
        self.cooc.similarity()  # computed once here, not by the first request
        self.history_indptr, self.history_rows = _histories(train)
        # Train items by first sale, newest first: the catalogue's "new arrivals" before any
        # item is added while serving.
        first_sale = np.full(self.n_train, np.inf)
        ages = train.events.groupby("item")["age_days"].max()
        first_sale[ages.index.to_numpy()] = ages.to_numpy()
        self.newest_rows = np.argsort(first_sale, kind="stable")[:1000]
        self.encoder = ContentEncoder(content_method).fit(texts)
        if self.encoder.method_used == "minilm":  # the same model; cached on disk by text
            self.content = embed_texts(texts, "minilm", cache_dir=cache_dir)[0]
        else:
            self.content = self.encoder.encode(texts)
        self.content_index: ItemIndex | None = _build_index(self.item_ids, self.content)
        self.new_items: deque[tuple[int, float]] = deque(maxlen=10_000)  # (row, added at)
        self.lock = threading.Lock()  # guards the in-place trending counts and the catalogue
        self.update_lock = threading.Lock()  # serialises co-occurrence rebuilds
        self.version = 0  # bumped by every catalogue change
        self.trending_version = 0  # bumped by every trending update
        self._trending_cache: tuple[int, np.ndarray, float, np.ndarray] | None = None
        self._popular: tuple[np.ndarray, np.ndarray] | None = None
        self._history_index: HistoryIndex | None = None
        self._ease: dict[float, EASE] = {}
        self._ease_lock = threading.Lock()  # one fit per λ (not update_lock: see ``ease``)

    @classmethod
    def from_project(
        cls,
        project: Project,
        half_life_days: float = 14.0,
        *,
        content_method: TextMethod = "tfidf",
    ) -> OnlineState:
        """Fit on the last ``ingest`` of ``project`` (``DataUnavailableError`` when none)."""
        import pandas as pd

        from flywheel.recsys._protocol import build_train_data

        lines = load_purchases(project)
        items = load_items(project)
        end = pd.Timestamp(lines["InvoiceDate"].max()) + pd.Timedelta(seconds=1)
        train = build_train_data(lines, end)
        ids = items["item_id"].astype(str)
        by_id = dict(zip(ids, items["category"].astype(str), strict=True))
        desc = dict(zip(ids, items["description"].astype(str), strict=True))
        price = dict(zip(ids, items["price"].astype(float), strict=True))
        keys = [str(i) for i in train.items]
        cats = np.asarray([by_id.get(i, OTHER_CATEGORY) for i in keys], dtype=object)
        return cls(
            train,
            cats,
            half_life_days,
            descriptions=[desc.get(i, "") for i in keys],
            prices=[price.get(i, 0.0) for i in keys],
            content_method=content_method,
            cache_dir=project.root / ".flywheel" / "cache",
        )

    # -- reads ------------------------------------------------------------------------------

    def category_of(self, item_id: str) -> str:
        row = self.item_index.get(item_id)
        return OTHER_CATEGORY if row is None else str(self.categories[row])

    def history(self, user_id: int) -> list[str]:
        """The user's purchased items in the ingested data, most recent first (at most 20)."""
        row = self.user_index.get(user_id)
        if row is None:
            return []
        rows = self.history_rows[self.history_indptr[row] : self.history_indptr[row + 1]]
        return [self.item_ids[r] for r in rows.tolist()]

    def purchased_rows(self, user_id: int) -> np.ndarray:
        """Train rows the user bought (for the "new items only" filter)."""
        row = self.user_index.get(user_id)
        if row is None:
            return np.empty(0, dtype=np.int64)
        return np.asarray(self.train.X[row].indices, dtype=np.int64)

    def history_index(self) -> HistoryIndex:
        """Per-user purchase histories for the ranker's features (built on first use)."""
        if self._history_index is None:
            from flywheel.recsys._history import HistoryIndex

            self._history_index = HistoryIndex(
                self.train, self.categories[: self.n_train], np.asarray(self.prices[: self.n_train])
            )
        return self._history_index

    def ease(self, lam: float) -> EASE | None:
        """EASE^R with ``lam`` fitted on the train items (once per λ); ``None`` when the
        catalogue is too large for its dense item x item matrix."""
        from flywheel.recsys._baselines import EASE, MAX_DENSE_ITEMS

        if self.n_train > MAX_DENSE_ITEMS or self.n_train == 0:
            return None
        # The served source asks on every request: a fitted model is read without a lock (a
        # dict lookup), so a request never waits for a fit, nor for a co-occurrence rebuild
        # (it once took ``update_lock``, which ``apply_pending`` holds while it rebuilds: the
        # candidates stage then stalled for up to 1.5 s in make demo, issue #14).
        model = self._ease.get(lam)
        if model is not None:
            return model
        with self._ease_lock:
            model = self._ease.get(lam)
            if model is None:
                model = EASE(lam).fit(self.train)
                self._ease = {**self._ease, lam: model}  # swapped whole: readers see either
        return model

    def drop_ease(self, keep: float | None) -> None:
        """Forget the fitted EASE models but ``keep``'s (their matrices are items^2 floats)."""
        with self._ease_lock:
            self._ease = {k: v for k, v in self._ease.items() if k == keep}

    def trending_top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most trending rows and scores, recomputed at most every 100 ms after
        events changed the counts (one pass over the catalogue, not one per request)."""
        cached = self._trending_cache
        now = time.monotonic()
        if (
            cached is None
            or len(cached[1]) < n
            or (cached[0] != self.trending_version and now - cached[2] >= 0.1)
        ):
            with self.lock:
                version = self.trending_version
                rows, scores = _dense_top(self.trending.scores, max(n, 500))
            cached = self._trending_cache = (version, rows, now, scores)
        return cached[1][:n], cached[3][:n]

    def popularity_top(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``n`` most popular rows (all time; computed once)."""
        if self._popular is None or len(self._popular[0]) < n:
            self._popular = _dense_top(self.popularity.scores, max(n, 1000))
        return self._popular[0][:n], self._popular[1][:n]

    def count_trending(self, rows: Sequence[int]) -> None:
        """Add fresh events to the trending counts (rows of any item, new ones included)."""
        with self.lock:
            self.trending.update(rows)
            self.trending_version += 1

    def content_profile(self, item_ids: Sequence[str]) -> np.ndarray | None:
        """A normalised, recency-weighted mean of the items' content vectors (None if none)."""
        rows = [self.item_index[i] for i in item_ids if i in self.item_index]
        if not rows:
            return None
        weights = 0.8 ** np.arange(len(rows), dtype=np.float32)
        profile = (self.content[np.asarray(rows)] * weights[:, None]).sum(axis=0)
        norm = float(np.linalg.norm(profile))
        return None if norm == 0 else profile / norm

    # -- writes -----------------------------------------------------------------------------

    def add_items(self, items: Sequence[NewItem]) -> list[int]:
        """Add (or update the text of) items; returns their rows. Each gets a content embedding
        and enters the content index at once."""
        if not items:
            return []
        vectors = self.encoder.encode([i.description for i in items])
        rows: list[int] = []
        with self.lock:
            fresh_cats: list[str] = []
            for item, vec in zip(items, vectors, strict=True):
                cat = item.category or self._category_from_text(item.description)
                row = self.item_index.get(item.item_id)
                if row is None:
                    row = len(self.item_ids)
                    self.item_ids.append(item.item_id)
                    self.item_index[item.item_id] = row
                    self.descriptions.append(item.description)
                    self.prices.append(float(item.price or 0.0))
                    fresh_cats.append(cat)
                    self.content = np.vstack([self.content, vec[None, :]])
                    self.new_items.append((row, time.time()))
                else:
                    self.descriptions[row] = item.description
                    self.content[row] = vec
                rows.append(row)
            if fresh_cats:
                self.categories = np.concatenate(
                    [self.categories, np.asarray(fresh_cats, dtype=object)]
                )
                for cat in set(fresh_cats):
                    self.category_rows[cat] = np.flatnonzero(self.categories == cat)
                self.trending.extend(len(self.item_ids))
                self.trending_version += 1
            if self.content_index is not None:
                self.content_index.add([self.item_ids[r] for r in rows], vectors)
            self.version += 1
        return rows

    def _category_from_text(self, description: str) -> str:
        noun = _head_noun(description)
        if noun in self.category_rows:
            return noun
        if noun.endswith("S") and noun[:-1] in self.category_rows:
            return noun[:-1]
        return OTHER_CATEGORY


def _histories(train: TrainData) -> tuple[np.ndarray, np.ndarray]:
    """CSR-like (indptr, item rows): each user's distinct purchased items, most recent first."""
    ev = train.events[["user", "item", "age_days"]].sort_values(["user", "age_days"], kind="stable")
    ev = ev.drop_duplicates(["user", "item"], keep="first")
    ev = ev[ev.groupby("user").cumcount().to_numpy() < HISTORY_LEN]
    counts = np.bincount(ev["user"].to_numpy(), minlength=train.n_users)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, ev["item"].to_numpy().astype(np.int64)


def _dense_top(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and scores of the ``n`` best positive scores, best first."""
    finite = np.flatnonzero(np.isfinite(scores) & (scores > 0))
    if len(finite) > n:
        finite = finite[np.argpartition(-scores[finite], n - 1)[:n]]
    order = finite[np.argsort(-scores[finite], kind="stable")]
    return order.astype(np.int64), scores[order].astype(np.float64)


def _build_index(ids: list[str], vectors: np.ndarray) -> ItemIndex | None:
    try:
        from flywheel.recsys._index import ItemIndex
    except ImportError:  # pragma: no cover - the index module ships with the package
        return None
    if vectors.ndim != 2 or vectors.shape[1] < 2:
        raise RecsysError("content embeddings: need at least 2 dimensions")
    index = ItemIndex(vectors.shape[1])
    index.add(ids, vectors)
    return index
