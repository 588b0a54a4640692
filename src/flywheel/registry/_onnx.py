"""The ONNX flavor, and the onnxruntime ``Predict`` that every flavor's ONNX export runs on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from flywheel.registry._device import CUDA_PROVIDER, onnx_providers
from flywheel.registry._errors import RegistryError
from flywheel.registry._flavor import Predict

# ONNX tensor element type names (as onnxruntime reports them) -> numpy dtypes.
_ORT_TYPES: dict[str, str] = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(int16)": "int16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(bool)": "bool",
    "tensor(string)": "object",
}


class OnnxPredict:
    """Run an ONNX model with onnxruntime on ``{name: array}`` batches.

    Inputs are matched to the graph's inputs by name, or by position when the names differ, and
    cast to the graph's element types; outputs are renamed to ``output_names`` by position (or
    keep the graph's names). One session serves every thread (onnxruntime's ``run`` is
    thread-safe).

    ``device="cuda:N"`` opens the session with the ``CUDAExecutionProvider`` on that GPU (the
    CPU provider after it, for the nodes CUDA lacks). onnxruntime falls back to the CPU by itself
    when its CUDA libraries fail to load, so ``device`` is read back from the providers the
    session really uses (the registry refuses such a fallback for an explicit ``cuda`` request).
    """

    def __init__(
        self,
        model: bytes,
        input_names: list[str],
        output_names: list[str] | None = None,
        *,
        threads: int | None = None,
        device: str = "cpu",
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            model, sess_options=options, providers=onnx_providers(device)
        )
        self.providers: list[str] = list(self.session.get_providers())
        using_cuda = device.startswith("cuda") and CUDA_PROVIDER in self.providers
        self.device = device if using_cuda else "cpu"
        self.placement = {"execution_providers": self.providers}
        graph_inputs = self.session.get_inputs()
        if len(graph_inputs) != len(input_names):
            raise RegistryError(
                f"the ONNX graph takes {len(graph_inputs)} inputs "
                f"({[i.name for i in graph_inputs]}), the signature has {input_names}"
            )
        graph_names = [i.name for i in graph_inputs]
        if sorted(graph_names) == sorted(input_names):
            self._inputs = [(n, n) for n in graph_names]
        else:
            self._inputs = list(zip(input_names, graph_names, strict=True))
        self._dtypes = {i.name: np.dtype(_ORT_TYPES.get(i.type, "float32")) for i in graph_inputs}
        graph_outputs = [o.name for o in self.session.get_outputs()]
        names = output_names or graph_outputs
        if len(names) != len(graph_outputs):
            raise RegistryError(
                f"the ONNX graph has outputs {graph_outputs}, expected {len(names)}: {names}"
            )
        self._outputs = list(zip(graph_outputs, names, strict=True))

    def __call__(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feed = {}
        for ours, graph in self._inputs:
            array = np.asarray(inputs[ours])
            dtype = self._dtypes[graph]
            feed[graph] = array.astype(dtype, copy=False) if array.dtype != dtype else array
        results = self.session.run([g for g, _ in self._outputs], feed)
        return {ours: np.asarray(r) for (_, ours), r in zip(self._outputs, results, strict=True)}


def graph_example(model: bytes, batch: int = 2) -> dict[str, np.ndarray]:
    """Random inputs for an ONNX graph (variable dims become ``batch``, or 1 past the first)."""
    import onnxruntime as ort

    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    out: dict[str, np.ndarray] = {}
    for i in session.get_inputs():
        shape = [
            d if isinstance(d, int) and d > 0 else (batch if k == 0 else 1)
            for k, d in enumerate(i.shape)
        ]
        dtype = np.dtype(_ORT_TYPES.get(i.type, "float32"))
        if dtype.kind == "f":
            out[i.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind in "iu":
            out[i.name] = rng.integers(0, 2, size=shape).astype(dtype)
        elif dtype.kind == "b":
            out[i.name] = rng.integers(0, 2, size=shape).astype(bool)
        else:
            out[i.name] = np.full(shape, "a", dtype=object)
    return out


def _model_bytes(model: Any) -> bytes:
    if isinstance(model, bytes | bytearray):
        return bytes(model)
    if isinstance(model, str | Path):
        return Path(model).read_bytes()
    serialize = getattr(model, "SerializeToString", None)
    if serialize is not None:
        data: bytes = serialize()
        return data
    raise RegistryError(
        f"an onnx model must be an onnx.ModelProto, bytes or a path, not {type(model).__name__}"
    )


class OnnxFlavor:
    """ONNX models (``onnx.ModelProto``, bytes or a ``.onnx`` path), run by onnxruntime."""

    name = "onnx"
    runtime = "onnxruntime"

    def wrap(self, model: Any, input_names: list[str]) -> Predict:
        return OnnxPredict(_model_bytes(model), input_names)

    def example_for(self, model: Any) -> dict[str, np.ndarray]:
        """Random inputs shaped like the graph's inputs (for verification)."""
        return graph_example(_model_bytes(model))

    def save(self, model: Any, folder: Path, example: dict[str, np.ndarray]) -> dict[str, Any]:
        data = _model_bytes(model)
        import onnx

        onnx.checker.check_model(onnx.load_from_string(data))
        (folder / "model.onnx").write_bytes(data)
        return {"format": "onnx", "file": "model.onnx"}

    def load(
        self,
        folder: Path,
        details: dict[str, Any],
        input_names: list[str],
        *,
        trusted: bool,
        device: str = "cpu",
    ) -> Predict:
        data = (folder / details.get("file", "model.onnx")).read_bytes()
        return OnnxPredict(data, input_names, device=device)

    def export_onnx(
        self, model: Any, path: Path, example: dict[str, np.ndarray], details: dict[str, Any]
    ) -> None:
        path.write_bytes(_model_bytes(model))


__all__ = ["OnnxFlavor", "OnnxPredict", "graph_example"]
