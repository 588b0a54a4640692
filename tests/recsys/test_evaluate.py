from __future__ import annotations

import json

import pandas as pd
import pytest

from flywheel.recsys import VIEWS, evaluate_offline


def test_offline_table_on_a_small_synthetic_shop(tiny_lines: pd.DataFrame) -> None:
    steps: list[str] = []
    report = evaluate_offline(tiny_lines, text_method="tfidf", progress=steps.append)
    names = [r.name for r in report.rows]
    assert names[0] == "served pipeline"  # GET /recommendations' Pipeline, replayed
    for expected in (
        "repeat",
        "co-occurrence",
        "popularity",
        "trending",
        "content",
        "union (RRF)",
        "hybrid",
        "MostPop",
        "RepeatFreq",
        "ItemKNN-cosine",
        "EASE (λ tuned)",
        "iALS f=64",
    ):
        assert expected in names
    for row in report.rows:
        assert set(row.metrics) == set(VIEWS), row.name
        for m in row.metrics.values():
            assert 0.0 <= m.recall <= 1.0 and 0.0 <= m.ndcg <= 1.0 and m.users > 0
    # The repeat generator can never hit in new-only; popularity equals MostPop exactly.
    assert report.row("repeat").metrics["new-only"].recall == 0.0
    assert report.row("popularity").metrics["all"] == report.row("MostPop").metrics["all"]
    # The synthetic shop has repeat buying and tastes: the hybrid beats popularity.
    hybrid, pop = report.row("hybrid").metrics, report.row("MostPop").metrics
    assert hybrid["all"].ndcg > pop["all"].ndcg and hybrid["new-only"].ndcg > pop["new-only"].ndcg
    assert report.validation["test_end"].startswith("2011-11-09")
    assert report.pool_recall["all"]["union"] >= max(
        v for k, v in report.pool_recall["all"].items() if k != "union"
    )
    table = report.format_table()
    assert table.splitlines()[0].startswith("| model | kind | R@20 all")
    assert len(table.splitlines()) == 2 + len(report.rows)
    assert "hybrid vs best baseline on new-only" in report.format_notes()
    assert "served pipeline vs best baseline on all" in report.format_notes()
    served = report.row("served pipeline")
    assert served.kind == "served"
    for view in ("all", "new-only"):  # the blend tuning chose, named; a linear one with weights
        chosen = served.params[view]
        assert chosen["blend"] in ("learned (LambdaRank)", "linear"), chosen
        assert chosen["blend"] != "linear" or chosen["weights"], chosen
        assert {"diversity", "ease_lambda"} <= chosen.keys(), chosen
    assert served.metrics["all"].ndcg > pop["all"].ndcg
    json.dumps(report.to_dict())
    assert any("EASE" in s for s in steps)


def test_hyper_parameters_never_see_the_test_window(tiny_lines: pd.DataFrame) -> None:
    """Scrambling what was bought in the test window changes the scores, not one choice."""
    import numpy as np

    scrambled = tiny_lines.copy()
    test = (scrambled["InvoiceDate"] >= "2011-11-09").to_numpy()
    codes = scrambled["StockCode"].astype(str).to_numpy().copy()
    codes[test] = np.random.default_rng(0).permutation(codes[test])
    scrambled["StockCode"] = codes
    a = evaluate_offline(tiny_lines, text_method="tfidf", ials=False)
    b = evaluate_offline(scrambled, text_method="tfidf", ials=False)
    assert [r.params for r in a.rows] == [r.params for r in b.rows]
    assert a.row("hybrid").metrics != b.row("hybrid").metrics


def test_rolling_origin_retunes_before_each_cutoff(tiny_lines: pd.DataFrame) -> None:
    from flywheel.recsys import evaluate_rolling

    cutoffs = ["2011-10-09", "2011-11-09"]
    rolling = evaluate_rolling(tiny_lines, cutoffs, text_method="tfidf", ials=False, ranker=False)
    assert rolling.cutoffs == cutoffs and len(rolling.reports) == 2
    for cut, report in zip(cutoffs, rolling.reports, strict=True):
        assert report.train_end.startswith(cut)
        assert report.test_end.startswith(str(pd.Timestamp(cut) + pd.DateOffset(months=1))[:10])
        # validation is carved before the cut-off: no test month is looked at
        assert report.validation["test_end"] <= report.train_end
    # the two cut-offs are different problems, tuned separately
    assert rolling.reports[0].row("hybrid").metrics != rolling.reports[1].row("hybrid").metrics
    for view in VIEWS:
        got = rolling.mean("hybrid", view, "recall")
        assert got == pytest.approx(
            sum(r.row("hybrid").metrics[view].recall for r in rolling.reports) / 2
        )
    assert rolling.names()[0] == "served pipeline"
    table = rolling.format_table("hybrid")
    assert table.splitlines()[2].startswith("| **hybrid** | hybrid | all |")
    assert any("target" in line for line in rolling.verdict("hybrid"))
