"""The served pipeline's parameters: validation of what is registered, and the round trip."""

from __future__ import annotations

import pytest

from flywheel.project import Project
from flywheel.recsys import PipelineParams, RecsysError, load_pipeline, register_pipeline


def test_params_refuse_bad_weights_naming_the_field() -> None:
    with pytest.raises(RecsysError, match=r"weights\.all\.repeat: must be >= 0"):
        PipelineParams({"all": {"repeat": -1.0}, "new-only": {}})
    with pytest.raises(RecsysError, match="view 'new-only'"):
        PipelineParams({"all": {"repeat": 1.0}})
    with pytest.raises(RecsysError, match="unknown format"):
        PipelineParams.from_dict({"format": 99, "weights": {}})


def test_registered_params_are_what_the_server_reads(project: Project) -> None:
    assert load_pipeline(project) is None  # nothing registered: the recommender uses untuned
    params = PipelineParams(
        {"all": {"repeat": 1.0, "trending": 0.25}, "new-only": {"repeat": 0.0, "trending": 2.0}},
        provenance={"tuned": True, "training_dataset": "recs-purchases:abc"},
    )
    version = register_pipeline(project, params)
    loaded = load_pipeline(project)
    assert loaded is not None and loaded.version == version == "recs-pipeline/1"
    assert loaded.weights == params.weights and loaded.weights_for(True)["trending"] == 2.0
    assert loaded.provenance["training_dataset"] == "recs-purchases:abc"
