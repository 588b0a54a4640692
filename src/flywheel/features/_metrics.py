"""Prometheus metrics of the feature store (registered once, when first used)."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def metrics() -> dict[str, Any]:
    from prometheus_client import Counter, Gauge, Histogram

    return {
        "online_latency": Histogram(
            "flywheel_features_online_seconds",
            "Latency of online feature reads (store round trip and decoding).",
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        ),
        "rows_served": Counter(
            "flywheel_features_rows_served_total", "Entity rows served by online reads."
        ),
        "events": Counter(
            "flywheel_features_stream_events_total",
            "Stream events handled by processors, by outcome.",
            ["stream", "outcome"],
        ),
        "lag": Gauge(
            "flywheel_features_stream_lag_events",
            "Events appended to a stream and not yet acknowledged by the processors.",
            ["stream"],
        ),
        "freshness": Gauge(
            "flywheel_features_freshness_seconds",
            "Age of the newest event applied to a stream view by this process.",
            ["view"],
        ),
        "pushed": Counter(
            "flywheel_features_pushed_events_total", "Events accepted by push.", ["stream"]
        ),
    }
