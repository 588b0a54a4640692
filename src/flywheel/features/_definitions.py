"""Feature definitions: the nouns a feature repo is written in (Feast users will feel at home).

Every definition turns into a plain JSON-able ``spec`` (``to_spec``) that the catalog stores and
compares; ``from_spec`` rebuilds it. Durations accept ``timedelta`` or strings such as ``"30s"``,
``"5m"``, ``"1h"``, ``"7d"``. A view's version is written ``name@v2`` (or ``version=2``).

Dtypes: ``int64``, ``float32``, ``float64``, ``string``, ``bool``, ``timestamp``, fixed-length
float32 vectors ``vector[N]`` (embeddings, see ``vector``) and lists ``list<int64>`` /
``list<string>`` (see ``list_of``).
"""

from __future__ import annotations

import inspect
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from flywheel.features._errors import FeatureStoreError

SCALAR_DTYPES = ("int64", "float32", "float64", "string", "bool", "timestamp")
LIST_DTYPES = ("list<int64>", "list<string>")
_VECTOR = re.compile(r"^vector\[(\d{1,6})\]$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_VERSIONED = re.compile(r"^([A-Za-z_][A-Za-z0-9_]{0,62})(?:@v(\d{1,4}))?$")
_DURATION = re.compile(r"^\s*(\d+)\s*(ms|s|m|h|d|w)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
AGGREGATION_FUNCTIONS = (
    "count",
    "sum",
    "mean",
    "min",
    "max",
    "last",
    "count_distinct",
    "last_n",
)


def vector(dim: int) -> str:
    """The dtype of a fixed-length float32 vector (an embedding) of ``dim`` values."""
    if dim < 1:
        raise FeatureStoreError(f"vector dimension must be >= 1, got {dim}")
    return f"vector[{dim}]"


def list_of(dtype: str) -> str:
    """The dtype of a variable-length list of ``int64`` or ``string``."""
    out = f"list<{dtype}>"
    if out not in LIST_DTYPES:
        raise FeatureStoreError(f"lists hold int64 or string, not {dtype!r}")
    return out


def check_dtype(dtype: str, where: str) -> str:
    if dtype in SCALAR_DTYPES or dtype in LIST_DTYPES or _VECTOR.match(dtype):
        return dtype
    allowed = ", ".join((*SCALAR_DTYPES, "vector[N]", *LIST_DTYPES))
    raise FeatureStoreError(f"{where}: unknown dtype {dtype!r}; use one of {allowed}")


def vector_dim(dtype: str) -> int | None:
    m = _VECTOR.match(dtype)
    return int(m.group(1)) if m else None


def parse_duration(value: timedelta | str | float | int | None, where: str) -> float | None:
    """Seconds in a duration given as a timedelta, a number of seconds or ``"5m"``-style text."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, bool):
        raise FeatureStoreError(f"{where}: a duration cannot be a bool")
    elif isinstance(value, int | float):
        seconds = float(value)
    else:
        m = _DURATION.match(str(value))
        if not m:
            raise FeatureStoreError(
                f"{where}: duration {value!r} is not like '30s', '5m', '1h', '7d'"
            )
        seconds = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds < 0:
        raise FeatureStoreError(f"{where}: duration must not be negative")
    return float(seconds)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    for unit in ("d", "h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds}s"


def split_version(name: str, version: int | None, where: str) -> tuple[str, int]:
    m = _VERSIONED.match(name)
    if not m:
        raise FeatureStoreError(
            f"{where}: name {name!r} must be letters, digits and '_' (optionally '@vN')"
        )
    base, v = m.group(1), m.group(2)
    if v is not None and version is not None and int(v) != version:
        raise FeatureStoreError(f"{where}: name says v{v} but version={version}")
    resolved = int(v) if v is not None else (version or 1)
    if resolved < 1:
        raise FeatureStoreError(f"{where}: version must be >= 1")
    return base, resolved


def _check_name(name: str, kind: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise FeatureStoreError(
            f"{kind} name {name!r} must start with a letter or '_' and hold only letters, "
            "digits and '_' (at most 63)"
        )
    return name


@dataclass(frozen=True)
class Field:
    """A named, typed column of a feature view or stream.

    ``nullable``: whether a pushed event may leave the field out or send null (stream schemas;
    the default is required). A stream's ``event_id_field`` is required even if nullable.
    """

    name: str
    dtype: str
    description: str = ""
    nullable: bool = False

    def __post_init__(self) -> None:
        _check_name(self.name, "field")
        check_dtype(self.dtype, f"field {self.name!r}")

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": self.name,
            "dtype": self.dtype,
            "description": self.description,
        }
        if self.nullable:  # absent when false, so specs stored before the key existed still match
            spec["nullable"] = True
        return spec

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Field:
        return cls(
            spec["name"], spec["dtype"], spec.get("description", ""), spec.get("nullable", False)
        )


@dataclass
class _Meta:
    description: str = ""
    owner: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def _meta_spec(self) -> dict[str, Any]:
        return {"description": self.description, "owner": self.owner, "tags": dict(self.tags)}


@dataclass
class Entity(_Meta):
    """What features describe (a user, an item). ``join_key`` defaults to the name."""

    name: str = ""
    join_key: str = ""
    dtype: str = "int64"

    def __init__(
        self,
        name: str,
        join_key: str | None = None,
        dtype: str = "int64",
        *,
        description: str = "",
        owner: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description, owner, dict(tags or {}))
        self.name = _check_name(name, "entity")
        self.join_key = _check_name(join_key or name, "join key")
        if dtype not in ("int64", "string"):
            raise FeatureStoreError(
                f"entity {name!r}: join keys are int64 or string, not {dtype!r}"
            )
        self.dtype = dtype

    kind = "entity"

    def to_spec(self) -> dict[str, Any]:
        return {"join_key": self.join_key, "dtype": self.dtype, **self._meta_spec()}

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> Entity:
        return cls(
            name,
            spec["join_key"],
            spec["dtype"],
            description=spec.get("description", ""),
            owner=spec.get("owner", ""),
            tags=spec.get("tags"),
        )


@dataclass(frozen=True)
class ParquetSource:
    """A batch source: one Parquet file or a folder of them (relative to the project root)."""

    path: str
    timestamp_field: str = "event_timestamp"
    created_timestamp_field: str | None = None
    name: str | None = None

    def to_spec(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "timestamp_field": self.timestamp_field,
            "created_timestamp_field": self.created_timestamp_field,
            "name": self.name,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> ParquetSource:
        return cls(
            spec["path"],
            spec["timestamp_field"],
            spec.get("created_timestamp_field"),
            spec.get("name"),
        )


def _entity_names(entities: Sequence[Entity | str]) -> list[str]:
    return [e.name if isinstance(e, Entity) else e for e in entities]


@dataclass
class FeatureView(_Meta):
    """Features of some entities read from a batch source, served online after materialization.

    Args:
        name: ``"user_stats"`` or ``"user_stats@v2"``.
        entities: the entities (or their names) whose join keys identify a row.
        source: where the history lives (Parquet with an event-time column).
        schema: the feature columns.
        ttl: how old a value may be and still count (point-in-time joins and online reads).
        online: whether ``materialize`` writes this view to the online store.
    """

    name: str = ""
    version: int = 1
    entities: list[str] = field(default_factory=list)
    source: ParquetSource | None = None
    schema: list[Field] = field(default_factory=list)
    ttl: float | None = None
    online: bool = True

    kind = "feature_view"

    def __init__(
        self,
        name: str,
        entities: Sequence[Entity | str],
        source: ParquetSource,
        schema: Sequence[Field],
        ttl: timedelta | str | float | None = None,
        *,
        online: bool = True,
        version: int | None = None,
        description: str = "",
        owner: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description, owner, dict(tags or {}))
        self.name, self.version = split_version(name, version, "feature view")
        self.entities = _entity_names(entities)
        if not self.entities:
            raise FeatureStoreError(f"feature view {self.name!r} needs at least one entity")
        if not isinstance(source, ParquetSource):
            raise FeatureStoreError(f"feature view {self.name!r}: source must be a ParquetSource")
        self.source = source
        self.schema = list(schema)
        _check_fields(self.schema, f"feature view {self.name!r}")
        self.ttl = parse_duration(ttl, f"feature view {self.name!r} ttl")
        self.online = online

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    def to_spec(self) -> dict[str, Any]:
        assert self.source is not None
        return {
            "entities": list(self.entities),
            "source": self.source.to_spec(),
            "schema": [f.to_spec() for f in self.schema],
            "ttl": self.ttl,
            "online": self.online,
            **self._meta_spec(),
        }

    @classmethod
    def from_spec(cls, name: str, version: int, spec: dict[str, Any]) -> FeatureView:
        return cls(
            name,
            spec["entities"],
            ParquetSource.from_spec(spec["source"]),
            [Field.from_spec(f) for f in spec["schema"]],
            spec.get("ttl"),
            online=spec.get("online", True),
            version=version,
            description=spec.get("description", ""),
            owner=spec.get("owner", ""),
            tags=spec.get("tags"),
        )


def _check_fields(fields: Sequence[Field], where: str) -> None:
    seen: set[str] = set()
    for f in fields:
        if not isinstance(f, Field):
            raise FeatureStoreError(f"{where}: schema entries must be Field, got {f!r}")
        if f.name in seen:
            raise FeatureStoreError(f"{where}: field {f.name!r} is declared twice")
        seen.add(f.name)


@dataclass
class EventStream(_Meta):
    """A named stream of events that ``push`` appends to and stream processors consume.

    ``schema`` lists the event fields (entity keys included); ``timestamp_field`` is event time.
    An optional ``event_id_field`` makes retried pushes idempotent (otherwise the log assigns ids);
    when declared, every pushed event must carry it. A pushed event must carry every field that is
    not declared ``nullable``.
    """

    name: str = ""
    schema: list[Field] = field(default_factory=list)
    timestamp_field: str = "event_timestamp"
    event_id_field: str | None = None

    kind = "event_stream"

    def __init__(
        self,
        name: str,
        schema: Sequence[Field],
        timestamp_field: str = "event_timestamp",
        *,
        event_id_field: str | None = None,
        description: str = "",
        owner: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description, owner, dict(tags or {}))
        self.name = _check_name(name, "event stream")
        self.schema = list(schema)
        _check_fields(self.schema, f"event stream {name!r}")
        self.timestamp_field = timestamp_field
        self.event_id_field = event_id_field
        names = {f.name for f in self.schema}
        if timestamp_field not in names:
            self.schema.append(Field(timestamp_field, "timestamp"))
        elif self.field(timestamp_field).dtype != "timestamp":
            raise FeatureStoreError(f"event stream {name!r}: {timestamp_field!r} must be timestamp")
        if event_id_field is not None and event_id_field not in names:
            self.schema.append(Field(event_id_field, "string"))

    def field(self, name: str) -> Field:
        for f in self.schema:
            if f.name == name:
                return f
        raise FeatureStoreError(f"event stream {self.name!r} has no field {name!r}")

    def to_spec(self) -> dict[str, Any]:
        return {
            "schema": [f.to_spec() for f in self.schema],
            "timestamp_field": self.timestamp_field,
            "event_id_field": self.event_id_field,
            **self._meta_spec(),
        }

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> EventStream:
        return cls(
            name,
            [Field.from_spec(f) for f in spec["schema"]],
            spec["timestamp_field"],
            event_id_field=spec.get("event_id_field"),
            description=spec.get("description", ""),
            owner=spec.get("owner", ""),
            tags=spec.get("tags"),
        )


@dataclass(frozen=True)
class Aggregation:
    """A windowed aggregate of one stream column, e.g. ``Aggregation("amount", "sum", "1h")``.

    Functions: count, sum, mean, min, max, last, count_distinct, last_n (with ``n``). The feature
    is named ``{column}_{function}_{window}`` unless ``name`` is given. The window slides in steps
    of ``tile`` (default: window / 12, at least 1 s): at time t it covers the events with event
    time <= t whose tile starts after ``tile_start(t) - window``.
    """

    column: str
    function: str
    window: timedelta | str | float
    name: str | None = None
    n: int = 10
    tile: timedelta | str | float | None = None

    def __post_init__(self) -> None:
        if self.function not in AGGREGATION_FUNCTIONS:
            raise FeatureStoreError(
                f"aggregation of {self.column!r}: unknown function {self.function!r}; use one of "
                + ", ".join(AGGREGATION_FUNCTIONS)
            )
        if self.n < 1:
            raise FeatureStoreError(f"aggregation {self.feature_name!r}: n must be >= 1")
        w = self.window_seconds
        t = self.tile_seconds
        if w <= 0:
            raise FeatureStoreError(f"aggregation {self.feature_name!r}: window must be > 0")
        if t <= 0 or (w / t) != int(w / t):
            raise FeatureStoreError(
                f"aggregation {self.feature_name!r}: tile {t}s must divide the window {w}s"
            )

    @property
    def window_seconds(self) -> int:
        return int(parse_duration(self.window, "aggregation window") or 0)

    @property
    def tile_seconds(self) -> int:
        if self.tile is not None:
            return int(parse_duration(self.tile, "aggregation tile") or 0)
        w = self.window_seconds
        for parts in (12, 10, 6, 5, 4, 3, 2, 1):
            if w % parts == 0 and w // parts >= 1:
                return w // parts
        return w

    @property
    def feature_name(self) -> str:
        if self.name:
            return self.name
        return f"{self.column}_{self.function}_{format_duration(self.window_seconds)}"

    def output_dtype(self, input_dtype: str) -> str:
        f = self.function
        if f in ("count", "count_distinct"):
            return "int64"
        if f == "mean":
            return "float64"
        if f == "sum":
            return "int64" if input_dtype in ("int64", "bool") else "float64"
        if f == "last_n":
            return "list<int64>" if input_dtype == "int64" else "list<string>"
        return input_dtype

    def to_spec(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "function": self.function,
            "window": self.window_seconds,
            "name": self.feature_name,
            "n": self.n,
            "tile": self.tile_seconds,
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Aggregation:
        return cls(
            spec["column"], spec["function"], spec["window"], spec["name"], spec["n"], spec["tile"]
        )


@dataclass
class StreamFeatureView(_Meta):
    """Windowed aggregations over an ``EventStream``, kept fresh online by a stream processor.

    The same definition computes the values offline from the archived event history, so a value
    read online at time t equals ``get_historical_features`` at t (train/serve parity). Events
    older than the processor's high-water mark minus ``allowed_lateness`` are dropped and counted.
    """

    name: str = ""
    version: int = 1
    entities: list[str] = field(default_factory=list)
    source: EventStream | None = None
    aggregations: list[Aggregation] = field(default_factory=list)
    allowed_lateness: float = 0.0
    ttl: float | None = None

    kind = "stream_feature_view"

    def __init__(
        self,
        name: str,
        entities: Sequence[Entity | str],
        source: EventStream,
        aggregations: Sequence[Aggregation],
        *,
        allowed_lateness: timedelta | str | float = "1h",
        ttl: timedelta | str | float | None = None,
        version: int | None = None,
        description: str = "",
        owner: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description, owner, dict(tags or {}))
        self.name, self.version = split_version(name, version, "stream feature view")
        self.entities = _entity_names(entities)
        if not self.entities:
            raise FeatureStoreError(f"stream feature view {self.name!r} needs an entity")
        if not isinstance(source, EventStream):
            raise FeatureStoreError(
                f"stream feature view {self.name!r}: source must be EventStream"
            )
        self.source = source
        self.aggregations = list(aggregations)
        if not self.aggregations:
            raise FeatureStoreError(f"stream feature view {self.name!r} needs aggregations")
        names = [a.feature_name for a in self.aggregations]
        if len(set(names)) != len(names):
            raise FeatureStoreError(f"stream feature view {self.name!r}: duplicate feature names")
        for a in self.aggregations:
            source.field(a.column)
        self.allowed_lateness = parse_duration(allowed_lateness, "allowed_lateness") or 0.0
        self.ttl = parse_duration(ttl, f"stream feature view {self.name!r} ttl")

    @property
    def ref(self) -> str:
        return f"{self.name}@v{self.version}"

    @property
    def schema(self) -> list[Field]:
        assert self.source is not None
        return [
            Field(a.feature_name, a.output_dtype(self.source.field(a.column).dtype))
            for a in self.aggregations
        ]

    def to_spec(self) -> dict[str, Any]:
        assert self.source is not None
        return {
            "entities": list(self.entities),
            "stream": self.source.name,
            "aggregations": [a.to_spec() for a in self.aggregations],
            "allowed_lateness": self.allowed_lateness,
            "ttl": self.ttl,
            **self._meta_spec(),
        }

    @classmethod
    def from_spec(
        cls, name: str, version: int, spec: dict[str, Any], stream: EventStream
    ) -> StreamFeatureView:
        return cls(
            name,
            spec["entities"],
            stream,
            [Aggregation.from_spec(a) for a in spec["aggregations"]],
            allowed_lateness=spec.get("allowed_lateness", 0.0),
            ttl=spec.get("ttl"),
            version=version,
            description=spec.get("description", ""),
            owner=spec.get("owner", ""),
            tags=spec.get("tags"),
        )


@dataclass
class OnDemandFeatureView(_Meta):
    """A request-time transform: ``udf(df) -> df`` over request data and other features.

    ``sources`` are feature references (``"view:feature"``) and ``request_schema`` the fields the
    caller passes with each entity row. The function's source text is stored in the catalog so
    that a process which did not ``apply`` it (the feature server) can run it; feature repos are
    trusted code, exactly as in Feast.
    """

    name: str = ""
    sources: list[str] = field(default_factory=list)
    request_schema: list[Field] = field(default_factory=list)
    schema: list[Field] = field(default_factory=list)
    udf: Callable[[Any], Any] | None = None
    udf_source: str = ""

    kind = "on_demand_feature_view"
    version = 1

    def __init__(
        self,
        name: str,
        sources: Sequence[str],
        schema: Sequence[Field],
        udf: Callable[[Any], Any],
        *,
        request_schema: Sequence[Field] = (),
        description: str = "",
        owner: str = "",
        tags: dict[str, str] | None = None,
        udf_source: str | None = None,
    ) -> None:
        super().__init__(description, owner, dict(tags or {}))
        self.name = _check_name(name, "on-demand feature view")
        self.sources = list(sources)
        self.schema = list(schema)
        self.request_schema = list(request_schema)
        _check_fields(self.schema, f"on-demand feature view {name!r}")
        self.udf = udf
        if udf_source is None:
            try:
                udf_source = textwrap.dedent(inspect.getsource(udf))
            except (OSError, TypeError):
                udf_source = ""
        self.udf_source = udf_source

    def to_spec(self) -> dict[str, Any]:
        return {
            "sources": list(self.sources),
            "request_schema": [f.to_spec() for f in self.request_schema],
            "schema": [f.to_spec() for f in self.schema],
            "udf_name": getattr(self.udf, "__name__", "udf"),
            "udf_source": self.udf_source,
            **self._meta_spec(),
        }

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> OnDemandFeatureView:
        namespace: dict[str, Any] = {}
        source = spec.get("udf_source", "")
        lines = [ln for ln in source.splitlines() if not ln.lstrip().startswith("@")]
        exec(compile("\n".join(lines), f"<udf {name}>", "exec"), namespace)
        udf = namespace[spec["udf_name"]]
        return cls(
            name,
            spec["sources"],
            [Field.from_spec(f) for f in spec["schema"]],
            udf,
            request_schema=[Field.from_spec(f) for f in spec.get("request_schema", [])],
            description=spec.get("description", ""),
            owner=spec.get("owner", ""),
            tags=spec.get("tags"),
            udf_source=source,
        )


@dataclass
class FeatureService(_Meta):
    """A named feature list that a model uses; refs are pinned to view versions on apply."""

    name: str = ""
    features: list[str] = field(default_factory=list)

    kind = "feature_service"
    version = 1

    def __init__(
        self,
        name: str,
        features: Sequence[str | FeatureView | StreamFeatureView | OnDemandFeatureView],
        *,
        description: str = "",
        owner: str = "",
        tags: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description, owner, dict(tags or {}))
        self.name = _check_name(name, "feature service")
        refs: list[str] = []
        for f in features:
            if isinstance(f, str):
                refs.append(f)
            elif isinstance(f, OnDemandFeatureView):
                refs.extend(f"{f.name}:{x.name}" for x in f.schema)
            else:
                refs.extend(f"{f.ref}:{x.name}" for x in f.schema)
        if not refs:
            raise FeatureStoreError(f"feature service {name!r} lists no features")
        self.features = refs

    def to_spec(self) -> dict[str, Any]:
        return {"features": list(self.features), **self._meta_spec()}

    @classmethod
    def from_spec(cls, name: str, spec: dict[str, Any]) -> FeatureService:
        return cls(
            name,
            spec["features"],
            description=spec.get("description", ""),
            owner=spec.get("owner", ""),
            tags=spec.get("tags"),
        )


Definition = (
    Entity | FeatureView | StreamFeatureView | OnDemandFeatureView | FeatureService | EventStream
)
