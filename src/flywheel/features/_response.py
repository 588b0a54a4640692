"""``OnlineResponse``: columns of feature values plus per-value status and event time.

Values are kept as the columns the read produced; status and event time are kept per view row
and shared by the features of that view (no per-value objects are made until asked for).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd

PRESENT = "present"
MISSING = "missing"
EXPIRED = "expired"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def us_to_datetime(us: int | None) -> datetime | None:
    return None if us is None else _EPOCH + timedelta(microseconds=us)


class OnlineResponse:
    """The result of ``get_online_features``.

    ``to_dict()`` gives ``{column: [values...]}`` (entity keys first, then features in request
    order), ``to_df()`` a DataFrame; ``statuses`` gives ``{feature: ["present" | "missing" |
    "expired", ...]}`` and ``event_timestamps`` ``{feature: [datetime | None, ...]}``.
    """

    __slots__ = ("_columns", "_entities", "_status", "_times")

    def __init__(
        self,
        entities: dict[str, list[Any]],
        columns: dict[str, list[Any]],
        status: dict[str, list[str]],
        times_us: dict[str, list[int | None]],
    ) -> None:
        self._entities = entities
        self._columns = columns
        self._status = status
        self._times = times_us

    def __len__(self) -> int:
        for col in self._entities.values():
            return len(col)
        return 0

    @property
    def feature_names(self) -> list[str]:
        return list(self._columns)

    def to_dict(self, *, include_entities: bool = True) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = dict(self._entities) if include_entities else {}
        out.update(self._columns)
        return out

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame(self.to_dict())

    @property
    def statuses(self) -> dict[str, list[str]]:
        return dict(self._status)

    @property
    def event_timestamps(self) -> dict[str, list[datetime | None]]:
        cache: dict[int, list[datetime | None]] = {}
        out: dict[str, list[datetime | None]] = {}
        for name, times in self._times.items():
            if id(times) not in cache:
                cache[id(times)] = [us_to_datetime(t) for t in times]
            out[name] = cache[id(times)]
        return out

    def event_timestamps_us(self) -> dict[str, list[int | None]]:
        """Event times as µs since the epoch (cheap; what the HTTP server sends)."""
        return dict(self._times)

    def __repr__(self) -> str:
        return f"OnlineResponse({len(self)} rows, features={self.feature_names})"
