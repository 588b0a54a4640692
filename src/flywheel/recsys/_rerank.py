"""Re-ranking: filters, diversity (MMR) and exploration slots, as plain functions.

* ``for_sale`` — a StockCode that is a product (not postage, fees, discounts, gift vouchers);
* ``mmr`` — maximal marginal relevance (Carbonell & Goldstein 1998): pick, one at a time, the
  item maximising ``lam * relevance - (1 - lam) * max similarity to the items already picked``;
  similarity is the cosine of item embeddings where both items have one, else 1 for the same
  category and 0 otherwise;
* ``place_exploration`` — put exploration items at fixed positions of a ranked list;
* ``ExplorationLedger`` — remembers which exploration items were shown to whom under which bandit
  decision, and turns what the user did next into rewards: 1 when the user clicks or buys an
  explored item, 0 when the user's next page comes (or ``ttl_s`` passes) without that.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from flywheel.recsys._data import NON_PRODUCT_CODES

T = TypeVar("T")


def for_sale(item_id: str) -> bool:
    """False for StockCodes that are not products (``NON_PRODUCT_CODES``, ``gift_*``)."""
    return item_id not in NON_PRODUCT_CODES and not item_id.lower().startswith("gift_")


def mmr(
    relevance: Sequence[float],
    categories: Sequence[str],
    k: int,
    lam: float,
    vectors: np.ndarray | None = None,
) -> list[int]:
    """Positions (into the inputs) of ``k`` items chosen by maximal marginal relevance.

    ``relevance`` is max-normalised inside; ``lam=1`` keeps the relevance order, ``lam=0`` only
    spreads. ``vectors`` (n, d), L2-normalised rows or all-zero rows for "no embedding".
    """
    n = len(relevance)
    k = min(k, n)
    if k == 0:
        return []
    rel = np.asarray(relevance, dtype=np.float64)
    top = float(np.max(np.abs(rel))) or 1.0
    rel = rel / top
    if lam >= 1.0:
        return [int(i) for i in np.argsort(-rel, kind="stable")[:k]]
    cats = np.asarray(categories, dtype=object)
    has_vec = None if vectors is None else np.linalg.norm(vectors, axis=1) > 0
    max_sim = np.zeros(n)
    chosen: list[int] = []
    free = np.ones(n, dtype=bool)
    for _ in range(k):
        gain = lam * rel - (1.0 - lam) * max_sim
        gain[~free] = -np.inf
        best = int(np.argmax(gain))
        chosen.append(best)
        free[best] = False
        sim = (cats == cats[best]).astype(np.float64)
        if vectors is not None and has_vec is not None and has_vec[best]:
            cos = vectors @ vectors[best]
            sim = np.where(has_vec, np.clip(cos, 0.0, 1.0), sim)
        np.maximum(max_sim, sim, out=max_sim)
    return chosen


def place_exploration(ranked: list[T], explore: Sequence[T], slots: Sequence[int]) -> list[T]:
    """``ranked`` with ``explore[i]`` inserted at position ``slots[i]`` (0-based; positions past
    the end append). The length grows by ``min(len(explore), len(slots))``."""
    out = list(ranked)
    for pos, item in sorted(zip(slots, explore, strict=False), key=lambda p: p[0]):
        out.insert(min(pos, len(out)), item)
    return out


@dataclass
class _Shown:
    decision_id: str
    items: frozenset[str]
    at: float


class ExplorationLedger:
    """Open exploration decisions per user, closed into bandit rewards (thread-safe).

    ``reward(experiment, [{"unit_id", "reward", "decision_id"}, ...])`` is called with each batch
    of closed decisions (by ``flush``, from a background thread: never on the request path).
    """

    def __init__(
        self,
        reward: Callable[[str, list[dict[str, object]]], object],
        *,
        ttl_s: float = 1800.0,
        capacity: int = 100_000,
    ) -> None:
        self._reward = reward
        self._ttl = ttl_s
        self._capacity = capacity
        self._open: OrderedDict[int, dict[str, _Shown]] = OrderedDict()
        self._closed: dict[str, list[dict[str, object]]] = {}
        self._lock = threading.Lock()

    def shown(self, experiment: str, user_id: int, decision_id: str, items: Sequence[str]) -> None:
        """A page with exploration ``items`` was served; an older open decision of the user
        closes with reward 0 (the user moved on without taking it)."""
        with self._lock:
            self._close(experiment, user_id, 0.0)
            self._open.setdefault(user_id, {})[experiment] = _Shown(
                decision_id, frozenset(items), time.time()
            )
            self._open.move_to_end(user_id)
            while len(self._open) > self._capacity:
                uid, old = self._open.popitem(last=False)
                for exp, shown in old.items():
                    self._closed.setdefault(exp, []).append(_row(uid, shown, 0.0))

    def acted(self, user_id: int, item_id: str) -> None:
        """The user clicked or bought ``item_id``: reward 1 if it was an open exploration item."""
        with self._lock:
            for exp, shown in list(self._open.get(user_id, {}).items()):
                if item_id in shown.items:
                    self._close(exp, user_id, 1.0)

    def _close(self, experiment: str, user_id: int, reward: float) -> None:
        per_user = self._open.get(user_id)
        shown = None if per_user is None else per_user.pop(experiment, None)
        if per_user is not None and not per_user:
            del self._open[user_id]
        if shown is not None:
            self._closed.setdefault(experiment, []).append(_row(user_id, shown, reward))

    def flush(self, now: float | None = None) -> int:
        """Close decisions older than ``ttl_s`` with reward 0 and hand every closed decision to
        ``reward``; returns how many were handed over. A failing ``reward`` keeps them."""
        now = time.time() if now is None else now
        with self._lock:
            for uid, per_user in list(self._open.items()):
                for exp, shown in list(per_user.items()):
                    if now - shown.at > self._ttl:
                        self._close(exp, uid, 0.0)
            batches, self._closed = self._closed, {}
        done = 0
        for exp, rows in batches.items():
            try:
                self._reward(exp, rows)
                done += len(rows)
            except Exception:
                with self._lock:  # keep them for the next flush
                    self._closed.setdefault(exp, []).extend(rows)
                raise
        return done


def _row(user_id: int, shown: _Shown, reward: float) -> dict[str, object]:
    return {
        "unit_id": str(user_id),
        "reward": reward,
        "decision_id": shown.decision_id,
        "event_id": f"{shown.decision_id}:r",
    }
