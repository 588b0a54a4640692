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
from flywheel.features._store import FeatureStore

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
    "OnDemandFeatureView",
    "ParquetSource",
    "PushValidationError",
    "StreamFeatureView",
    "TrainingDataset",
    "list_of",
    "vector",
]
