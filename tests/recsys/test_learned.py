"""The learned blend: its features, its tuning (never worse than a source alone on held-out
validation users) and the served pipeline ordering a page by it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from flywheel.recsys import PipelineParams, RecsysError
from flywheel.recsys._learned import BLEND_FEATURES, RANK_MISSING, BlendModel, candidate_features
from flywheel.recsys._pipeline import Pipeline, PipelineRequest, UserContext
from flywheel.recsys._replay import replay_settings
from flywheel.recsys._tune import DIVERSITY_GRID, state_for, tune_pipeline, validation_window


@pytest.fixture(scope="module")
def tuned(small_lines: pd.DataFrame) -> PipelineParams:
    return tune_pipeline(small_lines, replay_settings(), max_users=600)


@pytest.fixture(scope="module")
def pipeline(small_lines: pd.DataFrame, tuned: PipelineParams) -> Pipeline:
    settings = replay_settings()
    val = validation_window(small_lines, 30)
    return Pipeline(state_for(val.train, settings), tuned, settings)


def col(name: str) -> int:
    return BLEND_FEATURES.index(name)


def test_features_read_the_sources_and_the_history(pipeline: Pipeline) -> None:
    st = pipeline.state
    user_row = int(np.argmax(np.diff(st.train.C.indptr)))  # the user with the most items
    user_id = int(st.train.users[user_row])
    request = PipelineRequest(user_id, strategy="hybrid")
    gens = pipeline.candidates(request, pipeline.request_context(request, UserContext()), [])
    rows = np.unique(np.concatenate([g[0] for g in gens.values()]))
    x = candidate_features(st, user_row, gens, rows)
    assert x.shape == (len(rows), len(BLEND_FEATURES)) and x.dtype == np.float32
    bought = st.train.C[user_row]
    counts = dict(zip(bought.indices.tolist(), bought.data.tolist(), strict=True))
    for i, r in enumerate(rows.tolist()):
        assert x[i, col("repeat_count")] == counts.get(r, 0.0)
    trend_rows = gens["trending"][0].tolist()
    for i, r in enumerate(rows.tolist()):
        if r in trend_rows:
            assert x[i, col("trending_rank")] == trend_rows.index(r)
        else:
            assert x[i, col("trending_rank")] == RANK_MISSING
    assert (x[:, col("n_sources")] >= 1).all()


def test_tuning_never_serves_a_blend_worse_than_a_source_alone(tuned: PipelineParams) -> None:
    views = tuned.provenance["views"]
    assert set(views) == {"all", "new-only"}
    for view, rep in views.items():
        scores = rep["held_out_ndcg_at_20"]
        best_source = max(v for k, v in scores.items() if k.startswith("source "))
        assert scores[rep["chosen"]] >= best_source
        assert (view in tuned.rankers) == (rep["chosen"] == "learned blend")
    assert tuned.diversity in DIVERSITY_GRID
    assert tuned.source_params["ease"]["lambda"] > 0


def test_the_pipeline_orders_candidates_by_the_learned_blend(
    pipeline: Pipeline, tuned: PipelineParams
) -> None:
    # The seeded shop is deterministic and the learned blend wins there on validation; if a
    # change makes it lose, this test must say so rather than skip.
    assert tuned.rankers, "the learned blend did not win on this shop's validation users"
    view = sorted(tuned.rankers)[0]
    new_only = view == "new-only"
    model = BlendModel.from_text(tuned.rankers[view])
    st = pipeline.state
    for user_id in st.train.users[:25].tolist():
        request = PipelineRequest(int(user_id), new_only=new_only, strategy="hybrid")
        result = pipeline.run(request, UserContext())
        assert "repeat" not in result.sources or not new_only  # new-only never asks repeat
        rows = np.asarray(sorted(result.score), dtype=np.int64)
        gens = pipeline.candidates(
            request,
            pipeline.request_context(request, UserContext()),
            [],
            pipeline.settings.per_generator + len(result.exclude) if new_only else None,
        )
        want = model.predict(candidate_features(st, st.user_index[int(user_id)], gens, rows))
        got = np.asarray([result.score[r] for r in rows.tolist()])
        np.testing.assert_allclose(got, want)
        order = sorted(rows.tolist(), key=lambda r: (-result.score[r], r))
        assert result.ordered == order
        if new_only:
            assert not set(result.ordered) & set(st.purchased_rows(int(user_id)).tolist())


def test_params_carry_the_learned_blend_and_diversity(tuned: PipelineParams) -> None:
    back = PipelineParams.from_dict(tuned.to_dict())
    assert back.rankers == tuned.rankers and back.diversity == tuned.diversity
    with pytest.raises(RecsysError, match="diversity"):
        PipelineParams({"all": {}, "new-only": {}}, diversity=1.5)
    with pytest.raises(RecsysError, match=r"rankers\.best"):
        PipelineParams({"all": {}, "new-only": {}}, rankers={"best": "tree"})
