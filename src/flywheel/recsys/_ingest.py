"""The recommender's data in the feature store: definitions and ``ingest``.

``feature_definitions()`` is the feature repo of the recommender (applied by ``ingest``):

* entities ``user`` (``user_id``, int64), ``item`` (``item_id``, string: the StockCode) and
  ``category`` (string);
* batch views ``recs_item_metadata`` (description, price, category derived from the text),
  ``recs_user_rfm`` (recency in days, frequency = invoices, monetary = spend) and
  ``recs_item_popularity`` (distinct buyers over 7 / 30 days and all time). Users and
  popularity keep point-in-time history: one snapshot per week (Mondays 00:00) plus one at the
  end of the data, each stamped with its time, so ``get_historical_features`` at ``t`` returns
  what was known at ``t``; items have one row each, stamped with the first snapshot after their
  first sale;
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
    # The head noun once per distinct description, not per item (a catalogue repeats texts).
    codes, distinct = pd.factorize(text)
    heads = [_head_noun(str(t)) for t in distinct]
    vocab = set(heads)
    folded = np.array([w[:-1] if w.endswith("S") and w[:-1] in vocab else w for w in heads])
    words = pd.Series(folded[codes] if len(codes) else [], index=text.index, dtype=object)
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


def snapshot_times(
    first: pd.Timestamp, end: pd.Timestamp, *, history_weeks: int | None = None
) -> pd.DatetimeIndex:
    """When the batch views are snapshotted: every Monday 00:00 after ``first`` and before
    ``end``, then ``end`` itself (the last ``history_weeks`` Mondays only, when given).

    A snapshot at ``T`` summarises the lines with ``InvoiceDate < T``; its ``event_timestamp``
    is ``T``, so a point-in-time read at ``t`` sees the newest snapshot with ``T <= t``.
    """
    first, end = pd.Timestamp(first), pd.Timestamp(end)
    weekly = pd.date_range(first.normalize() + pd.Timedelta(days=1), end, freq="W-MON")
    weekly = weekly[weekly < end]
    if history_weeks is not None:
        if history_weeks < 0:
            raise RecsysError(f"history_weeks: must be >= 0 (got {history_weeks})")
        weekly = weekly[len(weekly) - history_weeks :] if history_weeks else weekly[:0]
    return weekly.append(pd.DatetimeIndex([end]))


def _utc_times(times: pd.DatetimeIndex) -> pd.DatetimeIndex:
    return times.tz_localize(UTC) if times.tz is None else times.tz_convert(UTC)


def _bins(times: pd.DatetimeIndex, at: pd.Series | np.ndarray) -> np.ndarray:
    """For each time, the first snapshot that includes it (``T > t``); ``len(times)``: none."""
    return np.searchsorted(times.to_numpy(), np.asarray(at, dtype="datetime64[ns]"), side="right")


def user_snapshots(lines: pd.DataFrame, times: pd.DatetimeIndex) -> pd.DataFrame:
    """RFM of every user who had bought anything, as of each snapshot time.

    At ``T``: ``recency_days`` = days from the last line before ``T`` to ``T``, ``frequency`` =
    distinct invoices with a line before ``T``, ``monetary`` = spend of the lines before ``T``.
    Newest snapshot first, then by ``user_id``.
    """
    codes, users = pd.factorize(lines["CustomerID"].to_numpy(), sort=True)
    ts = lines["InvoiceDate"].to_numpy(dtype="datetime64[ns]")
    spend = (lines["Quantity"] * lines["UnitPrice"]).to_numpy(dtype=np.float64)
    line_bin = _bins(times, ts)
    per_bin = (
        pd.DataFrame({"u": codes, "b": line_bin, "spend": spend, "t": ts})
        .groupby(["b", "u"], sort=True)
        .agg(spend=("spend", "sum"), t=("t", "max"))
        .reset_index()
    )
    invoices = pd.DataFrame(
        {"u": codes, "inv": lines["InvoiceNo"].astype(str).to_numpy(), "b": line_bin}
    )
    inv_bin = invoices.groupby(["u", "inv"], sort=False)["b"].min()  # bin of its first line
    inv_counts = (
        inv_bin.reset_index().groupby(["b", "u"], sort=True).size().rename("n").reset_index()
    )
    n = len(users)
    freq = np.zeros(n, dtype=np.int64)
    money = np.zeros(n, dtype=np.float64)
    last = np.full(n, np.datetime64("NaT"), dtype="datetime64[ns]")
    pb, ib = per_bin["b"].to_numpy(), inv_counts["b"].to_numpy()
    utc = _utc_times(times)
    frames = []
    for k, at in enumerate(times.to_numpy()):
        lo, hi = np.searchsorted(pb, k, "left"), np.searchsorted(pb, k, "right")
        u = per_bin["u"].to_numpy()[lo:hi]
        money[u] += per_bin["spend"].to_numpy()[lo:hi]
        last[u] = per_bin["t"].to_numpy()[lo:hi]  # later bins only ever move it forward
        lo, hi = np.searchsorted(ib, k, "left"), np.searchsorted(ib, k, "right")
        freq[inv_counts["u"].to_numpy()[lo:hi]] += inv_counts["n"].to_numpy()[lo:hi]
        active = np.flatnonzero(freq > 0)
        frames.append(
            pd.DataFrame(
                {
                    "user_id": users[active].astype(np.int64),
                    "event_timestamp": utc[k],
                    "recency_days": ((at - last[active]) / np.timedelta64(1, "D")).astype(
                        np.float64
                    ),
                    "frequency": freq[active],
                    "monetary": money[active],
                }
            )
        )
    return pd.concat(frames[::-1], ignore_index=True)


def popularity_snapshots(
    lines: pd.DataFrame, times: pd.DatetimeIndex, item_ids: pd.Index | None = None
) -> pd.DataFrame:
    """Distinct buyers of each item over the 7 and 30 days before, and all time before, each
    snapshot time. An item gets a row from its first sale on, and then only when a value
    changes (the previous row still holds otherwise). Newest snapshot first."""
    item_codes, items = pd.factorize(lines["StockCode"].astype(str).to_numpy(), sort=True)
    if item_ids is not None:
        items = pd.Index(item_ids)
        item_codes = items.get_indexer(lines["StockCode"].astype(str).to_numpy())
    user_codes, users = pd.factorize(lines["CustomerID"].to_numpy())
    n_items, n_users = len(items), max(len(users), 1)
    key = item_codes.astype(np.int64) * n_users + user_codes
    ts = lines["InvoiceDate"].to_numpy(dtype="datetime64[ns]")
    order = np.argsort(ts, kind="stable")
    ts, key = ts[order], key[order]
    first_key, first_at = np.unique(key, return_index=True)
    first_ts = np.sort(ts[first_at])
    first_items = (first_key[np.argsort(ts[first_at], kind="stable")] // n_users).astype(np.int64)

    def buyers(lo: np.datetime64 | None, hi: np.datetime64) -> np.ndarray:
        a = 0 if lo is None else np.searchsorted(ts, lo, "left")
        b = np.searchsorted(ts, hi, "left")
        distinct = np.unique(key[a:b]) // n_users
        return np.bincount(distinct.astype(np.int64), minlength=n_items)

    utc = _utc_times(times)
    previous = np.full((n_items, 3), -1, dtype=np.int64)
    frames = []
    for k, at in enumerate(times.to_numpy()):
        total = np.bincount(first_items[: np.searchsorted(first_ts, at, "left")], minlength=n_items)
        values = np.stack(
            [
                buyers(at - np.timedelta64(7, "D"), at),
                buyers(at - np.timedelta64(30, "D"), at),
                total,
            ],
            axis=1,
        )
        changed = np.flatnonzero((total > 0) & (values != previous).any(axis=1))
        previous[changed] = values[changed]
        frames.append(
            pd.DataFrame(
                {
                    "item_id": np.asarray(items)[changed].astype(str),
                    "event_timestamp": utc[k],
                    "buyers_7d": values[changed, 0],
                    "buyers_30d": values[changed, 1],
                    "buyers_all": values[changed, 2],
                }
            )
        )
    return pd.concat(frames[::-1], ignore_index=True)


def item_table(lines: pd.DataFrame, times: pd.DatetimeIndex) -> pd.DataFrame:
    """One row per item: its catalogue text and category, and its price when it entered the
    catalogue, as of the first snapshot that includes its first sale (``event_timestamp``).

    ``price`` is the median unit price of the item's lines before that snapshot (so a
    point-in-time read never sees a later price); ``description`` (the most frequent text) and
    the ``category`` derived from it are catalogue attributes.
    """
    codes, ids = pd.factorize(lines["StockCode"].astype(str).to_numpy(), sort=True)
    ts = lines["InvoiceDate"].to_numpy(dtype="datetime64[ns]")
    # The most frequent description (ties: the smallest text), "" when an item has none.
    text = pd.DataFrame({"i": codes, "d": lines["Description"].to_numpy()}).dropna()
    text["d"] = text["d"].astype(str)
    counts = text.groupby(["i", "d"], sort=False).size().rename("n").reset_index()
    counts = counts.sort_values(["i", "n", "d"], ascending=[True, False, True])
    desc = counts.drop_duplicates("i").set_index("i")["d"].reindex(range(len(ids))).fillna("")
    first = pd.Series(ts).groupby(codes).min().to_numpy()
    first_at = times.to_numpy()[np.minimum(_bins(times, first), len(times) - 1)]
    launch = ts < first_at[codes]
    price = (
        pd.Series(lines["UnitPrice"].to_numpy(dtype=np.float64)[launch])
        .groupby(codes[launch])
        .median()
        .reindex(range(len(ids)))
    )
    items = pd.DataFrame(
        {
            "item_id": np.asarray(ids).astype(str),
            "event_timestamp": _utc_times(pd.DatetimeIndex(first_at)),
            "description": desc.to_numpy().astype(str),
            "price": price.to_numpy().astype(np.float64),
        }
    )
    items["category"] = derive_categories(items["description"]).to_numpy()
    return items


def build_tables(
    lines: pd.DataFrame, *, history_weeks: int | None = None
) -> dict[str, pd.DataFrame]:
    """The batch sources from cleaned purchase lines, with point-in-time history.

    ``users`` (RFM) and ``popularity`` hold one snapshot per week (``snapshot_times``: Mondays
    00:00, the last ``history_weeks`` of them when given) plus one at the end of the data, so a
    point-in-time join at ``t`` returns what was known at ``t`` and materializing puts the end
    snapshot online. ``items`` holds one row per item (``item_table``).
    """
    if lines.empty:
        raise RecsysError("ingest: no purchase lines left after cleaning")
    lines = lines.assign(StockCode=lines["StockCode"].astype(str))
    end = pd.Timestamp(lines["InvoiceDate"].max()) + pd.Timedelta(seconds=1)
    if end.tzinfo is not None:
        end = end.tz_convert(UTC).tz_localize(None)
        lines = lines.assign(
            InvoiceDate=lines["InvoiceDate"].dt.tz_convert(UTC).dt.tz_localize(None)
        )
    times = snapshot_times(lines["InvoiceDate"].min(), end, history_weeks=history_weeks)
    items = item_table(lines, times)
    purchases = lines[
        ["InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice"]
    ].assign(
        CustomerID=lines["CustomerID"].astype(np.int64),
        InvoiceNo=lines["InvoiceNo"].astype(str),
        Description=lines["Description"].astype(str),
    )
    return {
        "items": items,
        "users": user_snapshots(lines, times),
        "popularity": popularity_snapshots(lines, times, pd.Index(items["item_id"])),
        "purchases": purchases.reset_index(drop=True),
    }


def ingest(
    project: Project,
    lines: pd.DataFrame,
    *,
    store: FeatureStore | None = None,
    step: Step | None = None,
    history_weeks: int | None = None,
) -> IngestReport:
    """Write the sources, apply the recommender's definitions and materialize the batch views.

    ``lines`` are cleaned purchase lines (``clean_transactions``). The user and popularity
    sources keep weekly point-in-time history (``build_tables``; ``history_weeks`` limits it,
    ``0`` keeps only the end-of-data snapshot) and the online store gets the newest snapshot.
    Idempotent: a rerun rewrites the files atomically and re-materializes.
    ``step(description, done, total)`` reports progress.
    """
    from flywheel.features import FeatureStore

    report_step: Step = step or (lambda _d, _n, _t: None)
    total = 4
    report_step("building tables", 0, total)
    tables = build_tables(lines, history_weeks=history_weeks)
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
        snap = tables["users"]["event_timestamp"].max().to_pydatetime()
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
        users=int(tables["users"]["user_id"].nunique()),
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
    """The item table written by the last ``ingest``: one row per item (``item_id``,
    ``event_timestamp``, description, price, category)."""
    path = data_dir(project) / "items.parquet"
    if not path.is_file():
        raise DataUnavailableError(
            f"recsys: nothing ingested yet ({path} is missing); run `flywheel recs ingest`"
        )
    return pd.read_parquet(path)
