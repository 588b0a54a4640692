"""The TensorFlow flavor (one module: importing TensorFlow costs seconds)."""

from __future__ import annotations

import keras
import numpy as np

from flywheel.project import Project
from flywheel.registry import Registry


def test_keras_model_round_trips_via_savedmodel_and_onnx(project: Project) -> None:
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(3)]
    )
    rng = np.random.default_rng(0)
    example = rng.normal(size=(4, 4)).astype(np.float32)
    registry = Registry(project)
    mv = registry.register_model("keras", model, flavor="tensorflow", input_example=example)
    assert mv.details["format"] == "saved_model"
    assert mv.onnx_sha256 is not None, mv.details.get("onnx_error")
    probe = rng.normal(size=(29, 4)).astype(np.float32)
    want = model(probe, training=False).numpy()
    for prefer_onnx, runtime in ((False, "tensorflow"), (True, "onnxruntime")):
        loaded = registry.load(mv, prefer_onnx=prefer_onnx)
        assert loaded.runtime == runtime
        np.testing.assert_allclose(
            loaded.predict({"input": probe})["output"], want, rtol=1e-4, atol=1e-5
        )
