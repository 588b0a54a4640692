"""HTTP routes of the feature store (mounted by ``flywheel up`` and ``flywheel features serve``).

- ``POST /features/online``: ``{"features": [...], "entities": {"user_id": [1, 2]}}`` -> columns
  plus per-value status and event time (µs since the epoch).
- ``POST /features/push/{stream}``: ``{"rows": [...]}``; 422 names the bad row, field and reason,
  and nothing of the request is written.
- ``GET /features/catalog``, ``GET /features/catalog/{name}``: definitions, versions, lineage.
- ``POST /features/materialize`` and ``/features/materialize-incremental`` (writer).
- ``GET /features/datasets``, ``GET /features/datasets/{name}``: training datasets.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from flywheel.auth import require_reader, require_writer
from flywheel.features._errors import FeatureStoreError
from flywheel.features._metrics import metrics
from flywheel.features._store import FeatureStore
from flywheel.project import Project, current_project

# The auth dependencies are typed ``object``; they are callables FastAPI resolves.

_ERR = {"model": dict, "description": "Error: {'error': '...'}"}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _ERR,
    401: _ERR,
    403: _ERR,
    404: _ERR,
    409: _ERR,
    422: _ERR,
    503: _ERR,
}


def feature_store(request: Request, project: Project = Depends(current_project)) -> FeatureStore:
    """The app's shared ``FeatureStore`` (one per app: cached definitions and connections)."""
    store: FeatureStore | None = getattr(request.app.state, "feature_store", None)
    if store is None:
        store = FeatureStore(project)
        request.app.state.feature_store = store
    return store


class OnlineRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: list[str] | None = Field(
        default=None, description="Feature refs 'view:feature'.", max_length=10_000
    )
    feature_service: str | None = Field(default=None, max_length=200)
    entities: dict[str, list[int | str]] = Field(
        description="Join key -> values, e.g. {'user_id': [1, 2]}."
    )
    full_feature_names: bool = False


class PushRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rows: list[dict[str, Any]] = Field(max_length=100_000)


def _iso_datetime(value: Any) -> Any:
    """Only an ISO 8601 date-time string, as the schema declares (never a number or '0')."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(f"must be an ISO 8601 date-time string, got {type(value).__name__}")
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{value[:40]!r} is not an ISO 8601 date-time") from None


# Pydantic's lax mode would take 0 or "0" as a Unix time; the document declares a date-time string.
IsoDatetime = Annotated[datetime, BeforeValidator(_iso_datetime)]


class MaterializeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: IsoDatetime
    end: IsoDatetime
    views: list[str] | None = None


class IncrementalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    end: IsoDatetime
    views: list[str] | None = None


def _json(data: Any, status: int = 200) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY),
        status_code=status,
        media_type="application/json",
    )


router = APIRouter(prefix="/features", tags=["features"])


@router.post("/online", responses=_RESPONSES, dependencies=[Depends(require_reader)])
def online(body: OnlineRequest, store: FeatureStore = Depends(feature_store)) -> Response:
    """Online features for the given entities (one round trip to the online store)."""
    if (body.features is None) == (body.feature_service is None):
        raise FeatureStoreError("give exactly one of 'features' and 'feature_service'")
    refs: Any = body.features if body.features is not None else body.feature_service
    t0 = time.perf_counter()
    resp = store.get_online_features(
        refs, body.entities, full_feature_names=body.full_feature_names
    )
    payload = {
        "entities": {k: v for k, v in resp.to_dict().items() if k not in resp.feature_names},
        "features": resp.feature_names,
        "values": resp.to_dict(include_entities=False),
        "status": resp.statuses,
        "event_time_us": resp.event_timestamps_us(),
    }
    out = _json(payload)
    m = metrics()
    m["online_latency"].observe(time.perf_counter() - t0)
    m["rows_served"].inc(len(resp))
    return out


@router.post("/push/{stream}", responses=_RESPONSES, dependencies=[Depends(require_writer)])
def push(stream: str, body: PushRequest, store: FeatureStore = Depends(feature_store)) -> Response:
    """Validate and append rows to a stream; 422 names the row index, field and reason."""
    result = store.push(stream, body.rows)
    return _json({"stream": result.stream, "count": result.count, "ids": result.ids})


@router.get("/catalog", responses=_RESPONSES, dependencies=[Depends(require_reader)])
def catalog(
    store: FeatureStore = Depends(feature_store),
    limit: Annotated[int | None, Query(ge=1, le=10_000)] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Response:
    """Every definition (all versions) with owner, description, tags and times.
    ``limit``/``offset`` page through them; ``total`` is how many there are."""
    entries = store.list_definitions()
    page = entries[offset : None if limit is None else offset + limit]
    return _json({"objects": [e.to_dict() for e in page], "total": len(entries)})


@router.get("/catalog/{name}", responses=_RESPONSES, dependencies=[Depends(require_reader)])
def describe(name: str, store: FeatureStore = Depends(feature_store)) -> Response:
    """Schema, versions, change history, freshness and lineage of one object."""
    return _json(store.describe(name))


@router.post("/materialize", responses=_RESPONSES, dependencies=[Depends(require_writer)])
def materialize(body: MaterializeRequest, store: FeatureStore = Depends(feature_store)) -> Response:
    """Materialize [start, end) into the online store (idempotent)."""
    report = store.materialize(body.start, body.end, body.views)
    return _json({"summary": report.summary(), "rows": report.rows})


@router.post(
    "/materialize-incremental", responses=_RESPONSES, dependencies=[Depends(require_writer)]
)
def materialize_incremental(
    body: IncrementalRequest, store: FeatureStore = Depends(feature_store)
) -> Response:
    """Materialize each view from its watermark up to ``end``."""
    report = store.materialize_incremental(body.end, body.views)
    return _json({"summary": report.summary(), "rows": report.rows})


@router.get("/datasets", responses=_RESPONSES, dependencies=[Depends(require_reader)])
def datasets(store: FeatureStore = Depends(feature_store)) -> Response:
    """Training datasets (name, row count, features, files)."""
    return _json({"datasets": [d.to_dict() for d in store.list_training_datasets()]})


@router.get("/datasets/{name}", responses=_RESPONSES, dependencies=[Depends(require_reader)])
def dataset(name: str, store: FeatureStore = Depends(feature_store)) -> Response:
    """One training dataset with its per-column stats and the query that made it."""
    return _json(store.get_training_dataset(name).to_dict())


@router.get("/streams/{stream}/lag", responses=_RESPONSES, dependencies=[Depends(require_reader)])
def stream_lag(stream: str, store: FeatureStore = Depends(feature_store)) -> Response:
    """Events of ``stream`` not yet applied by the processors."""
    store.definitions.refresh()
    if stream not in store.definitions.streams:
        from flywheel.features._errors import FeatureNotFound

        raise FeatureNotFound(f"event stream {stream!r} does not exist")
    lag = store.event_log.lag(stream, "flywheel")
    metrics()["lag"].labels(stream).set(lag)
    return _json({"stream": stream, "lag": lag})


@contextlib.asynccontextmanager
async def stream_service(project: Project) -> AsyncIterator[None]:
    """``flywheel up``: a stream processor thread for every stream, for the app's lifetime."""
    stop = threading.Event()
    store = FeatureStore(project)

    def loop() -> None:
        proc = store.processor(consumer=f"up-{os.getpid()}")
        while not stop.is_set():
            try:
                proc.run(stop, block_ms=200)
            except Exception:  # keep serving; the error is logged and retried
                import logging

                logging.getLogger("flywheel.features").exception("stream processor failed")
                stop.wait(1.0)

    thread = threading.Thread(target=loop, name="flywheel-features-stream", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 5)
        store.close()
