"""The flavor interface: how one framework's models are saved, loaded, run and exported to ONNX.

A flavor works on *folders*: ``save`` writes the model's files into an empty folder and returns
JSON-able ``details`` (format, file names, what loading needs); ``load`` reads that folder back
onto a device (``"cpu"`` or ``"cuda:N"``, decided by ``flywheel.registry._device.place``) and
returns a ``Predict`` function (a ``PlacedPredict`` when it runs anywhere but the CPU); ``wrap``
makes the same ``Predict`` from the in-memory object so registration can compare the reloaded
model against the original. ``Predict`` takes and
returns ``{name: np.ndarray}`` batches; inputs arrive ordered as the signature lists them and
already cast to its datatypes.

Flavors are chosen by name through ``FLAVORS`` (name -> "module:Class"), imported lazily, so
that registering a scikit-learn model never imports torch or TensorFlow.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from flywheel._plugins import load
from flywheel.registry._errors import RegistryError

Predict = Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]

FLAVORS: dict[str, str] = {
    "sklearn": "flywheel.registry._sklearn:SklearnFlavor",
    "onnx": "flywheel.registry._onnx:OnnxFlavor",
    "pytorch": "flywheel.registry._pytorch:PytorchFlavor",
    "tensorflow": "flywheel.registry._tensorflow:TensorflowFlavor",
    "lightgbm": "flywheel.registry._lightgbm:LightgbmFlavor",
    "llm": "flywheel.registry._llm:LLMFlavor",
    "scripted-chat": "flywheel.registry._llm:ScriptedChatFlavor",
}


class Flavor(Protocol):
    """Save / load / wrap / export for one framework (see the module docstring)."""

    name: str
    runtime: str

    def wrap(self, model: Any, input_names: list[str]) -> Predict:
        """A ``Predict`` over the in-memory ``model`` (raises when it is not this framework's)."""
        ...

    def save(self, model: Any, folder: Path, example: dict[str, np.ndarray]) -> dict[str, Any]:
        """Write ``model`` into ``folder``; return the details ``load`` needs."""
        ...

    def load(
        self,
        folder: Path,
        details: dict[str, Any],
        input_names: list[str],
        *,
        trusted: bool,
        device: str = "cpu",
    ) -> Predict:
        """Read the model in ``folder`` back onto ``device`` (``"cpu"``, or ``"cuda:N"`` for a
        runtime that ``place`` found able to use it). Never runs untrusted code unless
        ``trusted``. Inputs and outputs stay numpy arrays on the host."""
        ...

    def export_onnx(
        self, model: Any, path: Path, example: dict[str, np.ndarray], details: dict[str, Any]
    ) -> None:
        """Write an ONNX version of ``model`` to ``path``; raise when no converter can."""
        ...


class PlacedPredict:
    """A ``Predict`` that says where it computes: ``device`` (``"cpu"``, ``"cuda:0"``) and
    ``placement`` (runtime details, e.g. onnxruntime's providers in use)."""

    def __init__(self, fn: Predict, device: str, placement: dict[str, Any] | None = None) -> None:
        self.fn = fn
        self.device = device
        self.placement = dict(placement or {})

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.fn(inputs)


def device_of(predict: Any) -> tuple[str, dict[str, Any]]:
    """(device, placement details) a ``Predict`` reports; plain functions run on the CPU."""
    return str(getattr(predict, "device", "cpu")), dict(getattr(predict, "placement", {}) or {})


def get_flavor(name: str) -> Flavor:
    """The flavor called ``name`` (``RegistryError`` naming the known ones otherwise)."""
    flavor: Flavor = load(FLAVORS, name, what="flavor", error=RegistryError)()
    return flavor


def name_outputs(result: Any, default: str = "output") -> dict[str, np.ndarray]:
    """Name a model's raw result: one array -> ``output``; a tuple -> ``output_0..``; a dict keeps
    its keys."""
    if isinstance(result, dict):
        return {str(k): np.asarray(v) for k, v in result.items()}
    if isinstance(result, list | tuple):
        if len(result) == 1:
            return {default: np.asarray(result[0])}
        return {f"{default}_{i}": np.asarray(v) for i, v in enumerate(result)}
    return {default: np.asarray(result)}


def stack_inputs(inputs: dict[str, np.ndarray]) -> np.ndarray:
    """One 2-D feature matrix from the inputs: a single input as is, several side by side."""
    arrays = list(inputs.values())
    if len(arrays) == 1:
        return arrays[0]
    cols = [a.reshape(a.shape[0], -1) for a in arrays]
    return np.concatenate(cols, axis=1)


__all__ = [
    "FLAVORS",
    "Flavor",
    "PlacedPredict",
    "Predict",
    "device_of",
    "get_flavor",
    "name_outputs",
    "stack_inputs",
]
