"""The model registry: immutable, verified model versions with signatures, stages and lineage.

```python
from flywheel import registry
mv = registry.register_model("ranker", model, flavor="sklearn", input_example=X[:5], run=run)
registry.set_stage("ranker", mv.version, "production", reason="beats v2 on NDCG")
model = registry.load("models:/ranker@production")      # sha256-verified, never a raw pickle
model.predict({"input": X})       # {"predictions": ..., "probabilities": ...}
model.device                      # "cpu"; "cuda:0" for a version registered with
                                  # config={"device": "auto"} (or "cuda") on a GPU machine
```

Flavors: ``sklearn`` (skops), ``pytorch`` (torch.export / TorchScript + state_dict),
``tensorflow`` (SavedModel), ``onnx``, ``lightgbm`` (native text); each exports to ONNX where a
converter exists, and ``load(..., prefer_onnx=True)`` runs that on onnxruntime.

The module-level functions act on the project found from the cwd or ``$FLYWHEEL_CONFIG``.

Public API::

    register_model / set_stage / rollback / load / lineage / get_version   # on the cwd project
    Registry(project)          # the same on a given project, plus list_models, list_versions,
                               # resolve, audit_log, archive, materialize, input_example,
                               # check_name (a model name's rules, before any work)
    ModelVersion, RegisteredModel, AuditEntry   # what it stores and returns
    Signature, TensorSpec      # a version's inputs and outputs
    LoadedModel                # what load returns: predict(inputs), device, signature

Errors: ``RegistryError`` and below: ``ModelNotFound``, ``ModelIntegrityError``,
``UnsafeModelError``, ``ModelRefused``, ``StageConflict``, ``DeviceUnavailable``
(``flywheel.registry._errors``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flywheel.lineage import LineageGraph
from flywheel.project import Project, default_project
from flywheel.registry._errors import (
    DeviceUnavailable,
    ModelIntegrityError,
    ModelNotFound,
    ModelRefused,
    RegistryError,
    StageConflict,
    UnsafeModelError,
)
from flywheel.registry._loaded import LoadedModel
from flywheel.registry._registry import Registry
from flywheel.registry._types import (
    AuditEntry,
    ModelVersion,
    RegisteredModel,
    Signature,
    TensorSpec,
)


def _registry(project: Project | str | Path | None = None, *, write: bool = False) -> Registry:
    if isinstance(project, Project):
        return Registry(project)
    return Registry(default_project(project, for_writing=write))


def register_model(
    name: str,
    model: Any,
    *,
    flavor: str,
    project: Project | str | Path | None = None,
    **kwargs: Any,
) -> ModelVersion:
    """``Registry.register_model`` on the cwd project (or ``project``)."""
    return _registry(project, write=True).register_model(name, model, flavor=flavor, **kwargs)


def set_stage(
    name: str,
    version: int,
    stage: str,
    reason: str = "",
    actor: str = "",
    *,
    project: Project | str | Path | None = None,
) -> AuditEntry | None:
    """``Registry.set_stage`` on the cwd project (or ``project``)."""
    return _registry(project, write=True).set_stage(
        name, version, stage, reason=reason, actor=actor
    )


def rollback(
    name: str,
    stage: str,
    reason: str = "",
    actor: str = "",
    *,
    project: Project | str | Path | None = None,
) -> AuditEntry:
    """``Registry.rollback`` on the cwd project (or ``project``)."""
    return _registry(project, write=True).rollback(name, stage, reason=reason, actor=actor)


def load(
    uri_or_mv: str | ModelVersion,
    *,
    trusted: bool = False,
    prefer_onnx: bool = False,
    device: str | None = None,
    project: Project | str | Path | None = None,
) -> LoadedModel:
    """``Registry.load`` on the cwd project (or ``project``)."""
    return _registry(project).load(
        uri_or_mv, trusted=trusted, prefer_onnx=prefer_onnx, device=device
    )


def lineage(
    name: str, version: int, *, project: Project | str | Path | None = None
) -> LineageGraph:
    """``Registry.lineage`` on the cwd project (or ``project``)."""
    return _registry(project).lineage(name, version)


def get_version(
    name: str, version: int, *, project: Project | str | Path | None = None
) -> ModelVersion:
    """``Registry.get_version`` on the cwd project (or ``project``)."""
    return _registry(project).get_version(name, version)


__all__ = [
    "AuditEntry",
    "DeviceUnavailable",
    "LoadedModel",
    "ModelIntegrityError",
    "ModelNotFound",
    "ModelRefused",
    "ModelVersion",
    "RegisteredModel",
    "Registry",
    "RegistryError",
    "Signature",
    "StageConflict",
    "TensorSpec",
    "UnsafeModelError",
    "get_version",
    "lineage",
    "load",
    "register_model",
    "rollback",
    "set_stage",
]
