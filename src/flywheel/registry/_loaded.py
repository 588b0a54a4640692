"""``LoadedModel``: a registered version ready to predict, whatever runtime runs it."""

from __future__ import annotations

from typing import Any

import numpy as np

from flywheel.registry._errors import RegistryError
from flywheel.registry._flavor import Predict
from flywheel.registry._types import ModelVersion, Signature, TensorSpec


def conform_input(spec: TensorSpec, value: Any, where: str) -> np.ndarray:
    """``value`` as an array of ``spec``'s dtype and rank; ``RegistryError`` naming the input."""
    array = np.asarray(value)
    if spec.datatype == "BYTES":
        if array.dtype.kind not in "USO":
            raise RegistryError(f"{where}: input {spec.name!r} must be strings or bytes")
    else:
        dtype = spec.dtype
        if array.dtype != dtype:
            if array.dtype.kind in "USO":
                raise RegistryError(
                    f"{where}: input {spec.name!r} must be {spec.datatype}, got {array.dtype}"
                )
            array = array.astype(dtype)
    if spec.shape:
        if array.ndim != len(spec.shape):
            raise RegistryError(
                f"{where}: input {spec.name!r} must have shape {list(spec.shape)} "
                f"(-1 = any), got {list(array.shape)}"
            )
        for got, want in zip(array.shape, spec.shape, strict=True):
            if want != -1 and got != want:
                raise RegistryError(
                    f"{where}: input {spec.name!r} must have shape {list(spec.shape)} "
                    f"(-1 = any), got {list(array.shape)}"
                )
    return array


def conform_output(spec: TensorSpec, array: np.ndarray) -> np.ndarray:
    """Give an output the signature's dtype and rank (ONNX runtimes may return (n, 1) for (n,))."""
    array = np.asarray(array)
    if spec.datatype != "BYTES" and array.dtype != spec.dtype:
        array = array.astype(spec.dtype)
    if spec.shape and array.ndim != len(spec.shape) and array.ndim > 0:
        fixed = [d for d in spec.shape[1:]]
        if all(d != -1 for d in fixed):
            target = (array.shape[0], *fixed)
            if int(np.prod(target)) == array.size:
                array = array.reshape(target)
    return array


class LoadedModel:
    """A model version loaded into a runtime (``sklearn``, ``onnxruntime``, ``torch``, ...).

    ``predict({name: batch})`` checks and casts the inputs against the signature, runs the model
    and returns ``{output name: batch}`` as numpy arrays. Safe to call from several threads.
    ``device`` is where it computes (``"cpu"``, ``"cuda:0"``); ``placement`` has the details
    (``device_requested``, onnxruntime's ``execution_providers``, ...).
    """

    def __init__(
        self,
        version: ModelVersion,
        runtime: str,
        predict_fn: Predict,
        *,
        device: str = "cpu",
        placement: dict[str, Any] | None = None,
    ) -> None:
        self.version = version
        self.runtime = runtime
        self.device = device
        self.placement = dict(placement or {})
        self._predict = predict_fn

    @property
    def signature(self) -> Signature:
        return self.version.signature

    @property
    def name(self) -> str:
        return self.version.name

    def __repr__(self) -> str:
        return (
            f"LoadedModel({self.version.uri!r}, runtime={self.runtime!r}, device={self.device!r})"
        )

    def predict(self, inputs: dict[str, Any]) -> dict[str, np.ndarray]:
        """Run one batch. Missing or misshapen inputs raise ``RegistryError`` (HTTP 400)."""
        where = f"model {self.version.name!r} version {self.version.version}"
        if not isinstance(inputs, dict):
            if len(self.signature.inputs) == 1:
                inputs = {self.signature.inputs[0].name: inputs}
            else:
                raise RegistryError(f"{where}: inputs must be a dict {{name: array}}")
        missing = [s.name for s in self.signature.inputs if s.name not in inputs]
        if missing:
            raise RegistryError(
                f"{where}: missing inputs {missing}; it takes {list(self.signature.input_names)}"
            )
        batch = {s.name: conform_input(s, inputs[s.name], where) for s in self.signature.inputs}
        raw = self._predict(batch)
        specs = {s.name: s for s in self.signature.outputs}
        return {k: conform_output(specs[k], v) if k in specs else v for k, v in raw.items()}

    __call__ = predict


__all__ = ["LoadedModel", "conform_input", "conform_output"]
