"""The scikit-learn flavor: saved with ``skops`` (no pickle), exported to ONNX with skl2onnx.

skops stores an object's state, not code; loading it refuses every type outside skops' list of
trusted scikit-learn/numpy/scipy types. Such types (a custom transformer, say) are recorded at
registration, and ``load`` refuses the model unless the caller passes ``trusted=True``. An object
skops cannot store at all falls back to a raw pickle, which only ever loads with
``trusted=True``.

Outputs: ``predictions`` (``predict``), plus ``probabilities`` (``predict_proba``) for
classifiers. Several inputs are put side by side into one feature matrix.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.registry._errors import RegistryError, UnsafeModelError
from flywheel.registry._flavor import Predict, stack_inputs


def _is_classifier(model: Any) -> bool:
    return bool(getattr(model, "_estimator_type", None) == "classifier") or (
        hasattr(model, "predict_proba") and hasattr(model, "classes_")
    )


def _predict_fn(model: Any) -> Predict:
    if not hasattr(model, "predict"):
        raise RegistryError(
            f"a sklearn model needs a predict method; {type(model).__name__} has none"
        )
    classifier = _is_classifier(model) and hasattr(model, "predict_proba")

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        features = stack_inputs(inputs)
        out = {"predictions": np.asarray(model.predict(features))}
        if classifier:
            out["probabilities"] = np.asarray(model.predict_proba(features))
        return out

    return predict


class SklearnFlavor:
    name = "sklearn"
    runtime = "sklearn"

    def wrap(self, model: Any, input_names: list[str]) -> Predict:
        return _predict_fn(model)

    def save(self, model: Any, folder: Path, example: dict[str, np.ndarray]) -> dict[str, Any]:
        import skops.io

        try:
            skops.io.dump(model, folder / "model.skops")
        except Exception as exc:  # skops cannot represent the object: fall back to pickle
            (folder / "model.skops").unlink(missing_ok=True)
            (folder / "model.pkl").write_bytes(pickle.dumps(model, protocol=5))
            return {"format": "pickle", "file": "model.pkl", "skops_error": str(exc)[:500]}
        untrusted = skops.io.get_untrusted_types(file=folder / "model.skops")
        return {"format": "skops", "file": "model.skops", "untrusted_types": sorted(untrusted)}

    def load(
        self,
        folder: Path,
        details: dict[str, Any],
        input_names: list[str],
        *,
        trusted: bool,
        device: str = "cpu",  # always "cpu": ``place`` gives this runtime no GPU
    ) -> Predict:
        fmt = details.get("format", "skops")
        if fmt == "pickle":
            if not trusted:
                raise UnsafeModelError(
                    "this sklearn model is stored as a raw pickle (skops could not store it), and "
                    "unpickling runs arbitrary code; load it with trusted=True only if you trust "
                    "whoever registered it"
                )
            return _predict_fn(pickle.loads((folder / details["file"]).read_bytes()))
        import skops.io

        path = folder / details.get("file", "model.skops")
        untrusted = skops.io.get_untrusted_types(file=path)
        if untrusted and not trusted:
            raise UnsafeModelError(
                f"this sklearn model contains types outside skops' trusted list: "
                f"{', '.join(sorted(untrusted))}; load it with trusted=True only if you trust "
                "whoever registered it"
            )
        model = skops.io.load(path, trusted=untrusted)
        return _predict_fn(model)

    def export_onnx(
        self, model: Any, path: Path, example: dict[str, np.ndarray], details: dict[str, Any]
    ) -> None:
        from skl2onnx import to_onnx

        features = stack_inputs(example)
        sample = features[:1].astype(np.float32) if features.dtype.kind == "f" else features[:1]
        options = {id(model): {"zipmap": False}} if _is_classifier(model) else None
        onx = to_onnx(model, sample, options=options, target_opset=17)
        path.write_bytes(onx.SerializeToString())
        # skl2onnx takes one feature matrix; several inputs are stacked before it.
        details["onnx_stacked_input"] = len(example) > 1


__all__ = ["SklearnFlavor"]
