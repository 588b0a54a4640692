"""An endpoint's traffic over time from what the server keeps: the prediction log.

``traffic_history`` reads the logged primary requests of one endpoint (``_prediction_log``; one
Parquet row per batch row, so requests are counted by ``request_id``) in ``[since, until]`` and
cuts that span into ``buckets`` equal intervals. Per version and interval it gives the logged
requests and their p50 / p99 latency. The log is sampled (``serving.prediction_log_sample_rate``)
and holds answered requests only, so counts are of logged requests, not of all traffic, and
errors are not in it (the live ``/metrics`` counters have those since the server started).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from flywheel.serving._errors import ServingError

MAX_BUCKETS = 500


def _check(since: float | None, until: float | None, buckets: int) -> None:
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ServingError(f"buckets: must be in 1..{MAX_BUCKETS}, got {buckets}")
    if since is not None and until is not None and until < since:
        raise ServingError(f"until: {until} is before since ({since})")


def traffic_history(
    project: Any,
    endpoint: str,
    *,
    since: float | None = None,
    until: float | None = None,
    buckets: int = 60,
) -> dict[str, Any]:
    """Logged requests and p50/p99 latency per version of ``endpoint`` over time (Unix seconds
    ``since``/``until``, inclusive; default: the whole log). ``times`` are the intervals' ends."""
    import pandas as pd

    from flywheel.serving._drift import _read_logged
    from flywheel.serving._prediction_log import PREDICTIONS_FOLDER

    _check(since, until, buckets)
    start = None if since is None else datetime.fromtimestamp(since, UTC)
    folder = project.config.offline_store_path / PREDICTIONS_FOLDER
    frame = _read_logged(folder, endpoint, start, None)
    out: dict[str, Any] = {"endpoint": endpoint, "buckets": buckets, "times": [], "versions": {}}
    if len(frame) == 0:
        return out
    frame = frame.drop_duplicates("request_id")
    stamps = pd.to_datetime(frame["ts"], utc=True) - pd.Timestamp(0, tz="UTC")
    ts = stamps.dt.total_seconds().to_numpy()
    keep = ts <= (np.inf if until is None else until)
    frame, ts = frame[keep], ts[keep]
    if len(ts) == 0:
        return out
    lo = float(ts.min()) if since is None else float(since)
    hi = float(ts.max()) if until is None else float(until)
    width = (hi - lo) / buckets if hi > lo else 1.0
    which = np.minimum(((ts - lo) / width).astype(np.int64), buckets - 1)
    out["times"] = [lo + width * (i + 1) for i in range(buckets)]
    latency = frame["latency_ms"].to_numpy(dtype=float)
    versions = frame["version"].to_numpy()
    for version in sorted(set(versions.tolist())):
        mine = versions == version
        series: dict[str, list[Any]] = {"requests": [], "p50_ms": [], "p99_ms": []}
        for b in range(buckets):
            lat = latency[mine & (which == b)]
            series["requests"].append(int(lat.size))
            series["p50_ms"].append(float(np.quantile(lat, 0.5)) if lat.size else None)
            series["p99_ms"].append(float(np.quantile(lat, 0.99)) if lat.size else None)
        out["versions"][str(version)] = series
    return out


__all__ = ["traffic_history"]
