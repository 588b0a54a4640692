"""Prometheus metrics of the inference server, labelled by endpoint, model and version.

Exposed on the app's ``/metrics`` with everything else. Label children are looked up once per
served version (``VersionMetrics``), not per request, to keep the hot path cheap.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

REQUESTS = Counter(
    "flywheel_serving_requests_total",
    "Inference requests by endpoint, model, version and HTTP status code.",
    ["endpoint", "model", "version", "code"],
)
LATENCY = Histogram(
    "flywheel_serving_request_duration_seconds",
    "Inference request latency (queueing + batching + runtime), by endpoint/model/version.",
    ["endpoint", "model", "version"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "flywheel_serving_batch_size",
    "Rows per runtime call after dynamic batching.",
    ["model", "version"],
    buckets=BATCH_BUCKETS,
)
QUEUE_DEPTH = Gauge(
    "flywheel_serving_queue_depth",
    "Requests waiting in a model version's batching queue.",
    ["model", "version"],
    multiprocess_mode="livesum",
)
REJECTED = Counter(
    "flywheel_serving_rejected_total",
    "Requests refused: queue_full or expected_wait (429), deadline (504).",
    ["endpoint", "model", "version", "reason"],
)
SHADOW_REQUESTS = Counter(
    "flywheel_serving_shadow_requests_total",
    "Requests mirrored to a shadow version, by outcome (ok, error).",
    ["endpoint", "model", "version", "outcome"],
)
SHADOW_DISAGREEMENT = Histogram(
    "flywheel_serving_shadow_disagreement",
    "Disagreement between primary and shadow outputs (share of differing labels, or mean "
    "relative difference for scores).",
    ["endpoint", "model", "version"],
    buckets=(0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0),
)
PREDICTION_LOG_DROPPED = Counter(
    "flywheel_serving_prediction_log_dropped_total",
    "Sampled prediction records dropped because the log buffer was full.",
)
CANARY_STEP = Gauge(
    "flywheel_serving_canary_weight_percent",
    "Traffic share of a running canary's candidate version.",
    ["endpoint", "model", "version"],
    multiprocess_mode="livemax",
)

__all__ = [
    "BATCH_SIZE",
    "CANARY_STEP",
    "LATENCY",
    "PREDICTION_LOG_DROPPED",
    "QUEUE_DEPTH",
    "REJECTED",
    "REQUESTS",
    "SHADOW_DISAGREEMENT",
    "SHADOW_REQUESTS",
]
