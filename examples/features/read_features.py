"""Read features online and build a point-in-time correct training set."""

from datetime import UTC, datetime

import pandas as pd

from flywheel.features import FeatureStore

store = FeatureStore(".")

online = store.get_online_features(
    ["user_stats:orders_7d", "user_stats:country", "user_ratios:spend_per_order"],
    entity_rows=[{"user_id": 7}, {"user_id": 8}, {"user_id": 123456}],
)
print(online.to_df())
print(online.statuses["orders_7d"])

labels = pd.DataFrame(
    {
        "user_id": [7, 8, 9],
        "event_timestamp": [datetime(2026, 11, 20, 12, tzinfo=UTC)] * 3,
        "clicked": [1, 0, 1],
    }
)
service = store.get_feature_service("ranker_features")
dataset = store.create_training_dataset("ranker_2026_11_20", labels, service)
print(dataset.row_count, "rows in", dataset.files[0].name)
print(dataset.to_df()[["user_id", "orders_7d", "spend_per_order", "item_id_count_1h"]])
