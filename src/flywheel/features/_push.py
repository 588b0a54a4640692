"""Validating pushed rows against a stream's schema and encoding them as event payloads.

Every row is checked before anything is written, so a request with one bad row writes nothing
and the error names the row index, the field and the reason (HTTP 422).

- Every schema field must be present and non-null unless declared ``Field(..., nullable=True)``;
  the timestamp, the entity keys of the stream's views and the ``event_id_field`` always.
- ``NaN`` and ``Infinity`` in a number are refused, naming the field: a pushed number is stored as
  the finite value it is, never turned into null. (In a pandas DataFrame, a missing value (NaN
  in a float column) is a null, as pandas means it; ±inf there is refused too.)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import pandas as pd

from flywheel.features._definitions import EventStream, vector_dim
from flywheel.features._errors import PushValidationError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _to_us(value: Any) -> int:
    if isinstance(value, pd.Timestamp):
        value = value.to_pydatetime()
    if isinstance(value, str):
        value = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if not isinstance(value, datetime):
        raise ValueError("expected a datetime or an ISO-8601 string")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    delta = value - _EPOCH
    return (delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds


def _plain(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, list | tuple | str):
        try:
            return value.item()
        except (ValueError, AttributeError):
            return value
    return value


def _check(value: Any, dtype: str) -> Any:
    """The JSON-able value for ``dtype`` or ValueError with the reason."""
    value = _plain(value)
    if dtype == "int64":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type(value).__name__}")
        if not -(2**63) <= value < 2**63:
            raise ValueError("integer out of int64 range")
        return value
    if dtype in ("float32", "float64"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number, got {type(value).__name__}")
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{value} is not a finite number; send a finite number or null")
        return float(value)
    if dtype == "string":
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {type(value).__name__}")
        return value
    if dtype == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {type(value).__name__}")
        return value
    if dtype == "timestamp":
        return _to_us(value)
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list | tuple):
        raise ValueError(f"expected a list, got {type(value).__name__}")
    dim = vector_dim(dtype)
    if dim is not None:
        if len(value) != dim:
            raise ValueError(f"expected {dim} values, got {len(value)}")
        return [_check(v, "float32") for v in value]
    inner = "int64" if dtype == "list<int64>" else "string"
    return [_check(v, inner) for v in value]


def rows_of(rows: Sequence[Mapping[str, Any]] | pd.DataFrame) -> list[Mapping[str, Any]]:
    if isinstance(rows, pd.DataFrame):
        # pandas marks a missing value as NaN/NaT/NA: that is a null here (±inf is not missing).
        missing = rows.isna().to_numpy()
        records: list[dict[str, Any]] = rows.to_dict("records")
        if missing.any():
            columns = list(rows.columns)
            for record, row_missing in zip(records, missing, strict=True):
                for column, is_missing in zip(columns, row_missing, strict=True):
                    if is_missing:
                        record[column] = None
        return list(records)
    if isinstance(rows, Mapping):
        return [rows]
    return list(rows)


def encode_events(
    stream: EventStream, rows: Sequence[Mapping[str, Any]] | pd.DataFrame, required: Sequence[str]
) -> list[bytes]:
    """Validate every row, then encode each as one JSON payload (timestamps as µs).

    ``required``: fields that must be present and non-null besides the schema's non-nullable
    fields, the timestamp and the event id (the entity keys of the stream's views).
    """
    schema = {f.name: f.dtype for f in stream.schema}
    must = set(required) | {stream.timestamp_field}
    plain = {f.name for f in stream.schema if not f.nullable} - must  # could be made nullable
    must |= plain
    if stream.event_id_field is not None:
        must.add(stream.event_id_field)
        plain.discard(stream.event_id_field)

    def hint(name: str) -> str:
        return " (declare the field nullable to allow that)" if name in plain else ""

    out: list[bytes] = []
    records = rows_of(rows)
    if not records:
        raise PushValidationError(stream.name, 0, "", "no rows given")
    for i, row in enumerate(records):
        if not isinstance(row, Mapping):
            raise PushValidationError(stream.name, i, "", "a row must be an object of fields")
        event: dict[str, Any] = {}
        for name, value in row.items():
            if name not in schema:
                raise PushValidationError(
                    stream.name, i, str(name), f"not in the stream's schema ({sorted(schema)})"
                )
            if value is None:
                if name in must:
                    raise PushValidationError(
                        stream.name, i, name, f"is required, got null{hint(name)}"
                    )
                event[name] = None
                continue
            try:
                event[name] = _check(value, schema[name])
            except (ValueError, TypeError, OverflowError) as exc:
                raise PushValidationError(stream.name, i, name, str(exc)) from None
        for name in sorted(must):
            if name not in event:
                raise PushValidationError(
                    stream.name, i, name, f"is required but missing{hint(name)}"
                )
        out.append(orjson.dumps(event))
    return out
