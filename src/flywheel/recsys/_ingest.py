"""The recommender's data in the feature store: definitions and ``ingest``.

``feature_definitions()`` is the feature repo of the recommender (applied by ``ingest``):

* entities ``user`` (``user_id``, int64), ``item`` (``item_id``, string: the StockCode) and
  ``category`` (string);
* batch views ``recs_item_metadata`` (description, price, category derived from the text),
  ``recs_user_rfm`` (recency in days, frequency = invoices, monetary = spend) and
  ``recs_item_popularity`` (distinct buyers over 7 / 30 days and all time), one snapshot at the
  end of the data;
* the event stream ``recs_events`` (view, click, add_to_cart, purchase) and its stream views
  ``recs_user_recent`` (last 20 items and categories, events in 1h / 1d), ``recs_user_category``
  (per user and category, events in 1h / 1d) and ``recs_item_trending`` (per item, events and
  purchases in 1h / 1d).

``ingest(project, lines)`` writes the Parquet sources under ``.flywheel/recsys/`` (plus the
cleaned purchase lines the in-memory generators are fitted on), applies the definitions and
materializes the batch views to the online store.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from flywheel.recsys._errors import DataUnavailableError, RecsysError

if TYPE_CHECKING:
    from flywheel.features import FeatureStore
    from flywheel.project import Project

EVENT_STREAM = "recs_events"
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase")
ITEM_VIEW = "recs_item_metadata"
USER_VIEW = "recs_user_rfm"
POPULARITY_VIEW = "recs_item_popularity"
RECENT_VIEW = "recs_user_recent"
USER_CATEGORY_VIEW = "recs_user_category"
TRENDING_VIEW = "recs_item_trending"
RECENT_N = 20
OTHER_CATEGORY = "OTHER"
DATA_FOLDER = ".flywheel/recsys"
PURCHASES_FILE = "purchases.parquet"

Step = Callable[[str, int, int], None]  # (description, done, total)


def data_dir(project: Project) -> Path:
    """Where ``ingest`` writes the recommender's Parquet files (``.flywheel/recsys/``)."""
    return project.config.resolve_path(DATA_FOLDER)


# Words that qualify a product rather than name it (colours, sizes, patterns, packaging).
_MODIFIERS = frozenset(
    " ".join(
        (
            "RED PINK BLUE GREEN WHITE BLACK IVORY CREAM GOLD SILVER PURPLE ORANGE YELLOW BROWN",
            "GREY GRAY TURQUOISE LILAC CHOCOLATE NATURAL CLEAR PASTEL MULTI COLOUR COLOURS",
            "COLOUR/S LARGE SMALL MEDIUM MINI JUMBO BIG GIANT TINY SET SETS OF ASSORTED DESIGN",
            "DESIGNS RETROSPOT POLKADOT SPOT SPOTS STRIPE STRIPES VINTAGE WITH AND IN THE A TO",
            "FOR S/2 S/3 S/4 S/6 OUTDOOR DOILY DOILEY",
        )
    ).split(" ")
)


def _head_noun(text: str) -> str:
    words = [w for w in text.split() if not any(ch.isdigit() for ch in w)]
    for w in reversed(words):
        if w not in _MODIFIERS and len(w) > 2:
            return w
    return OTHER_CATEGORY


def derive_categories(
    descriptions: pd.Series, *, min_items: int = 5, max_categories: int = 100
) -> pd.Series:
    """A category per product from its text: its head noun, the last word that is not a
    colour, size, pattern or number, with a plural folded into its singular.

    ``"WHITE HANGING HEART T-LIGHT HOLDER"`` -> ``"HOLDER"``, ``"SET/4 BUTTERFLY MIRROR
    MAGNETS"`` -> ``"MAGNET"``. Nouns held by fewer than ``min_items`` products, and beyond
    the ``max_categories`` most common, become ``"OTHER"`` (on Online Retail: 100 categories
    cover 60% of the products).
    """
    text = (
        descriptions.fillna("")
        .astype(str)
        .str.upper()
        .str.replace(r"[^A-Z0-9/\- ]", " ", regex=True)
    )
    words = text.map(_head_noun)
    vocab = set(words)
    words = words.map(lambda w: w[:-1] if w.endswith("S") and w[:-1] in vocab else w)
    counts = words[words != OTHER_CATEGORY].value_counts()
    keep = set(counts[counts >= min_items].index[:max_categories])
    return words.where(words.isin(keep), OTHER_CATEGORY)


def feature_definitions() -> list[Any]:
    """The entities, views and stream the recommender reads (see the module docstring)."""
    from flywheel.features import (
        Aggregation,
        Entity,
        EventStream,
        FeatureView,
        Field,
        ParquetSource,
        StreamFeatureView,
    )

    user = Entity("user", "user_id", "int64", description="A customer (CustomerID).")
    item = Entity("item", "item_id", "string", description="A product (StockCode).")
    category = Entity("category", "category", "string", description="Product category.")
    items = FeatureView(
        ITEM_VIEW,
        [item],
        ParquetSource(f"{DATA_FOLDER}/items.parquet"),
        [
            Field("description", "string"),
            Field("price", "float64"),
            Field("category", "string"),
        ],
        description="Product metadata; the category is the description's head noun.",
    )
    users = FeatureView(
        USER_VIEW,
        [user],
        ParquetSource(f"{DATA_FOLDER}/users.parquet"),
        [
            Field("recency_days", "float64"),
            Field("frequency", "int64"),
            Field("monetary", "float64"),
        ],
        description="RFM: days since the last purchase, invoices, spend.",
    )
    popularity = FeatureView(
        POPULARITY_VIEW,
        [item],
        ParquetSource(f"{DATA_FOLDER}/popularity.parquet"),
        [
            Field("buyers_7d", "int64"),
            Field("buyers_30d", "int64"),
            Field("buyers_all", "int64"),
        ],
        description="Distinct buyers of the item over 7 / 30 days and all time.",
    )
    stream = EventStream(
        EVENT_STREAM,
        [
            Field("user_id", "int64"),
            Field("item_id", "string"),
            Field("category", "string"),
            Field("event_type", "string"),
            Field("is_purchase", "int64"),
        ],
        event_id_field="event_id",
        description="Shop interactions: view, click, add_to_cart, purchase.",
    )
    recent = StreamFeatureView(
        RECENT_VIEW,
        [user],
        stream,
        [
            Aggregation("item_id", "last_n", "1d", name="last_items", n=RECENT_N),
            Aggregation("category", "last_n", "1d", name="last_categories", n=RECENT_N),
            Aggregation("item_id", "count", "1h", name="events_1h"),
            Aggregation("item_id", "count", "1d", name="events_1d"),
        ],
        allowed_lateness="1h",
    )
    user_category = StreamFeatureView(
        USER_CATEGORY_VIEW,
        [user, category],
        stream,
        [
            Aggregation("item_id", "count", "1h", name="events_1h"),
            Aggregation("item_id", "count", "1d", name="events_1d"),
        ],
        allowed_lateness="1h",
    )
    trending = StreamFeatureView(
        TRENDING_VIEW,
        [item],
        stream,
        [
            Aggregation("user_id", "count", "1h", name="events_1h"),
            Aggregation("user_id", "count", "1d", name="events_1d"),
            Aggregation("is_purchase", "sum", "1h", name="purchases_1h"),
            Aggregation("is_purchase", "sum", "1d", name="purchases_1d"),
        ],
        allowed_lateness="1h",
    )
    return [user, item, category, items, users, popularity, stream, recent, user_category, trending]


@dataclass
class IngestReport:
    """What ``ingest`` wrote: row counts per file and the materialized rows per view."""

    lines: int
    users: int
    items: int
    categories: int
    start: datetime
    end: datetime
    materialized: dict[str, int] = field(default_factory=dict)
    folder: Path | None = None


def _write_parquet(frame: pd.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def build_tables(lines: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The batch sources from cleaned purchase lines (one snapshot at the end of the data)."""
    if lines.empty:
        raise RecsysError("ingest: no purchase lines left after cleaning")
    lines = lines.assign(StockCode=lines["StockCode"].astype(str))
    end = pd.Timestamp(lines["InvoiceDate"].max()) + pd.Timedelta(seconds=1)
    snap = end.tz_localize(UTC) if end.tzinfo is None else end.tz_convert(UTC)
    by_item = lines.groupby("StockCode", sort=True)
    desc = by_item["Description"].agg(
        lambda s: s.astype(str).mode().iloc[0] if s.notna().any() else ""
    )
    items = pd.DataFrame(
        {
            "item_id": desc.index.astype(str),
            "event_timestamp": snap,
            "description": desc.to_numpy().astype(str),
            "price": by_item["UnitPrice"].median().to_numpy().astype(np.float64),
        }
    )
    items["category"] = derive_categories(items["description"]).to_numpy()
    spend = lines["Quantity"] * lines["UnitPrice"]
    by_user = lines.assign(spend=spend).groupby("CustomerID", sort=True)
    users = pd.DataFrame(
        {
            "user_id": by_user.size().index.astype(np.int64),
            "event_timestamp": snap,
            "recency_days": ((end - by_user["InvoiceDate"].max()) / pd.Timedelta(days=1))
            .to_numpy()
            .astype(np.float64),
            "frequency": by_user["InvoiceNo"].nunique().to_numpy().astype(np.int64),
            "monetary": by_user["spend"].sum().to_numpy().astype(np.float64),
        }
    )

    def buyers(since: pd.Timestamp | None) -> pd.Series:
        part = lines if since is None else lines.loc[lines["InvoiceDate"] >= since]
        return part.groupby("StockCode")["CustomerID"].nunique()

    popularity = pd.DataFrame({"item_id": items["item_id"], "event_timestamp": snap})
    for name, since in (
        ("buyers_7d", end - pd.Timedelta(days=7)),
        ("buyers_30d", end - pd.Timedelta(days=30)),
        ("buyers_all", None),
    ):
        popularity[name] = (
            buyers(since).reindex(items["item_id"]).fillna(0).to_numpy().astype(np.int64)
        )
    purchases = lines[
        ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice"]
    ].assign(
        CustomerID=lines["CustomerID"].astype(np.int64),
        InvoiceNo=lines["InvoiceNo"].astype(str),
        Description=lines["Description"].astype(str),
    )
    return {
        "items": items,
        "users": users,
        "popularity": popularity,
        "purchases": purchases.reset_index(drop=True),
    }


def ingest(
    project: Project,
    lines: pd.DataFrame,
    *,
    store: FeatureStore | None = None,
    step: Step | None = None,
) -> IngestReport:
    """Write the sources, apply the recommender's definitions and materialize the batch views.

    ``lines`` are cleaned purchase lines (``clean_transactions``). Idempotent: a rerun rewrites
    the files atomically and re-materializes. ``step(description, done, total)`` reports progress.
    """
    from flywheel.features import FeatureStore

    report_step: Step = step or (lambda _d, _n, _t: None)
    total = 4
    report_step("building tables", 0, total)
    tables = build_tables(lines)
    folder = data_dir(project)
    report_step("writing Parquet sources", 1, total)
    for name, frame in tables.items():
        _write_parquet(frame, folder / f"{name}.parquet")
    own = store is None
    fs = store if store is not None else FeatureStore(project)
    try:
        report_step("applying definitions", 2, total)
        fs.apply(feature_definitions())
        report_step("materializing", 3, total)
        start = tables["purchases"]["InvoiceDate"].min()
        snap = tables["items"]["event_timestamp"].iloc[0].to_pydatetime()
        materialized: dict[str, int] = {}

        def progress(view: str, done: int, rows: int) -> None:
            materialized[view] = done
            report_step(f"materializing {view}", 3, total)

        fs.materialize(
            datetime(1970, 1, 1, tzinfo=UTC),
            snap + timedelta(seconds=1),
            [ITEM_VIEW, USER_VIEW, POPULARITY_VIEW],
            progress=progress,
        )
        report_step("done", total, total)
    finally:
        if own:
            fs.close()
    return IngestReport(
        lines=len(tables["purchases"]),
        users=len(tables["users"]),
        items=len(tables["items"]),
        categories=int(tables["items"]["category"].nunique()),
        start=pd.Timestamp(start).to_pydatetime(),
        end=snap,
        materialized=materialized,
        folder=folder,
    )


def load_purchases(project: Project) -> pd.DataFrame:
    """The cleaned purchase lines written by the last ``ingest`` (``RecsysError`` if none)."""
    path = data_dir(project) / f"{PURCHASES_FILE}"
    if not path.is_file():
        raise DataUnavailableError(
            f"recsys: nothing ingested yet ({path} is missing); run `flywheel recs ingest`"
        )
    return pd.read_parquet(path)


def load_items(project: Project) -> pd.DataFrame:
    """The item table written by the last ``ingest`` (``item_id``, description, price, category)."""
    path = data_dir(project) / "items.parquet"
    if not path.is_file():
        raise DataUnavailableError(
            f"recsys: nothing ingested yet ({path} is missing); run `flywheel recs ingest`"
        )
    return pd.read_parquet(path)
