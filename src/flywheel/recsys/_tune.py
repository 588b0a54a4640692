"""Choosing the served pipeline's blend weights on a validation window (``tune_pipeline``).

The window is the last ``window_days`` of the purchases given (nothing after them is read):
the sources are fitted on what came before it, exactly as ``OnlineState`` fits them after an
ingest; each sampled validation user asks the served ``Pipeline`` for its sources' candidates
with the features a freshly ingested store holds (no live events); coordinate ascent then picks,
per view, the weights whose blended top 20 has the best NDCG@20 on the window. The source best
alone gets weight 1 (it sets the scale).

EASE's λ is chosen first, on the same window (its NDCG@20 alone, mean of both views).
Sources that only live events feed (``session``, ``category``, ``similar``) and a two-tower that
is not loaded propose nothing on a purchase log's cut-off; they get ``UNMEASURED_WEIGHT``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._metrics import VIEWS, View, metrics_from_rankings, view_truth
from flywheel.recsys._params import DEFAULT_MODEL, PipelineParams, dataset_id, register_pipeline
from flywheel.recsys._pipeline import Pipeline, PipelineRequest, RecsysSettings, UserContext
from flywheel.recsys._rerank import for_sale
from flywheel.recsys._sources import SERVED_SOURCES

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.project import Project
    from flywheel.recsys._models import ModelHandles
    from flywheel.recsys._protocol import Split
    from flywheel.recsys._state import OnlineState

UNMEASURED_WEIGHT = 1.0  # the best measured source's weight: nothing on a cut-off to tune it on
EASE_LAMBDAS: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)  # as evaluate_offline
WEIGHT_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0)
K = 20


def validation_window(lines: pd.DataFrame, window_days: int) -> Split:
    """The split of ``lines`` whose test window is their last ``window_days`` days."""
    import pandas as pd

    from flywheel.recsys._protocol import build_split

    end = pd.Timestamp(lines["InvoiceDate"].max()) + pd.Timedelta(seconds=1)
    return build_split(lines, (end - pd.Timedelta(days=window_days)).floor("D"), end)


def state_for(train: Any, settings: RecsysSettings) -> OnlineState:
    """The ``OnlineState`` an ingest of ``train``'s purchases would fit (categories from text)."""
    import pandas as pd

    from flywheel.recsys._ingest import derive_categories
    from flywheel.recsys._state import OnlineState

    cats = derive_categories(pd.Series([str(t) for t in train.item_text])).to_numpy(dtype=object)
    return OnlineState(
        train,
        cats,
        settings.trending_half_life_days,
        content_method=settings.content_method,  # type: ignore[arg-type]
    )


class _Candidates:
    """Per validation user: candidate rows (ascending), each source's normalised score."""

    def __init__(self, pipeline: Pipeline, split: Split, users: np.ndarray, strategy: str):
        st = pipeline.state
        self.names: list[str] = []
        per_user: list[tuple[np.ndarray, dict[str, np.ndarray]]] = []
        for row in users.tolist():
            request = PipelineRequest(int(split.train.users[row]), k=K, strategy=strategy)
            gens = pipeline.candidates(
                request, pipeline.request_context(request, UserContext()), []
            )
            rows = (
                np.unique(np.concatenate([g[0] for g in gens.values()]))
                if gens
                else np.empty(0, dtype=np.int64)
            )
            keep = np.asarray([for_sale(st.item_ids[int(r)]) for r in rows], dtype=bool)
            rows = rows[keep] if len(rows) else rows
            parts = {}
            for name, (r, v) in gens.items():
                if name not in self.names:
                    self.names.append(name)
                col = np.zeros(len(rows))
                pos = np.searchsorted(rows, r)
                ok = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == r)
                col[pos[ok]] = v[ok] / (float(v[0]) or 1.0)
                parts[name] = col
            per_user.append((rows.astype(np.int64), parts))
        width = max((len(r) for r, _ in per_user), default=0)
        self.rows = np.full((len(users), max(width, 1)), -1, dtype=np.int64)
        self.scores = np.zeros((len(self.names), len(users), max(width, 1)))
        for u, (rows, parts) in enumerate(per_user):
            self.rows[u, : len(rows)] = rows
            for name, col in parts.items():
                self.scores[self.names.index(name), u, : len(rows)] = col

    def ndcg(
        self, weights: dict[str, float], truth: Sequence[np.ndarray], seen: np.ndarray
    ) -> float:
        total = np.zeros(self.rows.shape)
        proposed = np.zeros(self.rows.shape, dtype=bool)
        for i, name in enumerate(self.names):
            w = weights.get(name, 0.0)
            if w > 0:
                total += w * self.scores[i]
                proposed |= self.scores[i] > 0
        total = np.where(proposed & (self.rows >= 0) & ~seen, total, -np.inf)
        order = np.argsort(-total, axis=1, kind="stable")[:, :K]  # ties: lower row first
        ranked = np.take_along_axis(self.rows, order, 1)
        ranked = np.where(np.isfinite(np.take_along_axis(total, order, 1)), ranked, -1)
        return metrics_from_rankings(ranked, truth, K).ndcg


def _ascend(
    cands: _Candidates, truth: Sequence[np.ndarray], seen: np.ndarray
) -> tuple[dict[str, float], float]:
    names = cands.names
    if not names:
        return {}, 0.0
    alone = {n: cands.ndcg({n: 1.0}, truth, seen) for n in names}
    anchor = max(names, key=lambda n: (alone[n], -names.index(n)))
    weights = {n: (1.0 if n == anchor else 0.0) for n in names}
    best = alone[anchor]
    for _ in range(2):
        changed = False
        for name in [n for n in names if n != anchor]:
            for w in WEIGHT_GRID:
                if w == weights[name]:
                    continue
                trial = {**weights, name: w}
                score = cands.ndcg(trial, truth, seen)
                if score > best + 1e-9:
                    best, weights, changed = score, trial, True
        if not changed:
            break
    return weights, best


def tune_pipeline(
    lines: pd.DataFrame,
    settings: RecsysSettings | None = None,
    *,
    models: ModelHandles | None = None,
    window_days: int = 30,
    max_users: int = 2_000,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> PipelineParams:
    """The served pipeline's blend weights, chosen on the last ``window_days`` of ``lines``
    (see the module docstring). ``models``: a loaded two-tower joins the measured sources."""
    say = progress or (lambda _m: None)
    settings = settings or RecsysSettings()
    say("pipeline: validation window")
    val = validation_window(lines, window_days)
    say("pipeline: fitting the sources before the window")
    state = state_for(val.train, settings)
    source_params = {}
    if state.ease(EASE_LAMBDAS[0]) is not None:
        say("pipeline: choosing EASE's λ on the window")
        source_params["ease"] = {"lambda": _ease_lambda(state, val)}
    untuned = PipelineParams.untuned(SERVED_SOURCES)
    params = PipelineParams(untuned.weights, source_params=source_params)
    pipeline = Pipeline(state, params, settings, models=models)
    users = np.arange(len(val.test_users))
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(len(users), max_users, replace=False))
    sub_rows = val.test_users[users]
    say(f"pipeline: candidates of {len(users):,} validation users")
    strategy = settings.strategy if settings.strategy in ("ranked", "hybrid") else "hybrid"
    cands = _Candidates(pipeline, val, sub_rows, strategy)
    weights: dict[str, dict[str, float]] = {}
    scores: dict[str, float] = {}
    for view in VIEWS:
        say(f"pipeline: tuning blend weights ({view})")
        truth_all = view_truth(val, view)
        truth = [truth_all[i] for i in users.tolist()]
        seen = _seen_mask(cands.rows, val, sub_rows) if view == "new-only" else cands.rows < 0
        tuned, scores[view] = _ascend(cands, truth, seen)
        weights[view] = {n: UNMEASURED_WEIGHT for n in SERVED_SOURCES} | tuned
    return PipelineParams(
        weights,
        source_params=source_params,
        provenance={
            "tuned": True,
            "validation": {
                "train_end": f"{val.train_end:%Y-%m-%d %H:%M:%S}",
                "test_end": f"{val.test_end:%Y-%m-%d %H:%M:%S}",
                "users": len(users),
            },
            "validation_ndcg_at_20": {v: round(s, 6) for v, s in scores.items()},
            "measured": list(cands.names),
            "unmeasured": [n for n in SERVED_SOURCES if n not in cands.names],
            "training_dataset": dataset_id(lines),
        },
    )


def _ease_lambda(state: OnlineState, val: Split) -> float:
    """The λ whose EASE alone has the best mean NDCG@20 over both views of the window."""
    from flywheel.recsys._metrics import evaluate_view

    best: tuple[float, float] | None = None
    for lam in EASE_LAMBDAS:
        model = state.ease(lam)
        assert model is not None
        score = sum(evaluate_view(model.score, val, view).ndcg for view in VIEWS) / len(VIEWS)
        if best is None or score > best[0] + 1e-12:
            best = (score, lam)
        state.drop_ease(keep=None)
    assert best is not None
    return best[1]


def _seen_mask(rows: np.ndarray, split: Split, user_rows: np.ndarray) -> np.ndarray:
    """True where a candidate is an item the user bought before the window (new-only view)."""
    seen = np.zeros(rows.shape, dtype=bool)
    for u, r in enumerate(user_rows.tolist()):
        bought = split.train.X[r].indices
        seen[u] = np.isin(rows[u], bought)
    return seen


def tuned_view(params: PipelineParams, view: View) -> dict[str, float]:
    """The non-zero weights of ``view`` (for reports)."""
    return {n: w for n, w in params.weights[view].items() if w > 0}


def train_pipeline(
    project: Project,
    settings: RecsysSettings | None = None,
    *,
    model: str = DEFAULT_MODEL,
    progress: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> PipelineParams:
    """Tune the pipeline on the project's last ingest (``tune_pipeline``) and register it as a
    version of ``model``, which every recommender process of the project then serves.
    ``settings``: default, the project's ``recsys:`` section."""
    from flywheel.recsys._ingest import load_purchases
    from flywheel.recsys._pipeline import settings_for

    settings = settings or settings_for(project)
    params = tune_pipeline(load_purchases(project), settings, progress=progress, **kwargs)
    version = register_pipeline(project, params, model=model)
    return replace(params, version=version)
