"""Runtimes: registered model versions loaded from the registry, warmed and ready to batch.

``ModelSource`` is the one seam between serving and the registry (resolve a URI, load a version,
fetch its input example, read the stage audit log). ``RegistrySource`` is the real one; tests may
hand the server any object with the same methods.

``load_runtime`` loads a version through the registry (sha256-verified there), warms it with the
version's input example, and, when the version has an ONNX export and ``prefer_onnx`` is set,
times both runtimes on a batch built from the example and serves the faster one whose outputs
agree with the native runtime. The chosen runtime, the device and both timings are reported in
the model's metadata.

Devices: a version's ``config["device"]`` (``cpu`` by default, ``auto``, ``cuda[:N]``) is handed
to the registry's loader, which places the model (torch on CUDA, onnxruntime's CUDA provider,
TensorFlow's GPU) and reports where it really runs; ``device`` in the metadata is that, never
what was merely asked for, and ``placement`` adds the request and runtime details (onnxruntime's
``execution_providers``). An explicit ``cuda`` that a runtime cannot honour here is the
registry's ``DeviceUnavailable`` (409), except that a flavor without a GPU runtime (sklearn)
whose ONNX export runs on onnxruntime's CUDA provider is served through that export.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from flywheel.serving._errors import ModelUnavailable
from flywheel.serving._types import Tensors

if TYPE_CHECKING:  # the registry is imported on first use (it pulls in the model flavors)
    from flywheel.project import Project
    from flywheel.registry import AuditEntry, ModelVersion, Registry

log = logging.getLogger("flywheel.serving")

TIMING_BATCH_ROWS = 32
TIMING_REPEATS = 5
# Chat models are served by /v1's engine; their V2 predict loads on first use, not at warm-up.
NO_WARMUP_FLAVORS = frozenset({"llm", "scripted-chat"})


class LoadedModelLike(Protocol):
    """What serving needs of ``flywheel.registry.LoadedModel``."""

    @property
    def runtime(self) -> str: ...
    def predict(self, inputs: Tensors) -> Tensors: ...


class ModelSource(Protocol):
    """The registry, as serving sees it (see ``RegistrySource`` for the contract)."""

    def resolve(self, uri: str) -> ModelVersion:
        """The ``ModelVersion`` for ``models:/NAME/V`` or ``models:/NAME@stage``; raises 404."""

    def load(self, mv: ModelVersion, *, prefer_onnx: bool) -> LoadedModelLike:
        """A loaded, callable model for the version (sha256-verified)."""

    def input_example(self, mv: ModelVersion) -> Tensors | None:
        """The version's input example, or None when it has none."""

    def audit_log(self, since_id: int) -> list[AuditEntry]:
        """Stage changes (entries with ``id``, ``model``, ``stage``) with id > ``since_id``."""


class RegistrySource:
    """``ModelSource`` over ``flywheel.registry.Registry(project)``."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self._registry: Registry | None = None

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            from flywheel.registry import Registry

            self._registry = Registry(self.project)
        return self._registry

    def resolve(self, uri: str) -> ModelVersion:
        return self.registry.resolve(uri)

    def load(self, mv: ModelVersion, *, prefer_onnx: bool) -> LoadedModelLike:
        return self.registry.load(mv, trusted=False, prefer_onnx=prefer_onnx)

    def input_example(self, mv: ModelVersion) -> Tensors | None:
        try:
            example = self.registry.input_example(mv)
        except Exception:  # a version registered without an example
            return None
        return dict(example) if example else None

    def audit_log(self, since_id: int) -> list[AuditEntry]:
        return self.registry.audit_log(since_id=since_id)

    def staged(self, stage: str) -> list[tuple[str, int]]:
        """(model, version) of every model that has a version in ``stage``."""
        return [
            (m.name, int(m.stages[stage])) for m in self.registry.list_models() if stage in m.stages
        ]


@dataclass
class LoadedRuntime:
    """A loaded, warmed model version and what the server reports about it."""

    model: LoadedModelLike
    runtime: str
    device: str
    load_seconds: float
    timings_ms: dict[str, float] = field(default_factory=dict)
    placement: dict[str, Any] = field(default_factory=dict)

    def predict(self, inputs: Tensors) -> Tensors:
        return self.model.predict(inputs)


def _tile(example: Tensors, rows: int) -> Tensors:
    out: Tensors = {}
    for name, arr in example.items():
        arr = np.asarray(arr)
        if arr.ndim == 0 or arr.shape[0] == 0:
            return example
        reps = -(-rows // arr.shape[0])
        out[name] = np.concatenate([arr] * reps)[:rows]
    return out


def _time_ms(model: LoadedModelLike, batch: Tensors) -> float:
    best = float("inf")
    for _ in range(TIMING_REPEATS):
        start = time.perf_counter()
        model.predict(batch)
        best = min(best, (time.perf_counter() - start) * 1000)
    return best


def _agree(a: Tensors, b: Tensors) -> bool:
    if set(a) != set(b):
        return False
    for name, x in a.items():
        x, y = np.asarray(x), np.asarray(b[name])
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc" or y.dtype.kind in "fc":
            if not np.allclose(x.astype(np.float64), y.astype(np.float64), rtol=1e-3, atol=1e-4):
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def _device(model: LoadedModelLike) -> tuple[str, dict[str, Any]]:
    """Where the runtime computes, as the loaded model reports it (the CPU when it says nothing),
    and its placement details."""
    device = str(getattr(model, "device", None) or "cpu")
    placement = dict(getattr(model, "placement", None) or {})
    return device, placement


def _is_device_error(exc: BaseException) -> bool:
    from flywheel.registry import DeviceUnavailable

    return isinstance(exc, DeviceUnavailable)


def load_runtime(source: ModelSource, mv: ModelVersion, *, prefer_onnx: bool) -> LoadedRuntime:
    """Load ``mv``, warm it with its input example, and pick the faster runtime (see module doc).

    Raises:
        ModelUnavailable: the version cannot be loaded or fails on its own input example.
    """
    label = f"{mv.name}/{mv.version}"
    start = time.perf_counter()
    try:
        native = source.load(mv, prefer_onnx=False)
    except Exception as exc:
        instead = _onnx_instead(source, mv, exc) if prefer_onnx else None
        if instead is None:
            if getattr(exc, "status_code", 500) < 500 and not isinstance(exc, ModelUnavailable):
                raise
            raise ModelUnavailable(f"model {label} could not be loaded: {exc}") from exc
        native = instead
    chosen, timings = native, {}
    example = None if getattr(mv, "flavor", "") in NO_WARMUP_FLAVORS else source.input_example(mv)
    if example:
        try:
            reference = native.predict(example)
        except Exception as exc:
            raise ModelUnavailable(f"model {label} fails on its own input example: {exc}") from exc
        batch = _tile(example, TIMING_BATCH_ROWS)
        if prefer_onnx and getattr(mv, "onnx_sha256", None) and native.runtime != "onnxruntime":
            timings[native.runtime] = _time_ms(native, batch)
            try:
                onnx = source.load(mv, prefer_onnx=True)
                if onnx.runtime == "onnxruntime" and _agree(reference, onnx.predict(example)):
                    timings["onnxruntime"] = _time_ms(onnx, batch)
                    if timings["onnxruntime"] < timings[native.runtime]:
                        chosen = onnx
                else:
                    log.info(
                        "model %s: ONNX export disagrees with %s; not used", label, native.runtime
                    )
            except Exception as exc:  # the export is an optimisation; the native runtime serves
                log.warning("model %s: ONNX export not usable (%s)", label, exc)
        else:
            chosen.predict(batch)  # warm-up at a realistic batch size
    device, placement = _device(chosen)
    return LoadedRuntime(
        model=chosen,
        runtime=chosen.runtime,
        device=device,
        load_seconds=time.perf_counter() - start,
        timings_ms={k: round(v, 4) for k, v in timings.items()},
        placement=placement,
    )


def _onnx_instead(
    source: ModelSource, mv: ModelVersion, error: Exception
) -> LoadedModelLike | None:
    """The ONNX export on onnxruntime when the native runtime cannot use the requested GPU
    (sklearn asked for ``cuda``) but onnxruntime's CUDA provider can; else None."""
    if not (getattr(mv, "onnx_sha256", None) and _is_device_error(error)):
        return None
    try:
        onnx = source.load(mv, prefer_onnx=True)
    except Exception as exc:
        log.info(
            "model %s/%s: ONNX export cannot take the GPU either (%s)", mv.name, mv.version, exc
        )
        return None
    log.info("model %s/%s: served through its ONNX export (%s)", mv.name, mv.version, error)
    return onnx


__all__ = ["LoadedModelLike", "LoadedRuntime", "ModelSource", "RegistrySource", "load_runtime"]
