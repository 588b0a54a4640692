"""The TensorFlow flavor: SavedModel (``tensorflow-cpu``), exported to ONNX with tf2onnx.

A Keras model is exported with ``model.export`` (its ``serve`` endpoint); a ``tf.Module`` with
a ``tf.function`` ``__call__`` is saved with ``tf.saved_model.save``. Loading a SavedModel runs
no Python code from the artifact. A single input is passed as one tensor, several as a list in
signature order. TensorFlow is imported only inside these methods (it takes seconds).

Loading and every call run under ``tf.device``: ``/GPU:N`` for ``device="cuda:N"``, and
``/CPU:0`` otherwise (TensorFlow would put ops on a visible GPU by itself, even for a version
that asked for the CPU).
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.registry._errors import RegistryError
from flywheel.registry._flavor import PlacedPredict, Predict, name_outputs

SAVED_MODEL_DIR = "saved_model"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _to_numpy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_numpy(v) for v in value]
    numpy = getattr(value, "numpy", None)
    return numpy() if callable(numpy) else np.asarray(value)


def visible_gpus() -> int:
    """How many GPUs TensorFlow can use in this process."""
    with _quiet():
        import tensorflow as tf

        return len(tf.config.list_physical_devices("GPU"))


def _tf_device(device: str) -> str:
    """``"cuda:1"`` -> ``"/GPU:1"``; anything else -> ``"/CPU:0"``."""
    if device.startswith("cuda"):
        return f"/GPU:{int(device.partition(':')[2] or 0)}"
    return "/CPU:0"


def _predict_fn(fn: Any, device: str | None = None) -> Predict:
    import tensorflow as tf

    def call(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        tensors = [tf.convert_to_tensor(a) for a in inputs.values()]
        result = fn(tensors[0]) if len(tensors) == 1 else fn(tensors)
        return name_outputs(_to_numpy(result))

    if device is None:  # an in-memory model at registration: where TensorFlow puts it
        return call
    scope = _tf_device(device)

    def predict(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with tf.device(scope):
            return call(inputs)

    return predict


def _is_keras(model: Any) -> bool:
    try:
        import keras
    except ImportError:
        return False
    return isinstance(model, keras.Model)


def _input_signature(example: dict[str, np.ndarray]) -> list[Any]:
    import tensorflow as tf

    return [
        tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype), name=name)
        for name, a in example.items()
    ]


class TensorflowFlavor:
    name = "tensorflow"
    runtime = "tensorflow"

    def wrap(self, model: Any, input_names: list[str]) -> Predict:
        with _quiet():
            import tensorflow as tf
        if not (_is_keras(model) or isinstance(model, tf.Module)):
            raise RegistryError(
                f"a tensorflow model must be a keras.Model or tf.Module, not {type(model).__name__}"
            )
        if _is_keras(model):

            def call(x: Any) -> Any:
                return model(x, training=False)

            return _predict_fn(call)
        return _predict_fn(model)

    def save(self, model: Any, folder: Path, example: dict[str, np.ndarray]) -> dict[str, Any]:
        with _quiet():
            import tensorflow as tf

            path = folder / SAVED_MODEL_DIR
            if _is_keras(model):
                signature = _input_signature(example)
                model.export(
                    str(path),
                    format="tf_saved_model",
                    verbose=False,
                    input_signature=signature if len(signature) == 1 else [signature],
                )
                return {"format": "saved_model", "dir": SAVED_MODEL_DIR, "endpoint": "serve"}
            tf.saved_model.save(model, str(path))
        return {"format": "saved_model", "dir": SAVED_MODEL_DIR, "endpoint": "__call__"}

    def load(
        self,
        folder: Path,
        details: dict[str, Any],
        input_names: list[str],
        *,
        trusted: bool,
        device: str = "cpu",
    ) -> Predict:
        with _quiet():
            import tensorflow as tf

            with tf.device(_tf_device(device)):  # restored variables live there
                loaded = tf.saved_model.load(str(folder / details.get("dir", SAVED_MODEL_DIR)))
        endpoint = details.get("endpoint", "serve")
        fn = loaded if endpoint == "__call__" else getattr(loaded, endpoint, None)
        if fn is None:
            fn = loaded.signatures["serving_default"]
        predict = _predict_fn(fn, device)

        def keep_alive(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            # ``loaded`` owns the variables; the closure keeps it alive with the function.
            _ = loaded
            return predict(inputs)

        if device.startswith("cuda"):
            return PlacedPredict(keep_alive, device, {"tensorflow_device": _tf_device(device)})
        return keep_alive

    def export_onnx(
        self, model: Any, path: Path, example: dict[str, np.ndarray], details: dict[str, Any]
    ) -> None:
        with _quiet():
            import tensorflow as tf
            import tf2onnx

            signature = _input_signature(example)
            call = (
                (lambda *xs: model(xs[0] if len(xs) == 1 else list(xs), training=False))
                if _is_keras(model)
                else (lambda *xs: model(xs[0] if len(xs) == 1 else list(xs)))
            )
            fn = tf.function(call, input_signature=signature)
            tf2onnx.convert.from_function(
                fn, input_signature=signature, opset=17, output_path=str(path)
            )


__all__ = ["TensorflowFlavor"]
