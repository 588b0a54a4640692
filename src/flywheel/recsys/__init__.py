"""The recommender: data, offline evaluation (protocol OR-T1), baselines and candidate generators.

Public API (everything else is private):

* data — ``load_transactions`` / ``resolve_data_source`` / ``read_online_retail`` /
  ``clean_transactions`` / ``download_online_retail`` for the UCI Online Retail file, and
  ``generate_transactions(SyntheticConfig(...))`` for a seeded synthetic shop of any size;
* protocol — ``build_split`` / ``validation_split`` (OR-T1 temporal split, ``Split``,
  ``TrainData``) and the metrics ``recall_at_k`` / ``ndcg_at_k`` / ``hit_at_k`` /
  ``evaluate_view``;
* baselines — ``MostPopular``, ``RepeatFrequency``, ``ItemKNN``, ``EASE``, ``IALS``;
* candidate generators (``CandidateGenerator`` contract) — ``RepeatPurchase``,
  ``CoOccurrence`` (incremental ``update``), ``Popularity`` (all-time or trending),
  ``ContentSimilarity`` (MiniLM / TF-IDF text embeddings, ``TextEmbedder``), their union with
  reasons (``CandidateUnion``) and a tuned blend (``HybridBlend``, ``tune_blend_weights``);
* two-tower retrieval — ``TwoTowerConfig``, ``write_two_tower_dataset`` and
  ``two_tower_job_spec`` (a 2-process DDP ``flywheel.training`` job that registers
  ``recs-two-tower``), ``TwoTowerRetriever`` (user / item embeddings, unseen items from their
  content, ``add_items``, ``search``) over a FAISS ``ItemIndex``; ``TwoTower`` is the same model
  as an in-process generator;
* ``evaluate_offline`` — the whole OR-T1 table (``EvaluationReport``), as
  ``flywheel recs evaluate`` prints it;
* online — ``feature_definitions`` / ``ingest`` (``IngestReport``) put the data into the feature
  store; ``Pipeline`` (features -> sources -> blend -> ranker -> re-rank; ``PipelineRequest``,
  ``read_features``, ``UserContext``) is the served pipeline, its blend weights chosen by
  ``tune_pipeline`` and registered / read with ``register_pipeline`` / ``load_pipeline``
  (``PipelineParams``); ``OnlineRecommender`` (``RecsysSettings``, ``OnlineState``, ``Event``,
  ``Recommendation``) runs it for ``GET /recommendations/{user_id}`` and records
  ``POST /events``;
* ranking — ``RankerConfig``, ``write_ranker_dataset`` (point-in-time training dataset in the
  feature store), ``ranker_job_spec`` (the scheduled LightGBM LambdaRank job), ``fit_ranker``,
  ``ranker_features`` (``RANKER_FEATURES``, one function for training and serving, over a
  ``HistoryIndex`` / ``UserHistory`` and ``read_item_features`` / ``read_user_features``) and
  ``RankerClient`` (scores through ``flywheel.serving`` in this process).

Errors: ``RecsysError`` (root) > ``DataUnavailableError``, ``DataFormatError``,
``EmptySplitError``, ``RankerUnavailable``.
"""

from typing import TYPE_CHECKING

from flywheel._plugins import lazy_exports
from flywheel.recsys._baselines import (
    EASE,
    IALS,
    ItemKNN,
    MostPopular,
    Recommender,
    RepeatFrequency,
)
from flywheel.recsys._candidates import (
    CandidateGenerator,
    Candidates,
    CandidateUnion,
    ContentSimilarity,
    CoOccurrence,
    HybridBlend,
    Popularity,
    RepeatPurchase,
    blend,
    decayed_user_item,
    normalise_rows,
    tune_blend_weights,
)
from flywheel.recsys._data import (
    NON_PRODUCT_CODES,
    ONLINE_RETAIL_COLUMNS,
    UCI_DATASET_URL,
    DataSource,
    LoadedTransactions,
    clean_transactions,
    default_cache_root,
    default_data_dir,
    download_online_retail,
    find_data_file,
    load_transactions,
    normalize_online_retail,
    read_online_retail,
    resolve_data_source,
)
from flywheel.recsys._errors import (
    DataFormatError,
    DataUnavailableError,
    EmptySplitError,
    RankerUnavailable,
    RecsysError,
)
from flywheel.recsys._evaluate import EvaluationReport, EvaluationRow, evaluate_offline
from flywheel.recsys._explore import EXPLORE_ARMS
from flywheel.recsys._history import HistoryIndex, UserHistory
from flywheel.recsys._index import ItemIndex
from flywheel.recsys._ingest import (
    EVENT_STREAM,
    EVENT_TYPES,
    IngestReport,
    derive_categories,
    feature_definitions,
    ingest,
    load_items,
    load_purchases,
)
from flywheel.recsys._metrics import (
    VIEWS,
    ViewMetrics,
    evaluate_view,
    hit_at_k,
    metrics_from_rankings,
    ndcg_at_k,
    rank_users,
    recall_at_k,
    top_k,
    view_truth,
)
from flywheel.recsys._online import Event, OnlineRecommender, Recommendation
from flywheel.recsys._params import PipelineParams, load_pipeline, register_pipeline
from flywheel.recsys._pipeline import (
    STRATEGIES,
    Pipeline,
    PipelineRequest,
    RecsysSettings,
    UserContext,
    read_features,
)
from flywheel.recsys._protocol import (
    OR_T1_TRAIN_END,
    Split,
    TrainData,
    build_split,
    build_train_data,
    validation_split,
)
from flywheel.recsys._ranker import (
    RANKER_FEATURES,
    RANKER_GENERATORS,
    RankerConfig,
    ranker_features,
    ranker_job_spec,
    ranker_matrix,
    ranker_missing_values,
    read_item_features,
    read_user_features,
    write_ranker_dataset,
)
from flywheel.recsys._ranker_client import RankerClient
from flywheel.recsys._ranker_train import FittedRanker, fit_ranker
from flywheel.recsys._rerank import ExplorationLedger, for_sale, mmr, place_exploration
from flywheel.recsys._rolling import ROLLING_CUTOFFS, RollingReport, evaluate_rolling
from flywheel.recsys._state import NewItem, OnlineState
from flywheel.recsys._synthetic import SyntheticConfig, generate_transactions
from flywheel.recsys._text import TEXT_METHODS, ContentEncoder, TextEmbedder, embed_texts
from flywheel.recsys._tune import train_pipeline, tune_pipeline

if TYPE_CHECKING:
    from flywheel.recsys._two_tower import TwoTower, TwoTowerConfig
    from flywheel.recsys._two_tower_serve import TwoTowerRetriever
    from flywheel.recsys._two_tower_train import two_tower_job_spec, write_two_tower_dataset

# The two-tower names need torch: imported on first use (PEP 562), so that importing
# flywheel.recsys (the CLI, the evaluation) does not pay for torch.
_LAZY = {
    "TwoTower": "flywheel.recsys._two_tower",
    "TwoTowerConfig": "flywheel.recsys._two_tower",
    "TwoTowerRetriever": "flywheel.recsys._two_tower_serve",
    "two_tower_job_spec": "flywheel.recsys._two_tower_train",
    "write_two_tower_dataset": "flywheel.recsys._two_tower_train",
}


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)


__all__ = [
    "EASE",
    "EVENT_STREAM",
    "EVENT_TYPES",
    "EXPLORE_ARMS",
    "IALS",
    "NON_PRODUCT_CODES",
    "ONLINE_RETAIL_COLUMNS",
    "OR_T1_TRAIN_END",
    "RANKER_FEATURES",
    "RANKER_GENERATORS",
    "ROLLING_CUTOFFS",
    "STRATEGIES",
    "TEXT_METHODS",
    "UCI_DATASET_URL",
    "VIEWS",
    "CandidateGenerator",
    "CandidateUnion",
    "Candidates",
    "CoOccurrence",
    "ContentEncoder",
    "ContentSimilarity",
    "DataFormatError",
    "DataSource",
    "DataUnavailableError",
    "EmptySplitError",
    "EvaluationReport",
    "EvaluationRow",
    "Event",
    "ExplorationLedger",
    "FittedRanker",
    "HistoryIndex",
    "HybridBlend",
    "IngestReport",
    "ItemIndex",
    "ItemKNN",
    "LoadedTransactions",
    "MostPopular",
    "NewItem",
    "OnlineRecommender",
    "OnlineState",
    "Pipeline",
    "PipelineParams",
    "PipelineRequest",
    "Popularity",
    "RankerClient",
    "RankerConfig",
    "RankerUnavailable",
    "Recommendation",
    "Recommender",
    "RecsysError",
    "RecsysSettings",
    "RepeatFrequency",
    "RepeatPurchase",
    "RollingReport",
    "Split",
    "SyntheticConfig",
    "TextEmbedder",
    "TrainData",
    "TwoTower",
    "TwoTowerConfig",
    "TwoTowerRetriever",
    "UserContext",
    "UserHistory",
    "ViewMetrics",
    "blend",
    "build_split",
    "build_train_data",
    "clean_transactions",
    "decayed_user_item",
    "default_cache_root",
    "default_data_dir",
    "derive_categories",
    "download_online_retail",
    "embed_texts",
    "evaluate_offline",
    "evaluate_rolling",
    "evaluate_view",
    "feature_definitions",
    "find_data_file",
    "fit_ranker",
    "for_sale",
    "generate_transactions",
    "hit_at_k",
    "ingest",
    "load_items",
    "load_pipeline",
    "load_purchases",
    "load_transactions",
    "metrics_from_rankings",
    "mmr",
    "ndcg_at_k",
    "normalise_rows",
    "normalize_online_retail",
    "place_exploration",
    "rank_users",
    "ranker_features",
    "ranker_job_spec",
    "ranker_matrix",
    "ranker_missing_values",
    "read_features",
    "read_item_features",
    "read_online_retail",
    "read_user_features",
    "recall_at_k",
    "register_pipeline",
    "resolve_data_source",
    "top_k",
    "train_pipeline",
    "tune_blend_weights",
    "tune_pipeline",
    "two_tower_job_spec",
    "validation_split",
    "view_truth",
    "write_ranker_dataset",
    "write_two_tower_dataset",
]
