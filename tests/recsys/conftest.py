"""Fixtures of the recommender tests: the real Online Retail data (skipped when absent) and
small synthetic shops."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.project import Project
from flywheel.recsys import (
    Split,
    SyntheticConfig,
    build_split,
    clean_transactions,
    default_data_dir,
    find_data_file,
    generate_transactions,
    read_online_retail,
)
from tests.conftest import services_required


@pytest.fixture(scope="session")
def real_data_file() -> Path:
    """The shared Online Retail file (``../shared/datasets/uci-online-retail/``)."""
    return require_real_data(default_data_dir())


def require_real_data(folder: Path) -> Path:
    """The data file in ``folder``; when the folder is missing, skip, or fail under
    ``FLYWHEEL_REQUIRE_SERVICES=1`` (CI must not pass by skipping the real-data tests)."""
    if not folder.is_dir():
        message = f"the real Online Retail data is not at {folder} (see its SOURCE.md)"
        if services_required():
            pytest.fail(f"{message}; FLYWHEEL_REQUIRE_SERVICES=1 makes this a failure")
        pytest.skip(message)
    return find_data_file(folder)


@pytest.fixture(scope="session")
def real_raw(real_data_file: Path) -> pd.DataFrame:
    return read_online_retail(real_data_file)


@pytest.fixture(scope="session")
def real_lines(real_raw: pd.DataFrame) -> pd.DataFrame:
    return clean_transactions(real_raw)


@pytest.fixture(scope="session")
def real_split(real_lines: pd.DataFrame) -> Split:
    """Protocol OR-T1 on the real data."""
    return build_split(real_lines)


SMALL_SHOP = SyntheticConfig(n_users=1_500, n_items=400, n_categories=12, seed=7)
TINY_SHOP = SyntheticConfig(n_users=400, n_items=120, n_categories=6, seed=3)


@pytest.fixture(scope="session")
def small_raw() -> pd.DataFrame:
    return generate_transactions(SMALL_SHOP)


@pytest.fixture(scope="session")
def tiny_raw() -> pd.DataFrame:
    return generate_transactions(TINY_SHOP)


@pytest.fixture(scope="session")
def tiny_lines(tiny_raw: pd.DataFrame) -> pd.DataFrame:
    return clean_transactions(tiny_raw)


@pytest.fixture(scope="session")
def small_lines(small_raw: pd.DataFrame) -> pd.DataFrame:
    return clean_transactions(small_raw)


@pytest.fixture(scope="session")
def small_split(small_lines: pd.DataFrame) -> Split:
    return build_split(small_lines, "2011-11-09")


def make_lines(
    rows: list[tuple[int, str, str, str]], text: dict[str, str] | None = None
) -> pd.DataFrame:
    """Cleaned lines from (customer, stock code, invoice, date) tuples."""
    text = text or {}
    return pd.DataFrame(
        {
            "InvoiceNo": [r[2] for r in rows],
            "StockCode": [r[1] for r in rows],
            "Description": [text.get(r[1], f"ITEM {r[1]}") for r in rows],
            "Quantity": [1] * len(rows),
            "InvoiceDate": pd.to_datetime([r[3] for r in rows]),
            "UnitPrice": [1.0] * len(rows),
            "CustomerID": [r[0] for r in rows],
            "Country": ["United Kingdom"] * len(rows),
        }
    )


@pytest.fixture
def http(shop: Project) -> Iterator[tuple[TestClient, dict[str, str], dict[str, str]]]:
    """The recsys app over the module's ``shop`` fixture: (client, writer headers, reader
    headers)."""
    _, writer = TokenStore(shop.db).create("writer", "w")
    _, reader = TokenStore(shop.db).create("reader", "r")
    with TestClient(create_app(shop, systems=["recsys"])) as client:
        yield client, {"Authorization": f"Bearer {writer}"}, {"Authorization": f"Bearer {reader}"}


def fallback_count(reason: str) -> float:
    """The ``flywheel_recsys_fallbacks_total`` counter of ``reason`` (0 before the first)."""
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("flywheel_recsys_fallbacks_total", {"reason": reason}) or 0.0
