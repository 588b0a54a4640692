from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from flywheel.recsys import (
    CandidateGenerator,
    CandidateUnion,
    ContentSimilarity,
    CoOccurrence,
    HybridBlend,
    Popularity,
    RecsysError,
    RepeatPurchase,
    Split,
    build_split,
    build_train_data,
    tune_blend_weights,
    validation_split,
)

from .conftest import make_lines

TEXT = {
    "A": "RED CERAMIC MUG",
    "B": "BLUE CERAMIC MUG",
    "C": "VANILLA SCENTED CANDLE",
    "D": "LAVENDER SCENTED CANDLE",
    "E": "GREEN CERAMIC MUG",
}
ROWS = [
    # customer, item, invoice, date
    (1, "A", "1", "2011-01-01"),
    (1, "A", "2", "2011-03-01"),
    (1, "C", "2", "2011-03-01"),
    (2, "A", "3", "2011-03-02"),
    (2, "B", "3", "2011-03-02"),
    (3, "C", "4", "2011-03-03"),
    (3, "D", "4", "2011-03-03"),
    (4, "E", "5", "2011-03-04"),
    (4, "D", "6", "2011-03-05"),
]


@pytest.fixture
def tiny() -> Split:
    """Train before 2011-03-10; customer 1 buys B afterwards (the test window)."""
    lines = make_lines([*ROWS, (1, "B", "9", "2011-04-01")], TEXT)
    return build_split(lines, "2011-03-10", "2011-05-01")


def col(split: Split, code: str) -> int:
    return int(np.flatnonzero(split.train.items == code)[0])


def test_repeat_proposes_only_own_items_by_decayed_count(tiny: Split) -> None:
    u1 = np.array([0])  # customer 1: A twice, C once
    s = RepeatPurchase(half_life_days=None).fit(tiny.train).score(u1)[0]
    assert np.isfinite(s).sum() == 2
    assert s[col(tiny, "A")] > s[col(tiny, "C")] > 0
    assert np.isneginf(s[col(tiny, "B")])
    # With a short half-life the recent C (same invoice as the second A) ties the old A's weight
    # plus a tiny bit: A = 1/2^(68/7) + 1/2^(9/7), C = 1/2^(9/7).
    s = RepeatPurchase(half_life_days=7).fit(tiny.train).score(u1)[0]
    assert s[col(tiny, "A")] > s[col(tiny, "C")]
    with pytest.raises(RecsysError, match="half_life_days"):
        RepeatPurchase(half_life_days=0)


def test_co_occurrence_counts_baskets_and_updates_incrementally(tiny: Split) -> None:
    co = CoOccurrence(half_life_days=None).fit(tiny.train)
    a, b, c, d = (col(tiny, x) for x in "ABCD")
    counts = co.counts.toarray()
    assert counts[a, b] == counts[b, a] == 1  # invoice 3
    assert counts[a, c] == 1 and counts[c, d] == 1
    assert counts.diagonal().sum() == 0
    # Customer 2 bought A and B: C (bought with A) is proposed; D is not reachable.
    s = co.score(np.array([1]))[0]
    assert np.isfinite(s[c]) and np.isneginf(s[d])
    assert co.similar_items(np.array([a]), 2)[0].tolist()[:2] in ([b, c], [c, b])
    # update == refit with the extra baskets.
    co.update([[a, d], [b, d, d]])
    again = build_train_data(
        make_lines(
            [
                *ROWS,
                (9, "A", "x1", "2011-03-06"),
                (9, "D", "x1", "2011-03-06"),
                (9, "B", "x2", "2011-03-06"),
                (9, "D", "x2", "2011-03-06"),
            ],
            TEXT,
        ),
        tiny.train.end,
    )
    full = CoOccurrence(half_life_days=None).fit(again)
    np.testing.assert_array_equal(co.counts.toarray(), full.counts.toarray())
    with pytest.raises(RecsysError, match="unknown item"):
        co.update([[a, 99]])


def test_trending_follows_recent_purchases(tiny: Split) -> None:
    pop = Popularity().fit(tiny.train)
    trend = Popularity(half_life_days=1.0).fit(tiny.train)
    assert pop.name == "popularity" and trend.name == "trending"
    e = col(tiny, "E")
    before = trend.score(np.array([0]))[0]
    trend.update([e] * 5)
    after = trend.score(np.array([0]))[0]
    assert after[e] > before[e] and int(np.argmax(after)) == e


def test_content_similarity_prefers_similar_text(tiny: Split) -> None:
    gen = ContentSimilarity(method="tfidf", half_life_days=None).fit(tiny.train)
    assert gen.method_used == "tfidf"
    s = gen.score(np.array([1]))[0]  # customer 2 bought mugs A and B
    assert s[col(tiny, "E")] > s[col(tiny, "D")]  # another mug beats a candle


def test_union_deduplicates_and_records_reasons(tiny: Split) -> None:
    gens: list[CandidateGenerator] = [
        RepeatPurchase(None),
        CoOccurrence(None),
        Popularity(),
    ]
    union = CandidateUnion(gens, per_generator=3).fit(tiny.train)
    (cands,) = union.candidates(np.array([0]))
    assert len(set(cands.items.tolist())) == len(cands.items)  # no duplicates
    reasons = dict(zip(cands.items.tolist(), cands.reasons, strict=True))
    a = col(tiny, "A")
    assert "repeat" in reasons[a] and "popularity" in reasons[a]
    assert all(r for r in cands.reasons)
    assert np.all(np.diff(cands.scores) <= 0)  # best first
    with pytest.raises(RecsysError, match="distinct names"):
        CandidateUnion([Popularity(), Popularity()])


def test_hybrid_blend_and_its_refusals(tiny: Split) -> None:
    gens: list[CandidateGenerator] = [RepeatPurchase(None), Popularity()]
    only_repeat = HybridBlend(gens, {"repeat": 1.0}).fit(tiny.train).score(np.array([0]))[0]
    assert np.isfinite(only_repeat).sum() == 2  # popularity weighted 0 proposes nothing
    both = HybridBlend(gens, {"repeat": 1.0, "popularity": 0.1}).fit(tiny.train)
    s = both.score(np.array([0]))[0]
    assert np.isfinite(s).all()
    own = [col(tiny, "A"), col(tiny, "C")]
    assert set(np.argsort(-s)[:2].tolist()) == set(own)
    with pytest.raises(RecsysError, match="unknown generators"):
        HybridBlend(gens, {"nope": 1.0})
    with pytest.raises(RecsysError, match=">= 0"):
        HybridBlend(gens, {"repeat": -1.0})


def test_tuning_anchors_on_the_best_single_generator_and_never_loses_to_it(
    small_lines: pd.DataFrame,
) -> None:
    val = validation_split(small_lines, "2011-11-09")
    gens: list[CandidateGenerator] = [
        RepeatPurchase(60.0).fit(val.train),
        CoOccurrence(60.0).fit(val.train),
        Popularity(14.0).fit(val.train),
    ]
    for view in ("all", "new-only"):
        weights, best = tune_blend_weights(gens, val, view, grid=(0.0, 0.1, 1.0), rounds=1)
        anchors = [n for n, w in weights.items() if w == 1.0]
        assert anchors, weights
        alone = {g.name: tune_blend_weights([g], val, view, grid=(0.0,), rounds=1)[1] for g in gens}
        assert best.ndcg >= max(m.ndcg for m in alone.values()) - 1e-12
        if view == "new-only":
            assert weights["repeat"] in (0.0, 1.0) and alone["repeat"].ndcg == 0.0
            assert max(alone, key=lambda n: alone[n].ndcg) in anchors
        json.dumps(weights)


def test_co_occurrence_max_neighbours_keeps_each_items_strongest(tiny: Split) -> None:
    full = CoOccurrence(half_life_days=None).fit(tiny.train)
    kept = CoOccurrence(half_life_days=None, max_neighbours=1).fit(tiny.train)
    s_full, s_kept = full.similarity().toarray(), kept.similarity().toarray()
    for row in range(s_full.shape[0]):
        nonzero = np.flatnonzero(s_full[row])
        assert np.count_nonzero(s_kept[row]) == min(1, len(nonzero))
        if len(nonzero):
            best = nonzero[np.argmax(s_full[row][nonzero])]  # ties: the lower column
            assert s_kept[row, best] == s_full[row, best]
    # a brute-force reference on random data: the k largest per row, ties by column
    import scipy.sparse as sp

    from flywheel.recsys._candidates import _strongest_per_row

    rng = np.random.default_rng(0)
    dense = np.where(rng.random((40, 30)) < 0.4, rng.integers(1, 6, (40, 30)), 0).astype(float)
    got = _strongest_per_row(sp.csr_matrix(dense), 3).toarray()
    for r in range(40):
        cols = sorted(np.flatnonzero(dense[r]), key=lambda c: (-dense[r, c], c))[:3]
        want = np.zeros(30)
        want[cols] = dense[r, cols]
        assert np.array_equal(got[r], want)
    with pytest.raises(RecsysError, match="max_neighbours"):
        CoOccurrence(max_neighbours=0)
