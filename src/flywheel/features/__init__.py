"""The feature store: definitions and catalog, point-in-time offline store, online store,
materialization, streaming windowed aggregations and the feature server.

Errors: see ``flywheel.features._errors`` (``FeatureStoreError`` and below).
"""

from flywheel.features._catalog import ApplyPlan, CatalogEntry, Change
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
from flywheel.features._online import OnlineStore, open_online_store
from flywheel.features._repo import load_definitions
from flywheel.features._response import OnlineResponse
from flywheel.features._store import FeatureStore, PushResult
from flywheel.features._stream import ProcessorStats, StreamProcessor, default_consumer_name

__all__ = [
    "Aggregation",
    "ApplyPlan",
    "BreakingChangeError",
    "CatalogEntry",
    "Change",
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
    "ProcessorStats",
    "PushResult",
    "PushValidationError",
    "StreamFeatureView",
    "StreamProcessor",
    "TrainingDataset",
    "default_consumer_name",
    "list_of",
    "load_definitions",
    "open_online_store",
    "vector",
]
