"""Choosing the served pipeline's parameters on a validation window (``tune_pipeline``).

The window is the last ``window_days`` of the purchases given (nothing after them is read):
the sources are fitted on what came before it, exactly as ``OnlineState`` fits them after an
ingest; each sampled validation user asks the served ``Pipeline`` for its sources' candidates
with the features a freshly ingested store holds (no live events), as a request of each view
would (``new_only``: deeper sources, purchases filtered out). The users are split in two
(``HOLDOUT_SHARE`` held out); then, per view:

1. EASE's λ (its NDCG@20 alone in the new-only view, on all the window's users);
2. the linear blend: coordinate ascent over ``WEIGHT_GRID`` on the fitting users (the source
   best alone gets weight 1, it sets the scale);
3. the learned blend (``flywheel.recsys._learned``): LambdaRank on the fitting users plus every
   user of the ``windows - 1`` windows before (each with its sources fitted before it),
   early-stopped on the held-out ones;
4. on the held-out users, the learned blend is kept only when its NDCG@20 beats both the linear
   blend and the best single source (so the served blend is never worse, on validation, than
   its best source alone);
5. the re-rank's MMR diversity (``DIVERSITY_GRID``, 0 included) with the blend chosen, on the
   held-out users (the smallest diversity among equals).

Sources that only live events feed (``session``, ``category``, ``similar``) and a two-tower
that is not loaded propose nothing on a purchase log's cut-off; they get ``UNMEASURED_WEIGHT``
in the linear blend and no weight in the learned one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._errors import RecsysError
from flywheel.recsys._learned import BLEND_FEATURES, BlendModel, candidate_features, fit_blend
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
DIVERSITY_GRID: tuple[float, ...] = (0.0, 0.05, 0.1, 0.15, 0.25)  # 0.15: the untuned value
HOLDOUT_SHARE = 0.25  # validation users held out of fitting (early stopping, choices)
LEARNED_WINDOWS = 2  # windows the learned blend trains on (measured on validation: 1 vs 2, 3)
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


@dataclass
class _Query:
    """One validation user's request in one view: candidates (ascending rows, filtered as the
    pipeline filters them), the sources' hits and the user's purchases in the window."""

    rows: np.ndarray
    gens: dict[str, tuple[np.ndarray, np.ndarray]]
    truth: np.ndarray


def _collect(pipeline: Pipeline, split: Split, user_rows: np.ndarray, view: View) -> list[_Query]:
    """Each user's candidates as ``Pipeline.run`` gathers them for a request of ``view``."""
    from flywheel.recsys._pipeline import NEW_ONLY_EXTRA_MAX

    st = pipeline.state
    new_only = view == "new-only"
    strategy = pipeline.settings.strategy
    strategy = strategy if strategy in ("ranked", "hybrid") else "hybrid"
    truth_all = view_truth(split, view)
    n = max(pipeline.settings.per_generator, K)
    out: list[_Query] = []
    for i in user_rows.tolist():
        user_id = int(split.train.users[split.test_users[i]])
        request = PipelineRequest(user_id, k=K, strategy=strategy, new_only=new_only)
        exclude = pipeline.excluded(request)
        depth = n + min(len(exclude), NEW_ONLY_EXTRA_MAX) if new_only else n
        gens = pipeline.candidates(
            request, pipeline.request_context(request, UserContext()), [], depth
        )
        rows = sorted({r for g in gens.values() for r in g[0].tolist()})
        keep = [r for r in rows if r not in exclude and for_sale(st.item_ids[r])]
        out.append(_Query(np.asarray(keep, dtype=np.int64), gens, truth_all[i]))
    return out


class _Candidates:
    """Per query: candidate rows (ascending), each source's normalised score (dense)."""

    def __init__(self, queries: Sequence[_Query]):
        self.names: list[str] = []
        for q in queries:
            for name in q.gens:
                if name not in self.names:
                    self.names.append(name)
        width = max((len(q.rows) for q in queries), default=0)
        self.rows = np.full((len(queries), max(width, 1)), -1, dtype=np.int64)
        self.scores = np.zeros((len(self.names), len(queries), max(width, 1)))
        for u, q in enumerate(queries):
            rows = q.rows
            self.rows[u, : len(rows)] = rows
            if not len(rows):
                continue
            for name, (r, v) in q.gens.items():
                pos = np.searchsorted(rows, r)
                ok = (pos < len(rows)) & (rows[np.minimum(pos, len(rows) - 1)] == r)
                col = np.zeros(len(rows))
                col[pos[ok]] = v[ok] / (float(v[0]) or 1.0)
                self.scores[self.names.index(name), u, : len(rows)] = col

    def ranking(self, weights: dict[str, float]) -> np.ndarray:
        """Each query's top ``K`` rows under the linear blend ``weights`` (-1 padded)."""
        total = np.zeros(self.rows.shape)
        proposed = np.zeros(self.rows.shape, dtype=bool)
        for i, name in enumerate(self.names):
            w = weights.get(name, 0.0)
            if w > 0:
                total += w * self.scores[i]
                proposed |= self.scores[i] > 0
        total = np.where(proposed & (self.rows >= 0), total, -np.inf)
        order = np.argsort(-total, axis=1, kind="stable")[:, :K]  # ties: lower row first
        ranked = np.take_along_axis(self.rows, order, 1)
        return np.where(np.isfinite(np.take_along_axis(total, order, 1)), ranked, -1)

    def ndcg(self, weights: dict[str, float], truth: Sequence[np.ndarray]) -> float:
        return metrics_from_rankings(self.ranking(weights), truth, K).ndcg


def _ascend(cands: _Candidates, truth: Sequence[np.ndarray]) -> tuple[dict[str, float], float]:
    names = cands.names
    if not names:
        return {}, 0.0
    alone = {n: cands.ndcg({n: 1.0}, truth) for n in names}
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
                score = cands.ndcg(trial, truth)
                if score > best + 1e-9:
                    best, weights, changed = score, trial, True
        if not changed:
            break
    return weights, best


def _features(
    state: OnlineState, split: Split, queries: Sequence[_Query], users: np.ndarray
) -> list[np.ndarray | None]:
    """Per query: ``candidate_features`` of its rows (None when it has no candidate)."""
    out: list[np.ndarray | None] = []
    for q, i in zip(queries, users.tolist(), strict=True):
        if not len(q.rows):
            out.append(None)
            continue
        user_row = int(split.test_users[i])
        out.append(candidate_features(state, user_row, q.gens, q.rows))
    return out


def _lgb_data(
    queries: Sequence[_Query], feats: Sequence[np.ndarray | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, labels, group sizes) of the queries with at least one bought candidate."""
    xs, ys, gs = [], [], []
    for q, x in zip(queries, feats, strict=True):
        if x is None:
            continue
        y = np.isin(q.rows, q.truth).astype(np.int32)
        if y.any():
            xs.append(x)
            ys.append(y)
            gs.append(len(y))
    if not xs:
        return np.empty((0, len(BLEND_FEATURES)), np.float32), np.empty(0, np.int32), np.empty(0)
    return np.concatenate(xs), np.concatenate(ys), np.asarray(gs, dtype=np.int64)


def _learned_ranking(
    model: BlendModel, queries: Sequence[_Query], feats: Sequence[np.ndarray | None]
) -> np.ndarray:
    """Each query's full order under ``model`` (ties: lower row first), -1 padded."""
    width = max((len(q.rows) for q in queries), default=1) or 1
    out = np.full((len(queries), width), -1, dtype=np.int64)
    for u, (q, x) in enumerate(zip(queries, feats, strict=True)):
        if x is None:
            continue
        order = np.lexsort((q.rows, -model.predict(x)))
        out[u, : len(order)] = q.rows[order]
    return out


def _full_linear_ranking(cands: _Candidates, weights: dict[str, float]) -> np.ndarray:
    total = np.zeros(cands.rows.shape)
    proposed = np.zeros(cands.rows.shape, dtype=bool)
    for i, name in enumerate(cands.names):
        w = weights.get(name, 0.0)
        if w > 0:
            total += w * cands.scores[i]
            proposed |= cands.scores[i] > 0
    total = np.where(proposed & (cands.rows >= 0), total, -np.inf)
    order = np.argsort(-total, axis=1, kind="stable")
    ranked = np.take_along_axis(cands.rows, order, 1)
    return np.where(np.isfinite(np.take_along_axis(total, order, 1)), ranked, -1)


def tune_pipeline(
    lines: pd.DataFrame,
    settings: RecsysSettings | None = None,
    *,
    models: ModelHandles | None = None,
    window_days: int = 30,
    max_users: int = 2_000,
    seed: int = 0,
    learned: bool = True,
    windows: int = LEARNED_WINDOWS,
    progress: Callable[[str], None] | None = None,
) -> PipelineParams:
    """The served pipeline's parameters, chosen on the last ``window_days`` of ``lines`` (see
    the module docstring). ``models``: a loaded two-tower joins the measured sources;
    ``learned=False``: the linear blend only; ``windows``: how many windows (the last, and
    those before it) the learned blend trains on."""
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
    rng = np.random.default_rng(seed)
    if len(users) > max_users:
        users = np.sort(rng.choice(len(users), max_users, replace=False))
    held = rng.random(len(users)) < HOLDOUT_SHARE
    if held.all() or not held.any():  # a tiny window: hold out every other user
        held = np.arange(len(users)) % 2 == 1
    weights: dict[str, dict[str, float]] = {}
    rankers: dict[str, str] = {}
    report: dict[str, dict[str, Any]] = {}
    measured: list[str] = []
    held_rankings: dict[str, tuple[np.ndarray, list[np.ndarray]]] = {}
    earlier = (
        _earlier_windows(lines, val, settings, params, windows - 1, window_days, max_users, say)
        if learned
        else {}
    )
    for view in VIEWS:
        say(f"pipeline: candidates of {len(users):,} validation users ({view})")
        queries = _collect(pipeline, val, users, view)
        fit_q = [q for q, h in zip(queries, held, strict=True) if not h]
        hold_q = [q for q, h in zip(queries, held, strict=True) if h]
        fit_truth = [q.truth for q in fit_q]
        hold_truth = [q.truth for q in hold_q]
        say(f"pipeline: tuning the linear blend ({view})")
        cands_fit = _Candidates(fit_q)
        tuned, _ = _ascend(cands_fit, fit_truth)
        measured += [n for n in cands_fit.names if n not in measured]
        weights[view] = {n: UNMEASURED_WEIGHT for n in SERVED_SOURCES} | tuned
        cands_hold = _Candidates(hold_q)
        scores = {f"source {n}": cands_hold.ndcg({n: 1.0}, hold_truth) for n in cands_hold.names}
        scores["linear blend"] = cands_hold.ndcg(weights[view], hold_truth)
        ranking = _full_linear_ranking(cands_hold, weights[view])
        chosen = "linear blend"
        if learned:
            say(f"pipeline: training the learned blend ({view})")
            fit_users, hold_users = users[~held], users[held]
            fit_x = _features(state, val, fit_q, fit_users)
            hold_x = _features(state, val, hold_q, hold_users)
            for more_q, more_x in earlier.get(view, []):
                fit_q, fit_x = fit_q + more_q, fit_x + more_x
            try:
                model = fit_blend(_lgb_data(fit_q, fit_x), _lgb_data(hold_q, hold_x), seed=seed)
            except RecsysError as exc:
                say(f"pipeline: no learned blend ({view}): {exc}")
            else:
                learned_rank = _learned_ranking(model, hold_q, hold_x)
                scores["learned blend"] = metrics_from_rankings(
                    learned_rank[:, :K], hold_truth, K
                ).ndcg
                others = max(v for k, v in scores.items() if k != "learned blend")
                if scores["learned blend"] > others + 1e-9:
                    rankers[view] = model.to_text()
                    ranking, chosen = learned_rank, "learned blend"
        held_rankings[view] = (ranking, hold_truth)
        report[view] = {
            "chosen": chosen,
            "held_out_ndcg_at_20": {k: round(v, 6) for k, v in scores.items()},
        }
    say("pipeline: choosing the re-rank's diversity on the held-out users")
    # One diversity for both views (the re-rank has one knob): the best mean NDCG@20.
    diversity = _diversity_both(pipeline, held_rankings)
    return PipelineParams(
        weights,
        source_params=source_params,
        rankers=rankers,
        diversity=diversity,
        provenance={
            "tuned": True,
            "validation": {
                "train_end": f"{val.train_end:%Y-%m-%d %H:%M:%S}",
                "test_end": f"{val.test_end:%Y-%m-%d %H:%M:%S}",
                "users": len(users),
                "held_out": int(held.sum()),
            },
            "views": report,
            "diversity_grid": list(DIVERSITY_GRID),
            "measured": measured,
            "unmeasured": [n for n in SERVED_SOURCES if n not in measured],
            "training_dataset": dataset_id(lines),
        },
    )


def _diversity_both(
    pipeline: Pipeline, held: dict[str, tuple[np.ndarray, list[np.ndarray]]]
) -> float:
    best: tuple[float, float] | None = None
    for d in DIVERSITY_GRID:
        total = 0.0
        for ranking, truth in held.values():
            pages = np.full((len(ranking), K), -1, dtype=np.int64)
            for u, row in enumerate(ranking):
                page = pipeline.diversify([int(r) for r in row if r >= 0], K, diversity=d)
                pages[u, : len(page)] = page
            total += metrics_from_rankings(pages, truth, K).ndcg
        if best is None or total > best[0] + 1e-9:
            best = (total, d)
    assert best is not None
    return best[1]


def _earlier_windows(
    lines: pd.DataFrame,
    latest: Split,
    settings: RecsysSettings,
    params: PipelineParams,
    n: int,
    window_days: int,
    max_users: int,
    say: Callable[[str], None],
) -> dict[str, list[tuple[list[_Query], list[np.ndarray | None]]]]:
    """Training queries of the learned blend from the ``n`` windows before ``latest`` (each
    with its sources fitted before it, as the latest window's are)."""
    out: dict[str, list[tuple[list[_Query], list[np.ndarray | None]]]] = {}
    end = latest.train_end
    for i in range(n):
        before = lines.loc[lines["InvoiceDate"] < end]
        try:
            val = validation_window(before, window_days)
        except RecsysError as exc:  # the data starts too late for another window
            say(f"pipeline: no earlier window {i + 1}: {exc}")
            break
        say(f"pipeline: earlier window {i + 1} ({val.train_end:%Y-%m-%d} -> {end:%Y-%m-%d})")
        state = state_for(val.train, settings)
        pipeline = Pipeline(state, params, settings)
        users = np.arange(len(val.test_users))
        if len(users) > max_users:
            rng = np.random.default_rng(i + 1)
            users = np.sort(rng.choice(len(users), max_users, replace=False))
        for view in VIEWS:
            queries = _collect(pipeline, val, users, view)
            out.setdefault(view, []).append((queries, _features(state, val, queries, users)))
        state.drop_ease(keep=None)
        end = val.train_end
    return out


def _ease_lambda(state: OnlineState, val: Split) -> float:
    """The λ whose EASE alone has the best NDCG@20 in the new-only view of the window (where
    EASE is the strongest source; in "all" the user's own items dominate)."""
    from flywheel.recsys._metrics import evaluate_view

    best: tuple[float, float] | None = None
    for lam in EASE_LAMBDAS:
        model = state.ease(lam)
        assert model is not None
        score = evaluate_view(model.score, val, "new-only").ndcg
        if best is None or score > best[0] + 1e-12:
            best = (score, lam)
        state.drop_ease(keep=None)
    assert best is not None
    return best[1]


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
