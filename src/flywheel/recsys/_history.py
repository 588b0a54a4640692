"""Each user's purchase history, as the ranker's user x item features read it (``HistoryIndex``
over the training events; ``UserHistory`` for one user at one time)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from flywheel.recsys._errors import RecsysError

if TYPE_CHECKING:
    from flywheel.recsys._protocol import TrainData

RECENT_ITEMS = 20


@dataclass(frozen=True)
class UserHistory:
    """One user's purchases before "now", in the item-row space of a ``TrainData``.

    ``rows``: distinct items bought; ``invoices``: invoices holding each; ``days_since``: days
    from the last purchase of each to now; ``recent``: the latest ``RECENT_ITEMS`` distinct items,
    most recent first; ``median_price``: median catalogue price of ``rows`` (NaN: none);
    ``category_share`` / ``recent_category_share``: each category's share of the invoices of
    ``rows`` / of the items in ``recent``.
    """

    rows: np.ndarray
    invoices: np.ndarray
    days_since: np.ndarray
    recent: np.ndarray
    median_price: float
    category_share: dict[str, float] = field(default_factory=dict)
    recent_category_share: dict[str, float] = field(default_factory=dict)

    @classmethod
    def empty(cls) -> UserHistory:
        none = np.empty(0, dtype=np.int64)
        return cls(none, np.empty(0), np.empty(0), none, float("nan"))


class HistoryIndex:
    """Per-user purchase histories of a ``TrainData``, indexed once for fast lookups.

    ``categories`` and ``prices`` are the catalogue's category and price per item row
    (``load_items``, which is what the feature store's ``recs_item_metadata`` holds); they may
    be longer than the train items, never shorter. Build one per ``TrainData`` (online: one per
    ``OnlineState``) and reuse it.
    """

    def __init__(
        self,
        train: TrainData,
        categories: Sequence[str] | np.ndarray,
        prices: Sequence[float] | np.ndarray,
    ) -> None:
        import scipy.sparse as sp

        if len(categories) < train.n_items or len(prices) < train.n_items:
            raise RecsysError("ranker: categories and prices must cover every train item")
        self.train = train
        self.categories = np.asarray(categories, dtype=object)
        self.prices = np.asarray(prices, dtype=np.float64)
        ev = train.events
        pairs = ev.groupby(["user", "item"], sort=True)["age_days"].agg(["min", "size"])
        users = pairs.index.get_level_values(0).to_numpy()
        items = pairs.index.get_level_values(1).to_numpy()
        shape = (train.n_users, train.n_items)
        # +1 keeps a zero age from vanishing as an implicit zero of the sparse matrix.
        self._age = sp.csr_matrix((pairs["min"].to_numpy() + 1.0, (users, items)), shape=shape)
        self._count = sp.csr_matrix(
            (pairs["size"].to_numpy().astype(np.float64), (users, items)), shape=shape
        )
        self._user_index = {int(u): r for r, u in enumerate(train.users)}

    def user_row(self, user_id: int) -> int | None:
        return self._user_index.get(int(user_id))

    def history(self, user_row: int | None, *, extra_days: float = 0.0) -> UserHistory:
        """The history of the user at ``user_row`` (``None``: a user with no purchases).

        ``extra_days`` is added to every age (time elapsed since the end of ``train``)."""
        if user_row is None:
            return UserHistory.empty()
        lo, hi = self._age.indptr[user_row], self._age.indptr[user_row + 1]
        rows = self._age.indices[lo:hi].astype(np.int64)
        if not len(rows):
            return UserHistory.empty()
        ages = self._age.data[lo:hi] - 1.0 + extra_days
        counts = self._count.data[lo:hi]
        recent = rows[np.lexsort((rows, ages))][:RECENT_ITEMS]
        price = self.prices[rows]
        price = price[np.isfinite(price)]
        return UserHistory(
            rows=rows,
            invoices=counts,
            days_since=ages,
            recent=recent,
            median_price=float(np.median(price)) if len(price) else float("nan"),
            category_share=_shares(self.categories[rows], counts),
            recent_category_share=_shares(self.categories[recent], np.ones(len(recent))),
        )


def _shares(categories: np.ndarray, weights: np.ndarray) -> dict[str, float]:
    total = float(np.sum(weights))
    per: dict[str, float] = {}
    for c, w in zip(categories.tolist(), np.asarray(weights).tolist(), strict=True):
        per[str(c)] = per.get(str(c), 0.0) + float(w)
    return {c: w / total for c, w in per.items()} if total > 0 else {}
