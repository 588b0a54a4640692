"""Top-K ranking metrics of protocol OR-T1 and the loop that applies them to a scorer.

Definitions (binary relevance, K = 20 in OR-T1):

* ``Recall@K = |top-K ∩ GT| / |GT|``
* ``NDCG@K = Σ_{r<K, top[r] ∈ GT} 1/log2(r+2) / Σ_{r<min(|GT|,K)} 1/log2(r+2)``
* ``HR@K = 1`` when at least one of the top K is in GT, else 0.

Each is averaged over the users whose ground truth is non-empty (in the ``new-only`` view, items
the user bought in train are removed from both the ranked list and the ground truth first).
A ranked list may be shorter than K (``-1`` pads it): a generator that has fewer candidates
simply recommends fewer items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from flywheel.recsys._protocol import Split

View = Literal["all", "new-only"]
VIEWS: tuple[View, ...] = ("all", "new-only")
ScoreFn = Callable[[np.ndarray], np.ndarray]
"""Maps a batch of user rows to dense scores (batch x n_items); ``-inf`` = not recommended."""


def _discounts(k: int) -> np.ndarray:
    return 1.0 / np.log2(np.arange(2, k + 2))


def recall_at_k(ranked: Sequence[int] | np.ndarray, truth: set[int] | np.ndarray, k: int) -> float:
    """Share of the ground truth found in the first ``k`` of ``ranked`` (``-1`` entries skipped)."""
    gt = set(np.asarray(truth).tolist()) if not isinstance(truth, set) else truth
    if not gt:
        raise ValueError("recall is undefined for an empty ground truth")
    top = [int(i) for i in list(ranked)[:k] if int(i) >= 0]
    return sum(i in gt for i in top) / len(gt)


def ndcg_at_k(ranked: Sequence[int] | np.ndarray, truth: set[int] | np.ndarray, k: int) -> float:
    """Binary-gain NDCG of the first ``k`` of ``ranked``; the ideal has min(|GT|, k) hits."""
    gt = set(np.asarray(truth).tolist()) if not isinstance(truth, set) else truth
    if not gt:
        raise ValueError("NDCG is undefined for an empty ground truth")
    disc = _discounts(k)
    gain = sum(disc[r] for r, i in enumerate(list(ranked)[:k]) if int(i) >= 0 and int(i) in gt)
    return float(gain / disc[: min(len(gt), k)].sum())


def hit_at_k(ranked: Sequence[int] | np.ndarray, truth: set[int] | np.ndarray, k: int) -> float:
    """1.0 when any of the first ``k`` of ``ranked`` is in the ground truth, else 0.0."""
    gt = set(np.asarray(truth).tolist()) if not isinstance(truth, set) else truth
    return float(any(int(i) >= 0 and int(i) in gt for i in list(ranked)[:k]))


@dataclass(frozen=True)
class ViewMetrics:
    """Mean Recall/NDCG/HR@K of one view over ``users`` users with a non-empty ground truth."""

    recall: float
    ndcg: float
    hit_rate: float
    users: int

    def to_dict(self) -> dict[str, float | int]:
        return {
            "recall": self.recall,
            "ndcg": self.ndcg,
            "hit_rate": self.hit_rate,
            "users": self.users,
        }


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` best scores per row, best first; ``-1`` where the score is -inf.

    Selection is ``argpartition`` then a sort of the k winners by descending score (the
    reference script's order, deterministic for a given input).
    """
    n = scores.shape[1]
    kk = min(k, n)
    if kk < n:
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        top = np.tile(np.arange(n), (scores.shape[0], 1))
    order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1)
    top = np.take_along_axis(top, order, 1)
    valid = np.isfinite(np.take_along_axis(scores, top, 1))
    top = np.where(valid, top, -1)
    if kk < k:
        top = np.pad(top, ((0, 0), (0, k - kk)), constant_values=-1)
    return top


def metrics_from_rankings(
    rankings: np.ndarray, ground_truth: Sequence[np.ndarray], k: int
) -> ViewMetrics:
    """Vectorised Recall/NDCG/HR@k of ranked lists (rows, ``-1`` padded) against ground truth.

    Users with an empty ground truth are skipped (not counted as zero).
    """
    disc = _discounts(k)
    recall, ndcg, hit = [], [], []
    for row, gt in zip(rankings, ground_truth, strict=True):
        if len(gt) == 0:
            continue
        top = row[:k]
        hits = np.isin(top, gt) & (top >= 0)
        n_hits = hits.sum()
        recall.append(n_hits / len(gt))
        hit.append(float(n_hits > 0))
        ndcg.append((hits * disc[: len(top)]).sum() / disc[: min(len(gt), k)].sum())
    if not recall:
        return ViewMetrics(0.0, 0.0, 0.0, 0)
    return ViewMetrics(
        float(np.mean(recall)), float(np.mean(ndcg)), float(np.mean(hit)), len(recall)
    )


def rank_users(
    score: ScoreFn, split: Split, view: View, k: int = 20, batch_size: int = 512
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Top-k lists of every test user for a view, and the view's ground truth.

    In ``new-only`` the user's train items get ``-inf`` before ranking and leave the truth.
    """
    users = split.test_users
    rankings = np.empty((len(users), k), dtype=np.int64)
    for b in range(0, len(users), batch_size):
        ub = users[b : b + batch_size]
        s = np.array(score(ub), dtype=np.float64, copy=True)
        if view == "new-only":
            seen = split.seen(ub)
            s[seen.nonzero()] = -np.inf
        rankings[b : b + len(ub)] = top_k(s, k)
    truth = view_truth(split, view)
    return rankings, truth


def view_truth(split: Split, view: View) -> list[np.ndarray]:
    """The ground truth of each test user in a view (``new-only`` drops their train items)."""
    if view == "all":
        return list(split.ground_truth)
    truth = []
    for j, u in enumerate(split.test_users):
        truth.append(np.setdiff1d(split.ground_truth[j], split.train.X[u].indices))
    return truth


def evaluate_view(
    score: ScoreFn, split: Split, view: View, k: int = 20, batch_size: int = 512
) -> ViewMetrics:
    """Recall/NDCG/HR@k of a scorer on one view of a split (full ranking over all items)."""
    rankings, truth = rank_users(score, split, view, k, batch_size)
    return metrics_from_rankings(rankings, truth, k)
