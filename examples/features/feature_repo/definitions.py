"""A small feature repo: users, their daily stats, a click stream and a model's feature list."""

from datetime import timedelta

from flywheel.features import (
    Aggregation,
    Entity,
    EventStream,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeatureView,
    ParquetSource,
    StreamFeatureView,
    vector,
)

user = Entity("user", join_key="user_id", dtype="int64", description="A shopper.", owner="growth")

user_stats = FeatureView(
    "user_stats",
    entities=[user],
    source=ParquetSource("data/user_stats.parquet", timestamp_field="event_timestamp"),
    schema=[
        Field("orders_7d", "int64"),
        Field("spend_7d", "float64"),
        Field("country", "string"),
        Field("taste", vector(4), description="A 4-d taste embedding."),
    ],
    ttl=timedelta(days=30),
    owner="growth",
    description="Daily order statistics per user.",
)

clicks = EventStream(
    "clicks",
    schema=[
        Field("user_id", "int64"),
        Field("item_id", "int64"),
        Field("price", "float64"),
    ],
    timestamp_field="ts",
    event_id_field="click_id",
    description="Product clicks from the web shop.",
)

click_stats = StreamFeatureView(
    "click_stats",
    entities=[user],
    source=clicks,
    aggregations=[
        Aggregation("item_id", "count", "1h"),
        Aggregation("price", "mean", "1d"),
        Aggregation("item_id", "count_distinct", "7d", tile="1d"),
        Aggregation("item_id", "last_n", "1d", n=5, name="recent_items"),
    ],
    allowed_lateness="10m",
    owner="growth",
)


def spend_per_order(df):  # type: ignore[no-untyped-def]
    """Request-time feature: average spend per order (imports nothing: it runs in the server)."""
    out = df[[]].copy()
    out["spend_per_order"] = df["spend_7d"] / df["orders_7d"].clip(lower=1)
    return out


user_ratios = OnDemandFeatureView(
    "user_ratios",
    sources=["user_stats:spend_7d", "user_stats:orders_7d"],
    schema=[Field("spend_per_order", "float64")],
    udf=spend_per_order,
)

ranker_features = FeatureService(
    "ranker_features",
    [user_stats, click_stats, "user_ratios:spend_per_order"],
    description="What the ranking model reads.",
    owner="ranking",
)
