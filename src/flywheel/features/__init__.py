"""The feature store: definitions and catalog, point-in-time offline store, online store,
materialization, streaming windowed aggregations and the feature server.

Public API::

    FeatureStore(project)                   # the façade; every method below is on it
    store.apply(defs) / plan(defs) -> ApplyPlan   # the catalog, breaking changes refused
    store.get_historical_features(...)      # point-in-time join over the offline store
    store.create_training_dataset(...) -> TrainingDataset   # a recorded, reproducible dataset
    store.materialize(...) -> MaterializeReport             # offline -> online
    store.get_online_features(...) -> OnlineResponse
    store.online_store -> OnlineStore       # the online-store role (SQLite, Redis, ...)
    store.push(stream, rows) -> PushResult  # events into a stream
    store.processor(streams) -> StreamProcessor; default_consumer_name(index)
    Entity, Field, FeatureView, StreamFeatureView, OnDemandFeatureView, FeatureService,
    ParquetSource, EventStream, Aggregation, list_of, vector   # definitions
    load_definitions(path)                  # the definitions of a feature repo folder

Errors: ``FeatureStoreError`` and below: ``FeatureNotFound``, ``BreakingChangeError``,
``PushValidationError`` (``flywheel.features._errors``).
"""

from flywheel.features._catalog import ApplyPlan
from flywheel.features._datasets import TrainingDataset
from flywheel.features._definitions import (
    Aggregation,
    Entity,
    EventStream,
    FeatureService,
    FeatureView,
    Field,
    OnDemandFeatureView,
    ParquetSource,
    StreamFeatureView,
    list_of,
    vector,
)
from flywheel.features._errors import (
    BreakingChangeError,
    FeatureNotFound,
    FeatureStoreError,
    PushValidationError,
)
from flywheel.features._materialize import MaterializeReport
from flywheel.features._online import OnlineStore
from flywheel.features._repo import load_definitions
from flywheel.features._response import OnlineResponse
from flywheel.features._store import FeatureStore, PushResult
from flywheel.features._stream import StreamProcessor, default_consumer_name

__all__ = [
    "Aggregation",
    "ApplyPlan",
    "BreakingChangeError",
    "Entity",
    "EventStream",
    "FeatureNotFound",
    "FeatureService",
    "FeatureStore",
    "FeatureStoreError",
    "FeatureView",
    "Field",
    "MaterializeReport",
    "OnDemandFeatureView",
    "OnlineResponse",
    "OnlineStore",
    "ParquetSource",
    "PushResult",
    "PushValidationError",
    "StreamFeatureView",
    "StreamProcessor",
    "TrainingDataset",
    "default_consumer_name",
    "list_of",
    "load_definitions",
    "vector",
]
