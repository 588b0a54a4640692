"""The registry's value types: tensor specs, signatures, model versions and audit entries.

Datatypes use the Open Inference Protocol names (``FP32``, ``INT64``, ``BYTES``, ...); shapes use
-1 for a variable dimension and the first dimension is the batch dimension.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from flywheel.registry._errors import RegistryError

# Open Inference Protocol datatype <-> numpy dtype.
DATATYPES: dict[str, str] = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BYTES": "object",
}
_FROM_NUMPY = {v: k for k, v in DATATYPES.items()}


def datatype_of(array: np.ndarray) -> str:
    """The Open Inference Protocol datatype of a numpy array (strings and bytes are ``BYTES``)."""
    kind = array.dtype.kind
    if kind in "USO":
        return "BYTES"
    name = _FROM_NUMPY.get(array.dtype.name)
    if name is None:
        raise RegistryError(f"numpy dtype {array.dtype} has no Open Inference Protocol datatype")
    return name


def numpy_dtype(datatype: str) -> np.dtype[Any]:
    """The numpy dtype for an Open Inference Protocol datatype."""
    try:
        return np.dtype(DATATYPES[datatype])
    except KeyError:
        allowed = ", ".join(DATATYPES)
        raise RegistryError(f"datatype {datatype!r} is not one of: {allowed}") from None


@dataclass(frozen=True)
class TensorSpec:
    """One named input or output: datatype and shape (-1 = variable; dim 0 is the batch)."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.name:
            raise RegistryError("a tensor spec needs a non-empty name")
        numpy_dtype(self.datatype)
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        if any(d < -1 for d in self.shape):
            raise RegistryError(f"tensor {self.name!r}: shape {self.shape} has a dim below -1")

    @property
    def dtype(self) -> np.dtype[Any]:
        return numpy_dtype(self.datatype)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(str(d["name"]), str(d["datatype"]), tuple(int(x) for x in d["shape"]))

    @classmethod
    def from_array(cls, name: str, array: np.ndarray) -> TensorSpec:
        """A spec for ``array`` with its first dim (the batch) made variable."""
        shape = (-1, *array.shape[1:]) if array.ndim else ()
        return cls(name, datatype_of(array), tuple(int(d) for d in shape))


@dataclass(frozen=True)
class Signature:
    """The inputs a model takes and the outputs it returns, in order."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...] = ()

    @classmethod
    def from_example(
        cls, inputs: dict[str, np.ndarray], outputs: dict[str, np.ndarray] | None = None
    ) -> Signature:
        """Infer a signature from example arrays (the batch dim becomes -1)."""
        return cls(
            tuple(TensorSpec.from_array(k, np.asarray(v)) for k, v in inputs.items()),
            tuple(TensorSpec.from_array(k, np.asarray(v)) for k, v in (outputs or {}).items()),
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_dict() for s in self.inputs],
            "outputs": [s.to_dict() for s in self.outputs],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_dict(s) for s in d.get("inputs", [])),
            tuple(TensorSpec.from_dict(s) for s in d.get("outputs", [])),
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)


@dataclass(frozen=True)
class ModelVersion:
    """One immutable registered version of a model."""

    name: str
    version: int
    flavor: str
    artifact_sha256: str
    onnx_sha256: str | None
    signature: Signature
    metrics: dict[str, float] = field(default_factory=dict)
    run_id: str | None = None
    training_dataset: str | None = None
    feature_service: str | None = None
    stages: tuple[str, ...] = ()
    created_at: datetime | None = None
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    code_commit: str | None = None
    created_by: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    @property
    def node_id(self) -> str:
        """The lineage node id of this version: ``NAME/VERSION``."""
        return f"{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "uri": self.uri,
            "flavor": self.flavor,
            "artifact_sha256": self.artifact_sha256,
            "onnx_sha256": self.onnx_sha256,
            "signature": self.signature.to_dict(),
            "metrics": dict(self.metrics),
            "run_id": self.run_id,
            "training_dataset": self.training_dataset,
            "feature_service": self.feature_service,
            "stages": list(self.stages),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "description": self.description,
            "tags": dict(self.tags),
            "config": dict(self.config),
            "code_commit": self.code_commit,
            "created_by": self.created_by,
            "details": dict(self.details),
        }


@dataclass(frozen=True)
class AuditEntry:
    """One stage change: ``stage`` of ``model`` moved from ``from_version`` to ``to_version``.

    ``action`` is ``set`` (a promotion or demotion), ``rollback`` or ``archive``; ``id`` grows
    monotonically, so a poller can ask for ``audit_log(since_id=last_seen)``.
    """

    id: int
    model: str
    stage: str
    from_version: int | None
    to_version: int | None
    actor: str
    reason: str
    at: datetime
    action: str = "set"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "model": self.model,
            "stage": self.stage,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "actor": self.actor,
            "reason": self.reason,
            "at": self.at.isoformat(),
            "action": self.action,
        }


@dataclass(frozen=True)
class RegisteredModel:
    """A model name with a summary of its versions and stages."""

    name: str
    description: str
    created_at: datetime
    latest_version: int
    stages: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "created_at": self.created_at.isoformat(),
            "latest_version": self.latest_version,
            "stages": dict(self.stages),
        }
