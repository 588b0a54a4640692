from __future__ import annotations

import pandas as pd
import pytest

from flywheel.recsys import (
    EmptySplitError,
    RecsysError,
    Split,
    build_split,
    validation_split,
)


def test_or_t1_counts_match_baselines_md(real_split: Split) -> None:
    # BASELINES.md, protocol OR-T1 step 4; SOURCE.md for the cold-start counts.
    s = real_split.stats
    assert s["train_users"] == 4_063
    assert s["train_items"] == 3_618
    assert s["train_pairs"] == 230_662
    assert s["test_users"] == 1_394
    assert s["cold_start_test_users"] == 271
    assert s["new_test_items"] == 41
    assert sum(len(g) for g in real_split.ground_truth) == s["test_pairs"]


def test_validation_is_carved_from_the_training_period(real_lines: pd.DataFrame) -> None:
    val = validation_split(real_lines)
    assert val.test_end == pd.Timestamp("2011-11-09")
    assert val.train_end == pd.Timestamp("2011-10-09")
    assert val.train.events["age_days"].min() >= 0
    # Nothing of the test month can leak: the validation train ends before its own test window.
    assert val.train.end < val.test_end <= pd.Timestamp("2011-11-09")


def test_bad_dates_are_refused(small_lines: pd.DataFrame) -> None:
    with pytest.raises(RecsysError, match="not a date"):
        build_split(small_lines, "yesterday-ish")
    with pytest.raises(RecsysError, match="must be after"):
        build_split(small_lines, "2011-11-09", "2011-11-01")
    with pytest.raises(EmptySplitError, match="nothing to train on"):
        build_split(small_lines, "1999-01-01", "1999-02-01")


def test_item_text_is_the_most_frequent_description(small_split: Split) -> None:
    text = small_split.train.item_text
    assert len(text) == small_split.train.n_items
    assert all(isinstance(t, str) and t for t in text)
