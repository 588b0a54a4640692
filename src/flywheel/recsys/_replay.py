"""The served pipeline, measured: replay a test window through the object users get.

``evaluate_served(lines, split)`` does what a deployment does at the cut-off, then asks:

1. ingest the purchases before the cut-off into a scratch project (its feature store holds
   what was known at the cut-off);
2. ``train_pipeline`` there: the blend (the learned LambdaRank blend per view, or the linear
   weights when it does not beat them), EASE's λ and the re-rank's diversity, chosen on the
   months before the cut-off and registered as ``recs-pipeline``;
3. build the served ``Pipeline`` as ``OnlineRecommender`` builds it (state fitted from the
   ingest, parameters read from the registry) and, for every test user, ``replay`` a request
   at the cut-off (``new_only`` in the new-only view): the feature read from the store, the
   sources, the blend, the ranker stage and the re-rank, with no exploration slots;
4. score the pages against the test window (OR-T1 metrics, both views).

The scratch project has no two-tower or ``recs-ranker`` registered and the replay's settings
name none (``replay_settings``), so the replay measures the served pipeline configured without
them: the learned blend registered with ``recs-pipeline`` orders the page. A deployment that
also serves a ``recs-ranker`` re-orders the blend's top ``RANK_TOP`` with it, which this replay
does not measure.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._metrics import VIEWS, View, ViewMetrics, metrics_from_rankings, view_truth
from flywheel.recsys._pipeline import Pipeline, PipelineRequest, RecsysSettings

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.project import Project
    from flywheel.recsys._protocol import Split

SERVED_ROW = "served pipeline"
K = 20


@dataclass
class ServedEvaluation:
    """The served pipeline's metrics per view and the parameters it served with."""

    metrics: dict[View, ViewMetrics]
    params: dict[str, Any]
    seconds: float = 0.0
    pages: dict[View, dict[int, list[str]]] = field(default_factory=dict)


def scratch_project(root: Path, name: str = "recs-replay") -> Project:
    """A prepared project on the embedded defaults (SQLite, local folders) in ``root``."""
    from flywheel.config import DEFAULT_CONFIG_TEXT, load_config
    from flywheel.project import Project

    root.mkdir(parents=True, exist_ok=True)
    (root / "flywheel.yaml").write_text(DEFAULT_CONFIG_TEXT.format(project=name), "utf-8")
    project = Project(load_config(root))
    project.prepare()
    return project


def replay_settings(content_method: str = "tfidf") -> RecsysSettings:
    """The served settings of a replay: no exploration, nothing registered but the blend."""
    return RecsysSettings(
        content_method=content_method,
        two_tower_model=None,
        ranker_endpoint=None,
        explore_experiment=None,
        deadline_ms=10_000.0,
    )


def served_pipeline(project: Project, settings: RecsysSettings) -> Pipeline:
    """The ``Pipeline`` an ``OnlineRecommender`` of ``project`` serves (no background)."""
    from flywheel.features import FeatureStore
    from flywheel.recsys._params import PipelineParams, load_pipeline
    from flywheel.recsys._sources import SERVED_SOURCES
    from flywheel.recsys._state import OnlineState

    state = OnlineState.from_project(
        project,
        settings.trending_half_life_days,
        content_method=settings.content_method,  # type: ignore[arg-type]
    )
    name = settings.pipeline_model
    params = (load_pipeline(project, name) if name else None) or PipelineParams.untuned(
        SERVED_SOURCES
    )
    return Pipeline(state, params, settings, store=FeatureStore(project))


def replay_pages(
    pipeline: Pipeline, user_ids: list[int], *, new_only: bool, k: int = K
) -> dict[int, list[str]]:
    """Each user's served page at the store's time (``Pipeline.replay``)."""
    strategy = pipeline.settings.strategy
    return {
        u: pipeline.replay(PipelineRequest(u, k, new_only=new_only, strategy=strategy))
        for u in user_ids
    }


def evaluate_served(
    lines: pd.DataFrame,
    split: Split,
    *,
    settings: RecsysSettings | None = None,
    progress: Callable[[str], None] | None = None,
    keep_pages: bool = False,
) -> ServedEvaluation:
    """The served pipeline's OR-T1 metrics on ``split`` (see the module docstring)."""
    from flywheel.recsys._ingest import ingest
    from flywheel.recsys._tune import train_pipeline

    say = progress or (lambda _m: None)
    settings = settings or replay_settings()
    t0 = time.perf_counter()
    before = lines.loc[lines["InvoiceDate"] < split.train_end]
    with tempfile.TemporaryDirectory(prefix="flywheel-replay-") as tmp:
        project = scratch_project(Path(tmp) / "proj")
        try:
            say("served pipeline: ingest as of the cut-off")
            ingest(project, before, history_weeks=0)
            say("served pipeline: tuning and registering the blend (validation window)")
            params = train_pipeline(project, settings)
            pipeline = served_pipeline(project, settings)
            try:
                out = _measure(pipeline, split, keep_pages, say)
            finally:
                if pipeline.store is not None:
                    pipeline.store.close()
        finally:
            project.close()
    out.params = {
        "pipeline": params.version,
        "weights": {v: {n: w for n, w in ws.items() if w > 0} for v, ws in params.weights.items()},
        "learned": sorted(params.rankers),
        "diversity": params.diversity,
        "ease_lambda": params.source_params.get("ease", {}).get("lambda"),
        "validation": params.provenance.get("validation", {}),
        "views": params.provenance.get("views", {}),
    }
    out.seconds = time.perf_counter() - t0
    return out


def _measure(
    pipeline: Pipeline, split: Split, keep_pages: bool, say: Callable[[str], None]
) -> ServedEvaluation:
    train = split.train
    users = [int(u) for u in train.users[split.test_users]]
    metrics: dict[View, ViewMetrics] = {}
    kept: dict[View, dict[int, list[str]]] = {}
    for view in VIEWS:
        say(f"served pipeline: replaying {len(users):,} requests ({view})")
        pages = replay_pages(pipeline, users, new_only=view == "new-only")
        rankings = np.full((len(users), K), -1, dtype=np.int64)
        for i, u in enumerate(users):
            ids = np.asarray(pages[u], dtype=str)
            cols = np.searchsorted(train.items, ids)
            ok = (cols < train.n_items) & (train.items[np.minimum(cols, train.n_items - 1)] == ids)
            row = cols[ok][:K]
            rankings[i, : len(row)] = row
        metrics[view] = metrics_from_rankings(rankings, view_truth(split, view), K)
        if keep_pages:
            kept[view] = pages
    return ServedEvaluation(metrics, {}, pages=kept)
