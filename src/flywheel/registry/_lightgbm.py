"""The LightGBM flavor: the native text model format (no pickle), run by ``lightgbm.Booster``.

Accepts a ``Booster``, a scikit-learn-API model (``LGBMRanker``, ``LGBMClassifier``, ...; its
``booster_`` is stored), or a saved text model (path or bytes). The output ``output`` is
``Booster.predict``: raw scores for rankers and regressors, probabilities for classifiers.
No ONNX converter is installed for LightGBM (onnxmltools), so ``onnx_sha256`` stays empty
and ``details["onnx_error"]`` says why.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flywheel.registry._errors import RegistryError
from flywheel.registry._flavor import Predict, stack_inputs


def _booster(model: Any) -> Any:
    import lightgbm as lgb

    if isinstance(model, lgb.Booster):
        return model
    if isinstance(model, bytes | bytearray):
        return lgb.Booster(model_str=bytes(model).decode("utf-8"))
    if isinstance(model, str | Path):
        return lgb.Booster(model_file=str(model))
    booster = getattr(model, "booster_", None)
    if isinstance(booster, lgb.Booster):
        return booster
    raise RegistryError(
        f"a lightgbm model must be a fitted lightgbm.Booster or LGBM* estimator, "
        f"not {type(model).__name__}"
    )


def _predict_fn(booster: Any) -> Predict:
    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {"output": np.asarray(booster.predict(stack_inputs(inputs)))}

    return predict


class LightgbmFlavor:
    name = "lightgbm"
    runtime = "lightgbm"

    def wrap(self, model: Any, input_names: list[str]) -> Predict:
        return _predict_fn(_booster(model))

    def example_for(self, model: Any) -> dict[str, np.ndarray]:
        """Random rows with the model's number of features (for verification)."""
        n = int(_booster(model).num_feature())
        return {"input": np.random.default_rng(0).standard_normal((4, n))}

    def save(self, model: Any, folder: Path, example: dict[str, np.ndarray]) -> dict[str, Any]:
        text = _booster(model).model_to_string()
        (folder / "model.txt").write_text(text, encoding="utf-8")
        return {"format": "lightgbm-text", "file": "model.txt"}

    def load(
        self,
        folder: Path,
        details: dict[str, Any],
        input_names: list[str],
        *,
        trusted: bool,
        device: str = "cpu",  # always "cpu": ``place`` gives this runtime no GPU
    ) -> Predict:
        import lightgbm as lgb

        text = (folder / details.get("file", "model.txt")).read_text(encoding="utf-8")
        return _predict_fn(lgb.Booster(model_str=text))

    def export_onnx(
        self, model: Any, path: Path, example: dict[str, np.ndarray], details: dict[str, Any]
    ) -> None:
        raise RegistryError(
            "no ONNX converter for LightGBM is installed (onnxmltools is not a dependency)"
        )


__all__ = ["LightgbmFlavor"]
