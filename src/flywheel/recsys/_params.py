"""The served pipeline's parameters, as registered model versions (``recs-pipeline``).

``PipelineParams`` holds the blend weights per view (``all``; ``new-only`` for requests with
``new_only``), the category boost, the learned blend per view (``rankers``: LightGBM
LambdaRank models as text, ``flywheel.recsys._learned``) and the re-rank's MMR diversity.
``tune_pipeline`` chooses them on a validation window; ``register_pipeline`` registers them as
a version of ``recs-pipeline`` (an sklearn ``LinearRegression`` whose coefficients are the
``all`` weights, with the whole parameter set — learned models included — and its provenance
in the version's config, and lineage to the purchases it was tuned on); ``load_pipeline``
reads the production version, else the newest.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._errors import RecsysError

if TYPE_CHECKING:
    from flywheel.project import Project

log = logging.getLogger(__name__)

CONFIG_KEY = "recs_pipeline"
FORMAT = 1
DEFAULT_MODEL = "recs-pipeline"
UNTUNED_WEIGHT = 1.0  # equal weights when no recs-pipeline version is registered (not tuned)
CATEGORY_BOOST = 0.5  # set by hand in the first online version; a cut-off has no browsing
UNTUNED_DIVERSITY = 0.15  # the first online version's MMR diversity, served until one is tuned


@dataclass(frozen=True)
class PipelineParams:
    """Blend weights per view (source -> weight), the category boost, per-source parameters
    (``source_params``, e.g. ``{"ease": {"lambda": 500.0}}``) and where they came from.

    ``rankers``: view -> the learned blend of that view (``BlendModel.to_text``); a view
    without one uses the weights. ``diversity``: the re-rank's MMR diversity (0 = the blended
    order). ``version``: ``"recs-pipeline/3"`` when read from the registry, ``""`` otherwise.
    """

    weights: dict[str, dict[str, float]]
    category_boost: float = CATEGORY_BOOST
    source_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    version: str = ""
    rankers: dict[str, str] = field(default_factory=dict)
    diversity: float = UNTUNED_DIVERSITY

    def __post_init__(self) -> None:
        for view in ("all", "new-only"):
            if view not in self.weights:
                raise RecsysError(f"pipeline params: weights for view {view!r} are missing")
            for name, w in self.weights[view].items():
                if not (isinstance(w, int | float) and np.isfinite(w) and w >= 0):
                    raise RecsysError(f"pipeline params: weights.{view}.{name}: must be >= 0")
        for view, text in self.rankers.items():
            if view not in ("all", "new-only") or not isinstance(text, str) or not text:
                raise RecsysError(f"pipeline params: rankers.{view}: a model text per view")
        if not (isinstance(self.diversity, int | float) and 0.0 <= self.diversity <= 1.0):
            raise RecsysError(f"pipeline params: diversity: {self.diversity} is not in [0, 1]")

    def weights_for(self, new_only: bool) -> dict[str, float]:
        """The weights of the request's view."""
        return self.weights["new-only" if new_only else "all"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "weights": {v: dict(w) for v, w in self.weights.items()},
            "category_boost": self.category_boost,
            "source_params": self.source_params,
            "provenance": self.provenance,
            "rankers": dict(self.rankers),
            "diversity": self.diversity,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], version: str = "") -> PipelineParams:
        if data.get("format") != FORMAT:
            raise RecsysError(f"pipeline params: unknown format {data.get('format')!r}")
        return cls(
            weights={v: {k: float(x) for k, x in w.items()} for v, w in data["weights"].items()},
            category_boost=float(data.get("category_boost", CATEGORY_BOOST)),
            source_params={k: dict(v) for k, v in (data.get("source_params") or {}).items()},
            provenance=dict(data.get("provenance") or {}),
            version=version,
            rankers={str(k): str(v) for k, v in (data.get("rankers") or {}).items()},
            diversity=float(data.get("diversity", UNTUNED_DIVERSITY)),
        )

    @classmethod
    def untuned(cls, sources: tuple[str, ...]) -> PipelineParams:
        """Equal weights (``UNTUNED_WEIGHT``) over ``sources``: the pipeline before tuning."""
        weights = dict.fromkeys(sources, UNTUNED_WEIGHT)
        return cls(
            {"all": dict(weights), "new-only": dict(weights)},
            provenance={"tuned": False, "why": "no recs-pipeline version registered"},
        )


def register_pipeline(
    project: Project, params: PipelineParams, *, model: str = DEFAULT_MODEL
) -> str:
    """Register ``params`` as a new version of ``model``; returns ``"model/version"``."""
    from sklearn.linear_model import LinearRegression

    from flywheel.registry import Registry

    names = sorted(params.weights["all"])
    blend = LinearRegression()
    blend.coef_ = np.asarray([params.weights["all"][n] for n in names], dtype=np.float64)
    blend.intercept_ = 0.0
    blend.n_features_in_ = len(names)
    example = np.eye(len(names), dtype=np.float64)
    dataset = params.provenance.get("training_dataset")
    mv = Registry(project).register_model(
        model,
        blend,
        flavor="sklearn",
        input_example={"input": example},
        training_dataset=str(dataset) if dataset else None,
        description="The served pipeline's blend (weights per source, chosen on validation)",
        tags={"system": "recsys"},
        config={CONFIG_KEY: params.to_dict() | {"sources": names}},
        export_onnx=False,
    )
    return f"{mv.name}/{mv.version}"


def load_pipeline(project: Project, model: str = DEFAULT_MODEL) -> PipelineParams | None:
    """The production version of ``model``, else its newest; ``None`` when none exists."""
    from flywheel.recsys._models import newest_version
    from flywheel.registry import Registry

    version = newest_version(project, model)
    if version is None:
        return None
    mv = Registry(project).get_version(model, version)
    section = mv.config.get(CONFIG_KEY)
    if not isinstance(section, dict):
        raise RecsysError(f"{model}/{version} was not registered by tune_pipeline")
    return PipelineParams.from_dict(section, version=f"{model}/{version}")


def dataset_id(lines: Any) -> str:
    """A content id of purchase lines (the lineage node of what the params were tuned on)."""
    import pandas as pd

    digest = hashlib.sha256(pd.util.hash_pandas_object(lines, index=False).values.tobytes())
    return f"recs-purchases:{digest.hexdigest()[:16]}"
