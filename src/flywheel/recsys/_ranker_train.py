"""Training the LightGBM LambdaRank ranker: ``fit_ranker`` (in process) and the scheduled job.

``fit_ranker(frame, config)`` trains ``lightgbm.LGBMRanker(objective="lambdarank")`` on the
queries with ``split == "train"`` and stops early on NDCG@20 of the ``split == "valid"``
queries. Features are ``ranker_matrix(frame)`` — the same function the request path uses.

``main()`` is the entrypoint of ``ranker_job_spec`` (one process, run by ``flywheel.training``):
it reads the job's training dataset (``write_ranker_dataset``), fits, logs the NDCG@20 curve and
the best validation NDCG@20 to the job's tracking run, and registers the model (flavor
``lightgbm``, one float32 input ``features`` of shape (-1, len(RANKER_FEATURES)), output
``scores``) with lineage ``training_dataset -> run -> model_version``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._errors import RecsysError
from flywheel.recsys._ranker import (
    RANKER_FEATURES,
    RankerConfig,
    ranker_matrix,
    ranker_missing_values,
)

if TYPE_CHECKING:
    import pandas as pd

NDCG_AT = 20


@dataclass
class FittedRanker:
    """A trained ranker and how it trained."""

    model: Any  # lightgbm.LGBMRanker
    best_iteration: int
    valid_ndcg: float
    curve: list[float]  # validation NDCG@20 per boosting round
    train_queries: int
    valid_queries: int
    rows: int

    def predict(self, features: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.booster_.predict(features), dtype=np.float64)


def _groups(query: np.ndarray) -> np.ndarray:
    """Sizes of the runs of equal ``query`` values (queries must be contiguous)."""
    if not len(query):
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    if len(np.unique(query)) != len(starts):
        raise RecsysError("ranker: the rows of each query must be contiguous")
    return np.diff(np.r_[starts, len(query)])


def fit_ranker(frame: pd.DataFrame, config: RankerConfig | None = None) -> FittedRanker:
    """Train on ``frame``'s ``split == "train"`` queries, early-stop on ``"valid"`` ones."""
    import lightgbm as lgb

    config = config or RankerConfig()
    missing = [c for c in ("query", "label", "split") if c not in frame.columns]
    if missing:
        raise RecsysError(f"ranker: the training frame lacks columns {missing}")
    frame = frame.sort_values(["query"], kind="stable")
    parts = {}
    for split in ("train", "valid"):
        part = frame.loc[frame["split"] == split]
        if part.empty:
            raise RecsysError(f"ranker: no {split} queries in the training data")
        parts[split] = (
            ranker_matrix(part),
            part["label"].to_numpy(dtype=np.int32),
            _groups(part["query"].to_numpy()),
        )
    params = config.lgbm_params()
    stop = int(params.pop("early_stopping_rounds"))
    model = lgb.LGBMRanker(
        objective="lambdarank",
        random_state=config.seed,
        n_jobs=1,
        verbose=-1,
        deterministic=True,
        force_row_wise=True,
        **params,
    )
    x, y, g = parts["train"]
    vx, vy, vg = parts["valid"]
    model.fit(
        x,
        y,
        group=g,
        eval_X=(vx,),
        eval_y=(vy,),
        eval_group=[vg],
        eval_at=[NDCG_AT],
        callbacks=[lgb.early_stopping(stop, verbose=False)],
    )
    curve = [float(v) for v in model.evals_result_["valid_0"][f"ndcg@{NDCG_AT}"]]
    best = int(model.best_iteration_ or len(curve))
    return FittedRanker(
        model=model,
        best_iteration=best,
        valid_ndcg=curve[best - 1] if curve else 0.0,
        curve=curve,
        train_queries=len(g),
        valid_queries=len(vg),
        rows=len(frame),
    )


def signature() -> dict[str, Any]:
    """The registered ranker's signature: ``features`` in, ``scores`` out."""
    return {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, len(RANKER_FEATURES)]}],
        "outputs": [{"name": "scores", "datatype": "FP64", "shape": [-1]}],
    }


def main() -> None:
    """The scheduled job: read the dataset, fit, log to tracking, register (one process)."""
    import pandas as pd

    from flywheel.training import runtime as rt

    ctx = rt.init(seed=0)
    if not ctx.dataset_files:
        raise SystemExit("ranker job: no training dataset (the spec's `dataset`)")
    config = RankerConfig.from_dict(ctx.hyperparameters)
    frame = pd.concat([pd.read_parquet(f) for f in ctx.dataset_files], ignore_index=True)
    rt.log(f"ranker: {len(frame):,} rows, {frame['query'].nunique():,} queries")
    fitted = fit_ranker(frame, config)
    for step, value in enumerate(fitted.curve, start=1):
        rt.log_metrics(step, valid_ndcg_at_20=value)
    rt.log(
        f"ranker: best iteration {fitted.best_iteration}, validation NDCG@{NDCG_AT} "
        f"{fitted.valid_ndcg:.4f} ({fitted.train_queries:,} train / "
        f"{fitted.valid_queries:,} validation queries)"
    )
    valid = frame.loc[frame["split"] == "valid"]
    example = ranker_matrix(valid.head(8))
    mv = rt.register(
        fitted.model,
        flavor="lightgbm",
        input_example={"features": example},
        signature=signature(),
        metrics={
            "valid_ndcg_at_20": fitted.valid_ndcg,
            "best_iteration": float(fitted.best_iteration),
            "train_queries": float(fitted.train_queries),
            "valid_queries": float(fitted.valid_queries),
        },
        # missing_values: how ranker_matrix fills a missing input, so that serving's drift
        # compares the training data transformed the same way (#17 item 8).
        config={
            "feature_names": list(RANKER_FEATURES),
            "missing_values": ranker_missing_values(),
        },
        description="LightGBM LambdaRank over the recommender's candidates",
    )
    if mv is not None:
        rt.log(f"registered models:/{mv.name}/{mv.version}")
    rt.shutdown()


if __name__ == "__main__":
    main()
