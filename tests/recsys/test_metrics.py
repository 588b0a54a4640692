from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flywheel.recsys import (
    build_split,
    evaluate_view,
    hit_at_k,
    metrics_from_rankings,
    ndcg_at_k,
    rank_users,
    recall_at_k,
    top_k,
)


def test_hand_computed_case() -> None:
    ranked = [3, 1, 7, 2]
    truth = {1, 2, 9}
    # k=3: one hit (item 1) at rank 2 of 3.
    assert recall_at_k(ranked, truth, 3) == pytest.approx(1 / 3)
    idcg = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, truth, 3) == pytest.approx((1 / math.log2(3)) / idcg)
    assert hit_at_k(ranked, truth, 3) == 1.0
    # k=4: two hits (ranks 2 and 4).
    assert recall_at_k(ranked, truth, 4) == pytest.approx(2 / 3)
    dcg = 1 / math.log2(3) + 1 / math.log2(5)
    assert ndcg_at_k(ranked, truth, 4) == pytest.approx(dcg / idcg)
    # k=1: no hit.
    assert recall_at_k(ranked, truth, 1) == 0.0
    assert ndcg_at_k(ranked, truth, 1) == 0.0
    assert hit_at_k(ranked, truth, 1) == 0.0


def test_ideal_ranking_scores_one_and_idcg_is_capped_at_k() -> None:
    assert ndcg_at_k([5, 6], {5, 6}, 2) == pytest.approx(1.0)
    # |GT| = 5 > k = 2: IDCG over two positions only, so a perfect top-2 is 1.0.
    assert ndcg_at_k([5, 6], {5, 6, 7, 8, 9}, 2) == pytest.approx(1.0)
    assert recall_at_k([5, 6], {5, 6, 7, 8, 9}, 2) == pytest.approx(0.4)


def test_padding_is_not_a_recommendation() -> None:
    assert recall_at_k([-1, -1, 4], {4}, 3) == 1.0
    assert ndcg_at_k([4, -1, -1], {4, -1}, 3) < 1.0  # -1 never counts as a hit
    with pytest.raises(ValueError, match="empty ground truth"):
        recall_at_k([1], set(), 1)


def test_top_k_orders_best_first_and_marks_minus_inf() -> None:
    scores = np.array([[0.1, 0.9, -np.inf, 0.5], [-np.inf, -np.inf, 1.0, -np.inf]])
    top = top_k(scores, 3)
    assert top.tolist() == [[1, 3, 0], [2, -1, -1]]
    # k above the number of items pads with -1.
    assert top_k(scores, 6).shape == (2, 6)
    assert top_k(scores, 6)[0, 4:].tolist() == [-1, -1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(-1, 30), min_size=0, max_size=25),
            st.sets(st.integers(0, 30), min_size=0, max_size=12),
        ),
        min_size=1,
        max_size=8,
    ),
    st.integers(1, 20),
)
def test_vectorised_metrics_match_the_definitions(
    cases: list[tuple[list[int], set[int]]], k: int
) -> None:
    rankings = np.full((len(cases), k), -1, dtype=np.int64)
    truths = []
    for j, (ranked, truth) in enumerate(cases):
        # Ranked lists never repeat an item (as top_k guarantees).
        seen: list[int] = []
        for i in ranked:
            if i < 0 or i not in seen:
                seen.append(i)
        row = seen[:k]
        rankings[j, : len(row)] = row
        truths.append(np.array(sorted(truth), dtype=np.int64))
    got = metrics_from_rankings(rankings, truths, k)
    keep = [j for j, t in enumerate(truths) if len(t)]
    assert got.users == len(keep)
    if not keep:
        return
    exp_r = np.mean([recall_at_k(rankings[j], set(truths[j].tolist()), k) for j in keep])
    exp_n = np.mean([ndcg_at_k(rankings[j], set(truths[j].tolist()), k) for j in keep])
    exp_h = np.mean([hit_at_k(rankings[j], set(truths[j].tolist()), k) for j in keep])
    assert got.recall == pytest.approx(exp_r)
    assert got.ndcg == pytest.approx(exp_n)
    assert got.hit_rate == pytest.approx(exp_h)


def _tiny_lines() -> pd.DataFrame:
    rows = [
        # user, item, invoice, date
        (1, "A", "1", "2011-01-01"),
        (1, "B", "1", "2011-01-01"),
        (2, "B", "2", "2011-01-02"),
        (2, "C", "2", "2011-01-02"),
        (3, "C", "3", "2011-01-03"),
        # test period
        (1, "A", "4", "2011-02-01"),  # repeat
        (1, "C", "4", "2011-02-01"),  # new for user 1
        (2, "D", "5", "2011-02-02"),  # D unknown in train: not in the ground truth
        (4, "A", "6", "2011-02-02"),  # user 4 unknown in train: not a test user
    ]
    return pd.DataFrame(
        {
            "CustomerID": [r[0] for r in rows],
            "StockCode": [r[1] for r in rows],
            "InvoiceNo": [r[2] for r in rows],
            "InvoiceDate": pd.to_datetime([r[3] for r in rows]),
            "Description": ["x"] * len(rows),
            "Quantity": [1] * len(rows),
            "UnitPrice": [1.0] * len(rows),
            "Country": ["UK"] * len(rows),
        }
    )


def test_views_on_a_hand_made_split() -> None:
    split = build_split(_tiny_lines(), "2011-02-01")
    assert split.train.items.tolist() == ["A", "B", "C"]
    assert split.train.users.tolist() == [1, 2, 3]
    assert split.test_users.tolist() == [0]  # only user 1 bought a train-known item
    assert split.ground_truth[0].tolist() == [0, 2]  # A and C

    # A scorer that ranks A > B > C for everyone.
    def score(users: np.ndarray) -> np.ndarray:
        return np.tile(np.array([3.0, 2.0, 1.0]), (len(users), 1))

    full = evaluate_view(score, split, "all", k=2)
    assert full.recall == pytest.approx(0.5)  # A hit, C not in top 2
    assert full.ndcg == pytest.approx(1.0 / (1 + 1 / math.log2(3)))
    # new-only: A and B (bought in train) leave the list; C is the only truth and now first.
    rankings, truth = rank_users(score, split, "new-only", k=2)
    assert rankings.tolist() == [[2, -1]]
    assert truth[0].tolist() == [2]
    new = evaluate_view(score, split, "new-only", k=2)
    assert (new.recall, new.ndcg, new.hit_rate, new.users) == (1.0, 1.0, 1.0, 1)
