"""Metric events (clicks, purchases, rewards, ...) checked into the rows the store keeps.

``event_row`` is the one validation of an event, for ``Experiments.log_events`` / ``log_rewards``
and the event-stream consumer alike: every bad field is an ``InvalidExperiment`` naming it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from flywheel.experiments._errors import InvalidExperiment

MAX_EVENT_VALUE = 1e12  # keeps sums and squares far from float overflow
MAX_EPOCH = 1e11


def event_row(event: Any, index: int, field: str = "events") -> dict[str, Any]:
    """The stored row of one metric event; ``field[index]`` names it in errors."""
    where = f"{field}[{index}]"
    if not isinstance(event, Mapping):
        raise InvalidExperiment(where, "must be a mapping")
    unit = event.get("unit_id")
    if not isinstance(unit, str | int) or isinstance(unit, bool) or not str(unit):
        raise InvalidExperiment(f"{where}.unit_id", f"must be a non-empty string, got {unit!r}")
    unit = str(unit)
    if len(unit) > 200:
        raise InvalidExperiment(f"{where}.unit_id", "must be at most 200 characters")
    event_type = event.get("event_type", event.get("type"))
    if not isinstance(event_type, str) or not 0 < len(event_type) <= 100:
        raise InvalidExperiment(f"{where}.event_type", f"must be a name, got {event_type!r}")
    value = event.get("value", 1.0)
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not abs(value) <= MAX_EVENT_VALUE
    ):
        raise InvalidExperiment(
            f"{where}.value", f"must be a number within +-{MAX_EVENT_VALUE:g}, got {value!r}"
        )
    ts = event.get("ts")
    if ts is None:
        ts = time.time()
    elif isinstance(ts, datetime):
        ts = (ts if ts.tzinfo else ts.replace(tzinfo=UTC)).timestamp()
    elif isinstance(ts, bool) or not isinstance(ts, int | float) or not 0 <= ts <= MAX_EPOCH:
        raise InvalidExperiment(f"{where}.ts", f"must be epoch seconds (0 to 1e11), got {ts!r}")
    optional: dict[str, Any] = {}
    for key, limit in (("event_id", 64), ("experiment", 100), ("decision_id", 40)):
        v = event.get(key)
        if v is not None and (not isinstance(v, str) or not 0 < len(v) <= limit):
            raise InvalidExperiment(f"{where}.{key}", f"must be a string of 1-{limit} characters")
        optional[key] = v
    return {
        "unit_id": unit,
        "event_type": event_type,
        "value": float(value),
        "ts": float(ts),
        "applied": False,
        **optional,
    }


__all__ = ["MAX_EPOCH", "MAX_EVENT_VALUE", "event_row"]
