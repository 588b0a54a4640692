"""Re-ranking functions: MMR, exploration placement, the exploration reward ledger."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.recsys import ExplorationLedger, for_sale, mmr, place_exploration


def test_for_sale_drops_fees_postage_and_vouchers() -> None:
    assert for_sale("85123A")
    assert not for_sale("POST")
    assert not for_sale("BANK CHARGES")
    assert not for_sale("gift_0001_20")


def test_mmr_keeps_relevance_order_at_lambda_one() -> None:
    rel = [0.9, 0.8, 0.7, 0.6]
    assert mmr(rel, ["a", "a", "a", "b"], 3, 1.0) == [0, 1, 2]


def test_mmr_spreads_categories() -> None:
    rel = [1.0, 0.99, 0.98, 0.5, 0.4]
    cats = ["a", "a", "a", "b", "c"]
    picked = mmr(rel, cats, 3, 0.5)
    assert picked[0] == 0
    assert {cats[i] for i in picked} == {"a", "b", "c"}


def test_mmr_uses_embeddings_where_given() -> None:
    # Items 0 and 1 are near-duplicates by text although their categories differ.
    v = np.asarray([[1.0, 0.0], [0.999, 0.045], [0.0, 1.0]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    assert mmr([1.0, 0.95, 0.6], ["x", "y", "z"], 2, 0.5, v) == [0, 2]
    assert mmr([1.0, 0.95, 0.6], ["x", "y", "z"], 2, 0.5) == [0, 1]


def test_place_exploration_inserts_at_positions() -> None:
    page = ["a", "b", "c", "d"]
    assert place_exploration(page, ["X", "Y"], [1, 3]) == ["a", "X", "b", "Y", "c", "d"]
    assert place_exploration(page, ["X"], [10, 12]) == ["a", "b", "c", "d", "X"]
    assert place_exploration(page, [], [1]) == page


def test_ledger_rewards_clicks_and_closes_ignored_pages() -> None:
    got: list[tuple[str, list[dict[str, object]]]] = []
    ledger = ExplorationLedger(lambda exp, rows: got.append((exp, rows)), ttl_s=60)
    ledger.shown("ex", 1, "d1", ["i1", "i2"])
    ledger.shown("ex", 2, "d2", ["i3"])
    ledger.acted(1, "i2")  # user 1 clicks an explored item
    ledger.acted(2, "zz")  # user 2 clicks something else: still open
    ledger.shown("ex", 2, "d3", ["i4"])  # user 2's next page: d2 closes with 0
    assert ledger.flush(now=0) == 2
    rows = {r["decision_id"]: r["reward"] for _, batch in got for r in batch}
    assert rows == {"d1": 1.0, "d2": 0.0}
    assert ledger.flush(now=1e12) == 1  # d3 expires with 0
    assert got[-1][1][0]["decision_id"] == "d3" and got[-1][1][0]["reward"] == 0.0


def test_ledger_keeps_rewards_when_writing_fails() -> None:
    calls = {"n": 0}

    def flaky(exp: str, rows: list[dict[str, object]]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionError("database down")

    ledger = ExplorationLedger(flaky)
    ledger.shown("ex", 1, "d1", ["i1"])
    ledger.acted(1, "i1")
    with pytest.raises(ConnectionError):
        ledger.flush()
    assert ledger.flush() == 1
