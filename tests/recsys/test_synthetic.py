from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flywheel.recsys import (
    ONLINE_RETAIL_COLUMNS,
    RecsysError,
    SyntheticConfig,
    clean_transactions,
    generate_transactions,
)

from .conftest import TINY_SHOP


def test_same_seed_same_shop_other_seed_other_shop(tiny_raw: pd.DataFrame) -> None:
    again = generate_transactions(TINY_SHOP)
    pd.testing.assert_frame_equal(tiny_raw, again)
    other = generate_transactions(SyntheticConfig(**{**TINY_SHOP.__dict__, "seed": 8}))
    assert not tiny_raw["StockCode"].astype(str).equals(other["StockCode"].astype(str))


def test_schema_and_the_mess_that_cleaning_removes(small_raw: pd.DataFrame) -> None:
    assert list(small_raw.columns) == list(ONLINE_RETAIL_COLUMNS)
    assert small_raw["InvoiceDate"].is_monotonic_increasing
    assert small_raw["CustomerID"].isna().any()  # guests
    assert small_raw["InvoiceNo"].astype(str).str.startswith("C").any()  # cancellations
    assert (small_raw["Quantity"] < 0).any()
    assert (small_raw["StockCode"].astype(str) == "POST").any()
    clean = clean_transactions(small_raw)
    assert 0.8 * len(small_raw) < len(clean) < len(small_raw)
    assert not (clean["StockCode"].astype(str) == "POST").any()


def test_popularity_is_heavy_tailed(small_lines: pd.DataFrame) -> None:
    counts = small_lines["StockCode"].astype(str).value_counts().to_numpy()
    top = counts[: max(1, len(counts) // 10)].sum() / counts.sum()
    assert top > 0.35  # the top 10 % of items take well over 10 % of the lines


def test_repeat_purchases_and_arrivals_over_time(small_lines: pd.DataFrame) -> None:
    inv_per_pair = small_lines.groupby(
        ["CustomerID", small_lines["StockCode"].astype(str)], observed=True
    )["InvoiceNo"].nunique()
    assert (inv_per_pair >= 2).mean() > 0.05  # users re-buy items
    start = small_lines["InvoiceDate"].min()
    first_user = small_lines.groupby("CustomerID")["InvoiceDate"].min()
    first_item = small_lines.groupby(small_lines["StockCode"].astype(str))["InvoiceDate"].min()
    late = start + pd.Timedelta(days=180)
    assert (first_user > late).mean() > 0.1  # new users keep arriving
    assert (first_item > late).mean() > 0.02  # and new items are launched


def test_users_stick_to_their_categories(small_lines: pd.DataFrame) -> None:
    # A category is the description's last word; a user's top category should hold far more of
    # their lines than the top category holds overall.
    noun = small_lines["Description"].astype(str).str.split().str[-1]
    overall = noun.value_counts(normalize=True).iloc[0]
    per_user = (
        pd.DataFrame({"u": small_lines["CustomerID"], "c": noun})
        .groupby("u")["c"]
        .agg(lambda s: s.value_counts(normalize=True).iloc[0])
    )
    assert per_user.median() > overall + 0.1


def test_invalid_config_is_refused() -> None:
    with pytest.raises(RecsysError, match="repeat_probability"):
        generate_transactions(SyntheticConfig(repeat_probability=1.5))
    with pytest.raises(RecsysError, match="n_users"):
        generate_transactions(SyntheticConfig(n_users=0))


def test_large_catalogue_is_vectorised() -> None:
    cfg = SyntheticConfig(n_users=50_000, n_items=100_000, invoices_per_user=2, basket_size=4)
    frame = generate_transactions(cfg)
    assert frame["StockCode"].nunique() > 20_000
    assert np.isfinite(frame["UnitPrice"]).all() and (frame["UnitPrice"] > 0).all()


def test_cover_catalogue_sells_every_item_after_its_launch() -> None:
    cfg = SyntheticConfig(n_users=300, n_items=5_000, n_categories=8, seed=11)
    plain = clean_transactions(generate_transactions(cfg))
    assert plain["StockCode"].nunique() < 0.8 * cfg.n_items  # the power law leaves items unsold
    full = clean_transactions(
        generate_transactions(SyntheticConfig(**{**cfg.__dict__, "cover_catalogue": True}))
    )
    first_sale = full.groupby(full["StockCode"].astype(str))["InvoiceDate"].min()
    # every item launched before the last invoice sells (items launched later cannot)
    assert len(first_sale) > 0.97 * cfg.n_items
    assert full["InvoiceDate"].is_monotonic_increasing
    again = generate_transactions(SyntheticConfig(**{**cfg.__dict__, "cover_catalogue": True}))
    pd.testing.assert_frame_equal(clean_transactions(again), full)
