"""Offline evaluation: one OR-T1 table for every candidate generator, their union, the hybrid
blend and the baselines, with every hyper-parameter chosen on the validation split.

``evaluate_offline(lines, ...)`` does, for each view (``all``, ``new-only``):

1. carve a validation split out of the training period (``validation_split``);
2. for each generator, try a small grid of its parameters on validation and keep the best
   NDCG@20; refit that on the full training period and measure it on the test window;
3. tune the hybrid blend weights on validation (``tune_blend_weights``) over the generators
   with their chosen parameters, then refit and measure;
4. baselines: MostPop, RepeatFreq, ItemKNN (as BASELINES.md), EASE with λ chosen on validation,
   and iALS with the reference parameters (not tuned).

The test window is read only to measure. ``EvaluationReport.format_table()`` prints the table;
``to_dict()`` is its JSON form.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._baselines import (
    EASE,
    IALS,
    MAX_DENSE_ITEMS,
    ItemKNN,
    MostPopular,
    Recommender,
    RepeatFrequency,
)
from flywheel.recsys._candidates import (
    CandidateGenerator,
    CandidateUnion,
    ContentSimilarity,
    CoOccurrence,
    HybridBlend,
    Popularity,
    RepeatPurchase,
    tune_blend_weights,
)
from flywheel.recsys._metrics import VIEWS, View, ViewMetrics, evaluate_view, rank_users
from flywheel.recsys._protocol import OR_T1_TRAIN_END, Split, build_split, validation_split
from flywheel.recsys._text import TextEmbedder, TextMethod

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.recsys._data import DataSource

Progress = Callable[[str], None]
"""Called with a short description before each step (the CLI turns it into a progress bar)."""

EASE_LAMBDAS: tuple[float, ...] = (100.0, 250.0, 500.0, 1000.0, 2000.0)
RANKED_ROW = "ranked (LightGBM)"
POOL_PER_GENERATOR = 50

# Parameter grids tried on validation, per generator (small on purpose: 2 cores).
GeneratorFactory = Callable[[dict[str, Any]], CandidateGenerator]


@dataclass
class EvaluationRow:
    """One model's metrics per view, with the parameters it ran with in that view."""

    name: str
    kind: str  # "generator", "union", "hybrid", "ranked" or "baseline"
    metrics: dict[View, ViewMetrics]
    params: dict[View, dict[str, Any]]
    seconds: float = 0.0
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "metrics": {v: m.to_dict() for v, m in self.metrics.items()},
            "params": self.params,
            "seconds": round(self.seconds, 2),
            "note": self.note,
        }


@dataclass
class EvaluationReport:
    """The OR-T1 table plus what it ran on (data source, dates, split sizes, timings)."""

    source: str
    real_data: bool
    k: int
    train_end: str
    test_end: str
    validation: dict[str, str]
    stats: dict[str, int]
    rows: list[EvaluationRow] = field(default_factory=list)
    pool_recall: dict[str, dict[str, float]] = field(default_factory=dict)
    text_method: str = ""
    seconds: float = 0.0

    def row(self, name: str) -> EvaluationRow:
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(name)

    def best_baseline(self, view: View, metric: str = "ndcg") -> EvaluationRow:
        """The baseline with the highest ``metric`` in ``view``."""
        rows = [r for r in self.rows if r.kind == "baseline" and view in r.metrics]
        return max(rows, key=lambda r: getattr(r.metrics[view], metric))

    def to_dict(self) -> dict[str, Any]:
        return {
            "protocol": "OR-T1",
            "source": self.source,
            "real_data": self.real_data,
            "k": self.k,
            "train_end": self.train_end,
            "test_end": self.test_end,
            "validation": self.validation,
            "stats": self.stats,
            "text_method": self.text_method,
            "rows": [r.to_dict() for r in self.rows],
            "candidate_pool_recall": self.pool_recall,
            "seconds": round(self.seconds, 1),
        }

    def format_table(self) -> str:
        """A Markdown table: one row per model, R/N/HR@k for both views, then notes."""
        k = self.k
        head = (
            f"| model | kind | R@{k} all | N@{k} all | HR@{k} all "
            f"| R@{k} new-only | N@{k} new-only | HR@{k} new-only |"
        )
        lines = [head, "|---|---|---|---|---|---|---|---|"]
        for r in self.rows:
            cells = []
            for view in VIEWS:
                m = r.metrics.get(view)
                if m is None:
                    cells += ["–", "–", "–"]
                else:
                    cells += [f"{m.recall:.4f}", f"{m.ndcg:.4f}", f"{m.hit_rate:.4f}"]
            lines.append(f"| {r.name} | {r.kind} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def format_notes(self) -> str:
        """Parameters chosen on validation, the candidate pool recall, and the hybrid's gap."""
        out = []
        for r in self.rows:
            chosen = "; ".join(f"{v}: {_short(p)}" for v, p in r.params.items() if p)
            extra = f" ({r.note})" if r.note else ""
            if chosen or extra:
                out.append(f"- {r.name}: {chosen}{extra}")
        if self.pool_recall:
            for view, per in self.pool_recall.items():
                parts = ", ".join(f"{n} {v:.4f}" for n, v in per.items())
                out.append(
                    f"- candidate pool recall ({view}, top {POOL_PER_GENERATOR} per generator): "
                    + parts
                )
        for name in ("served pipeline", "hybrid", RANKED_ROW):
            try:
                row = self.row(name)
            except KeyError:
                continue
            for view in VIEWS:
                if view not in row.metrics:
                    continue
                best = self.best_baseline(view)
                h, b = row.metrics[view], best.metrics[view]
                out.append(
                    f"- {name} vs best baseline on {view} ({best.name}): "
                    f"R@{self.k} {_rel(h.recall, b.recall)}, N@{self.k} {_rel(h.ndcg, b.ndcg)}"
                )
        return "\n".join(out)


def _rel(a: float, b: float) -> str:
    return f"{a:.4f} vs {b:.4f} ({(a / b - 1) * 100:+.1f}%)" if b > 0 else f"{a:.4f} vs 0"


def _short(params: dict[str, Any]) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:g}"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k}={fmt(x)}" for k, x in v.items() if x) + "}"
        return str(v)

    return ", ".join(f"{k}={fmt(v)}" for k, v in params.items())


@dataclass(frozen=True)
class _Family:
    """A generator kind and the parameter grid tried on validation."""

    name: str
    make: GeneratorFactory
    grid: tuple[dict[str, Any], ...]


# The two-tower's parameters for OR-T1, chosen on the validation window (2011-10-09 ->
# 2011-11-09) among 11 settings (epochs 1-6, log-Q 0 / 0.5 / 1, temperature 0.05-0.1, dim 32 /
# 64, batch 512 / 1024, history 20 / 50, id dropout 0.1 / 0.3, MiniLM / TF-IDF text): this one
# had the best NDCG@20 in both views. One setting only, because each fit takes minutes.
TWO_TOWER_OR_T1: dict[str, Any] = {
    "epochs": 6,
    "history_len": 50,
    "id_dropout": 0.1,
    "temperature": 0.1,
    "text": "tfidf",
}


def generator_families(
    embedders: Sequence[TextEmbedder], *, two_tower: dict[Any, Any] | None = None
) -> list[_Family]:
    """The generators of the table and their validation grids.

    ``content`` is tried with each embedder (e.g. MiniLM and TF-IDF): the text method is a
    hyper-parameter like the others, chosen on validation. ``two_tower`` (a cache dict shared
    by the calls of one evaluation) adds the two-tower model, trained in-process.
    """
    by_method = {e.method_used or e.method: e for e in embedders}
    extra: list[_Family] = []
    if two_tower is not None:
        cache = two_tower

        def make_two_tower(p: dict[str, Any]) -> CandidateGenerator:
            from flywheel.recsys._two_tower import TwoTower, TwoTowerConfig

            text = by_method.get(p["text"]) or next(iter(by_method.values()), None)
            return TwoTower(TwoTowerConfig(**p), embedder=text, cache=cache)

        extra.append(_Family("two-tower", make_two_tower, (dict(TWO_TOWER_OR_T1),)))
    return [
        _Family(
            "repeat",
            lambda p: RepeatPurchase(**p),
            tuple({"half_life_days": h} for h in (None, 30.0, 120.0, 365.0)),
        ),
        _Family(
            "co-occurrence",
            lambda p: CoOccurrence(**p),
            tuple(
                {"half_life_days": h, "alpha": 0.5, "basket": b}
                for h in (30.0, 90.0)
                for b in ("invoice", "session")
            ),
        ),
        _Family(
            "popularity",
            lambda p: Popularity(**p),
            ({"half_life_days": None},),
        ),
        _Family(
            "trending",
            lambda p: Popularity(**p),
            tuple({"half_life_days": h} for h in (3.0, 7.0, 14.0, 30.0)),
        ),
        _Family(
            "content",
            lambda p: ContentSimilarity(
                embedder=by_method[p["text"]], half_life_days=p["half_life_days"]
            ),
            tuple({"text": m, "half_life_days": h} for m in by_method for h in (None, 30.0, 90.0)),
        ),
        *extra,
    ]


def _measure(model: Recommender | CandidateGenerator, split: Split, view: View) -> ViewMetrics:
    return evaluate_view(model.score, split, view)


def evaluate_offline(
    lines: pd.DataFrame,
    *,
    source: DataSource | None = None,
    train_end: str | pd.Timestamp = OR_T1_TRAIN_END,
    test_end: str | pd.Timestamp | None = None,
    text_method: TextMethod = "auto",
    cache_dir: str | Path | None = None,
    baselines: bool = True,
    ials: bool = True,
    ranker: bool = True,
    two_tower: bool = False,
    served: bool = True,
    generators: bool = True,
    progress: Progress | None = None,
) -> EvaluationReport:
    """Run the whole OR-T1 comparison on cleaned lines (``clean_transactions`` output).

    ``two_tower`` adds the two-tower model as a generator (trained in-process, one process:
    about 2-3 minutes per fit on Online Retail, fitted once on validation and once on train).

    ``ranker`` adds the ranked pipeline (``ranked (LightGBM)``): the generators' union re-ranked
    by the LambdaRank model, trained and early-stopped on cut-offs before ``train_end`` only.

    ``served`` adds the headline row, ``served pipeline``: the ``Pipeline`` that
    ``GET /recommendations`` runs, deployed as of ``train_end`` and replayed on the test users
    (``evaluate_served``). ``generators=False`` leaves out the offline lab's rows (each
    generator, their union, the hybrid; ``ranker`` then too): the served row and the baselines.
    """
    started = time.perf_counter()
    say = progress or (lambda _msg: None)
    say("splitting train / validation / test")
    split = build_split(lines, train_end, test_end)
    val = validation_split(lines, split.train_end, split.test_end)
    texts = [str(t) for t in val.train.item_text] + [str(t) for t in split.train.item_text]
    embedders: list[TextEmbedder] = []
    # "auto": MiniLM when it loads, and TF-IDF too; validation picks per view.
    for method in ("minilm", "tfidf") if text_method == "auto" else (text_method,):
        say(f"embedding product texts ({method})")
        embedder = TextEmbedder("auto" if method == "minilm" else method, cache_dir=cache_dir)
        embedder.prepare(texts)
        if embedder.method_used not in {e.method_used for e in embedders}:
            embedders.append(embedder)
    report = EvaluationReport(
        source=source.description if source else "a data frame",
        real_data=source.is_real if source else False,
        k=20,
        train_end=f"{split.train_end:%Y-%m-%d %H:%M:%S}",
        test_end=f"{split.test_end:%Y-%m-%d %H:%M:%S}",
        validation={
            "train_end": f"{val.train_end:%Y-%m-%d %H:%M:%S}",
            "test_end": f"{val.test_end:%Y-%m-%d %H:%M:%S}",
            "test_users": str(len(val.test_users)),
        },
        stats=split.stats,
        text_method=" + ".join(e.method_used for e in embedders),
    )

    if served:
        report.rows.append(_served_row(lines, split, text_method, say))

    if not generators:
        if baselines:
            _run_baselines(report, split, val, ials, say)
        report.seconds = time.perf_counter() - started
        return report

    # 1-2. Each generator alone, parameters chosen per view on validation.
    chosen: dict[str, dict[View, dict[str, Any]]] = {}
    tt_cache: dict[Any, Any] | None = {} if two_tower else None
    for fam in generator_families(embedders, two_tower=tt_cache):
        t0 = time.perf_counter()
        say(f"generator {fam.name}: tuning on validation")
        best: dict[View, tuple[float, dict[str, Any]]] = {}
        for params in fam.grid:
            model = fam.make(params).fit(val.train)
            for view in VIEWS:
                score = _measure(model, val, view).ndcg
                if view not in best or score > best[view][0] + 1e-12:
                    best[view] = (score, params)
        chosen[fam.name] = {v: best[v][1] for v in VIEWS}
        say(f"generator {fam.name}: test")
        metrics: dict[View, ViewMetrics] = {}
        fitted: dict[str, CandidateGenerator] = {}
        for view in VIEWS:
            params = chosen[fam.name][view]
            key = repr(sorted(params.items()))
            if key not in fitted:
                fitted[key] = fam.make(params).fit(split.train)
            metrics[view] = _measure(fitted[key], split, view)
        report.rows.append(
            EvaluationRow(
                fam.name,
                "generator",
                metrics,
                {v: dict(p) for v, p in chosen[fam.name].items()},
                time.perf_counter() - t0,
            )
        )

    families = {f.name: f for f in generator_families(embedders, two_tower=tt_cache)}

    def build(view: View) -> list[CandidateGenerator]:
        return [families[n].make(chosen[n][view]) for n in families]

    # 3. Union (reciprocal-rank fusion) and the hybrid blend.
    t0 = time.perf_counter()
    say("union of the generators: test")
    union_metrics: dict[View, ViewMetrics] = {}
    pool: dict[str, dict[str, float]] = {}
    for view in VIEWS:
        union = CandidateUnion(build(view), per_generator=POOL_PER_GENERATOR).fit(split.train)
        union_metrics[view] = _measure(union, split, view)
        pool[view] = _pool_recall(union, split, view)
    report.pool_recall = pool
    report.rows.append(
        EvaluationRow(
            "union (RRF)",
            "union",
            union_metrics,
            {v: {"per_generator": POOL_PER_GENERATOR} for v in VIEWS},
            time.perf_counter() - t0,
            note="reciprocal-rank fusion of every generator's top 50",
        )
    )
    t0 = time.perf_counter()
    hybrid_metrics: dict[View, ViewMetrics] = {}
    hybrid_params: dict[View, dict[str, Any]] = {}
    for view in VIEWS:
        say(f"hybrid: tuning blend weights on validation ({view})")
        gens = [g.fit(val.train) for g in build(view)]
        weights, _ = tune_blend_weights(gens, val, view)
        say(f"hybrid: test ({view})")
        hybrid = HybridBlend(build(view), weights).fit(split.train)
        hybrid_metrics[view] = _measure(hybrid, split, view)
        hybrid_params[view] = {"weights": {n: w for n, w in weights.items() if w > 0}}
    report.rows.append(
        EvaluationRow(
            "hybrid",
            "hybrid",
            hybrid_metrics,
            hybrid_params,
            time.perf_counter() - t0,
            note="weighted sum of max-normalised generator scores",
        )
    )

    # 4. The ranked pipeline (candidate union re-ranked by the LightGBM ranker).
    if ranker:
        report.rows.append(_ranked_row(lines, split, say))

    # 5. Baselines.
    if baselines:
        _run_baselines(report, split, val, ials, say)
    report.seconds = time.perf_counter() - started
    return report


def _served_row(
    lines: pd.DataFrame, split: Split, text_method: TextMethod, say: Progress
) -> EvaluationRow:
    """The served pipeline, replayed (``flywheel.recsys._replay``)."""
    from flywheel.recsys._replay import SERVED_ROW, evaluate_served, replay_settings

    out = evaluate_served(lines, split, settings=replay_settings(text_method), progress=say)
    p = out.params
    return EvaluationRow(
        SERVED_ROW,
        "served",
        dict(out.metrics),
        {
            v: (
                {"blend": "learned (LambdaRank)"}
                if v in p["learned"]
                else {"blend": "linear", "weights": p["weights"][v]}
            )
            | {"diversity": p["diversity"], "ease_lambda": p["ease_lambda"]}
            for v in VIEWS
        },
        out.seconds,
        note="GET /recommendations' Pipeline replayed at the cut-off (blend, EASE's λ and "
        "diversity chosen on the months before it; no two-tower or recs-ranker registered)",
    )


def _pool_recall(union: CandidateUnion, split: Split, view: View) -> dict[str, float]:
    """Share of the ground truth inside each generator's top-N, and inside their union."""
    n = POOL_PER_GENERATOR
    out: dict[str, float] = {}
    for g in union.generators:
        out[g.name] = _recall_of_pool(g.score, split, view, n)
    total = n * len(union.generators)
    out["union"] = _recall_of_pool(union.score, split, view, total)
    return out


def _recall_of_pool(
    score: Callable[[np.ndarray], np.ndarray], split: Split, view: View, size: int
) -> float:
    rankings, truth = rank_users(score, split, view, k=size)
    values = [np.isin(t, r[r >= 0]).mean() for r, t in zip(rankings, truth, strict=True) if len(t)]
    return float(np.mean(values)) if values else 0.0


def _ranked_row(lines: pd.DataFrame, split: Split, say: Progress) -> EvaluationRow:
    """The union of the generators re-ranked by the LambdaRank ranker (``flywheel.recsys.
    _ranker``): trained on cut-offs before ``split.train_end`` with a validation cut-off for
    early stopping (never the test window), then applied at ``train_end`` to the test users.
    Feature-store columns come from the same snapshot functions ``ingest`` writes."""
    import pandas as pd

    from flywheel.recsys._errors import RecsysError
    from flywheel.recsys._ranker import (
        RankerConfig,
        _item_frame,
        build_ranker_frame,
        ranker_cutoffs,
        ranker_matrix,
        store_columns,
    )
    from flywheel.recsys._ranker_train import fit_ranker

    t0 = time.perf_counter()
    config = RankerConfig()
    end = split.train_end
    before = lines.loc[lines["InvoiceDate"] < end]
    try:
        cuts, valid = ranker_cutoffs(end, config)
        if cuts[0] <= before["InvoiceDate"].min():
            raise RecsysError("the first ranker cut-off is before the data starts")
        say("ranker: training data from cut-offs before the test window")
        catalogue = _item_frame(before)
        frame, _ = build_ranker_frame(
            before, [*cuts, valid], config, catalogue=catalogue, progress=say
        )
        frame = _with_store_columns(before, frame, catalogue, store_columns)
        frame["split"] = np.where(
            frame["event_timestamp"] == pd.Timestamp(valid).tz_localize("UTC"), "valid", "train"
        )
        say("ranker: fitting LightGBM (early stopping on the validation cut-off)")
        fitted = fit_ranker(frame, config)
        say("ranker: test")
        users = split.train.users[split.test_users]
        test, _ = build_ranker_frame(
            before,
            [end],
            config,
            catalogue=catalogue,
            labelled_only=False,
            users={pd.Timestamp(end): users},
        )
        test = _with_store_columns(before, test, catalogue, store_columns)
    except RecsysError as exc:
        return EvaluationRow(RANKED_ROW, "ranked", {}, {}, note=f"skipped: {exc}")
    scores = fitted.predict(ranker_matrix(test))
    train = split.train
    user_rows = np.searchsorted(train.users, test["user_id"].to_numpy())
    item_rows = np.searchsorted(train.items, test["item_id"].astype(str).to_numpy())
    dense = np.full((train.n_users, train.n_items), -np.inf)
    dense[user_rows, item_rows] = scores

    def score(rows: np.ndarray) -> np.ndarray:
        return dense[rows]

    params = {
        "cutoffs": [f"{c:%Y-%m-%d}" for c in cuts],
        "validation_cutoff": f"{valid:%Y-%m-%d}",
        "best_iteration": fitted.best_iteration,
        "valid_ndcg": round(fitted.valid_ndcg, 4),
    }
    return EvaluationRow(
        RANKED_ROW,
        "ranked",
        {v: evaluate_view(score, split, v) for v in VIEWS},
        {v: dict(params) for v in VIEWS},
        time.perf_counter() - t0,
        note=f"LambdaRank over the union of each generator's top {config.per_generator}",
    )


def _with_store_columns(
    lines: pd.DataFrame, frame: pd.DataFrame, catalogue: pd.DataFrame, columns: Any
) -> pd.DataFrame:
    extra = columns(lines, frame, catalogue=catalogue)
    for c in extra.columns:
        if c not in frame.columns:
            frame[c] = extra[c].to_numpy()
    return frame


def _run_baselines(
    report: EvaluationReport, split: Split, val: Split, ials: bool, say: Progress
) -> None:
    simple: Sequence[Recommender] = (MostPopular(), RepeatFrequency(), ItemKNN())
    metrics: dict[View, ViewMetrics]
    dense_ok = split.train.n_items <= MAX_DENSE_ITEMS
    for model in simple:
        t0 = time.perf_counter()
        if isinstance(model, ItemKNN) and not dense_ok:
            report.rows.append(_skipped(model.name, split.train.n_items))
            continue
        say(f"baseline {model.name}")
        model.fit(split.train)
        metrics = {v: _measure(model, split, v) for v in VIEWS}
        report.rows.append(
            EvaluationRow(model.name, "baseline", metrics, {}, time.perf_counter() - t0)
        )
    if dense_ok:
        t0 = time.perf_counter()
        best: dict[View, tuple[float, float]] = {}
        for lam in EASE_LAMBDAS:
            say(f"baseline EASE: λ={lam:g} on validation")
            model_v = EASE(lam).fit(val.train)
            for view in VIEWS:
                s = _measure(model_v, val, view).ndcg
                if view not in best or s > best[view][0] + 1e-12:
                    best[view] = (s, lam)
        metrics = {}
        fitted: dict[float, EASE] = {}
        for view in VIEWS:
            lam = best[view][1]
            say(f"baseline EASE: λ={lam:g} on test")
            if lam not in fitted:
                fitted[lam] = EASE(lam).fit(split.train)
            metrics[view] = _measure(fitted[lam], split, view)
        report.rows.append(
            EvaluationRow(
                "EASE (λ tuned)",
                "baseline",
                metrics,
                {v: {"lambda": best[v][1]} for v in VIEWS},
                time.perf_counter() - t0,
            )
        )
    else:
        report.rows.append(_skipped("EASE (λ tuned)", split.train.n_items))
    if ials:
        t0 = time.perf_counter()
        say("baseline iALS")
        model = IALS().fit(split.train)
        metrics = {v: _measure(model, split, v) for v in VIEWS}
        report.rows.append(
            EvaluationRow(
                model.name,
                "baseline",
                metrics,
                {v: {} for v in VIEWS},
                time.perf_counter() - t0,
                note="BASELINES.md parameters, not tuned; ±0.005 between runs",
            )
        )


def _skipped(name: str, n_items: int) -> EvaluationRow:
    return EvaluationRow(
        name,
        "baseline",
        {},
        {},
        note=f"skipped: {n_items:,} items exceed the dense limit of {MAX_DENSE_ITEMS:,}",
    )
