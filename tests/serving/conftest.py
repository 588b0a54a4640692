"""Fixtures for serving tests: small in-test model fakes and a real uvicorn server in a thread.

The fakes stand in for *models* only (the registry's ``LoadedModel``); endpoints, stats and the
metadata store are real. Tests that need the registry itself use ``flywheel.registry``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from flywheel.errors import NotFoundError
from flywheel.project import Project
from tests.conftest import uvicorn_in_thread

running_server = uvicorn_in_thread  # serve an app in a thread; yields ``host:port``

Tensors = dict[str, np.ndarray]
DTYPES = {
    "FP32": np.float32,
    "FP64": np.float64,
    "INT64": np.int64,
    "INT32": np.int32,
    "BOOL": bool,
}


@dataclass(frozen=True)
class Spec:
    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Sig:
    inputs: tuple[Spec, ...]
    outputs: tuple[Spec, ...] = ()


@dataclass
class FakeVersion:
    name: str
    version: int
    signature: Sig
    config: dict[str, Any] = field(default_factory=dict)
    flavor: str = "fake"
    onnx_sha256: str | None = None
    training_dataset: str | None = None


@dataclass
class Entry:
    id: int
    model: str
    stage: str


class FakeModel:
    """``predict`` = ``fn(inputs)``; records every batch size it was called with."""

    runtime = "fake"

    def __init__(self, fn: Callable[[Tensors], Tensors], delay: float = 0.0) -> None:
        self.fn = fn
        self.delay = delay
        self.batch_sizes: list[int] = []
        self.lock = threading.Lock()

    def predict(self, inputs: Tensors) -> Tensors:
        rows = next(iter(inputs.values())).shape[0]
        with self.lock:
            self.batch_sizes.append(int(rows))
        if self.delay:
            time.sleep(self.delay)
        return self.fn(inputs)


def linear(weight: float) -> Callable[[Tensors], Tensors]:
    def fn(inputs: Tensors) -> Tensors:
        x = inputs["input"]
        return {
            "predictions": (x.sum(axis=1) * weight).astype(np.float32),
            "label": (x.sum(axis=1) > 0).astype(np.int64),
        }

    return fn


def failing(inputs: Tensors) -> Tensors:
    raise RuntimeError("candidate is broken")


def failing_after_warmup(inputs: Tensors) -> Tensors:
    """Passes on the input example (all ones), fails on real traffic."""
    if np.all(inputs["input"] == 1):
        return linear(1.0)(inputs)
    raise RuntimeError("candidate is broken")


LINEAR_SIG = Sig(
    inputs=(Spec("input", "FP32", (-1, 4)),),
    outputs=(Spec("predictions", "FP32", (-1,)), Spec("label", "INT64", (-1,))),
)


class FakeSource:
    """A ``ModelSource`` over in-memory versions, with a stage table and an audit log."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, int], tuple[FakeVersion, FakeModel]] = {}
        self.stages: dict[tuple[str, str], int] = {}
        self.audit: list[Entry] = []
        self.lock = threading.Lock()

    def add(
        self,
        name: str,
        version: int,
        model: FakeModel,
        *,
        signature: Sig = LINEAR_SIG,
        config: dict[str, Any] | None = None,
        stage: str | None = None,
    ) -> FakeModel:
        self.versions[(name, version)] = (
            FakeVersion(name, version, signature, dict(config or {})),
            model,
        )
        if stage:
            self.set_stage(name, version, stage)
        return model

    def set_stage(self, name: str, version: int, stage: str) -> None:
        with self.lock:
            self.stages[(name, stage)] = version
            self.audit.append(Entry(len(self.audit) + 1, name, stage))

    def resolve(self, uri: str) -> FakeVersion:
        rest = uri.removeprefix("models:/")
        if "@" in rest:
            name, stage = rest.split("@")
            version = self.stages.get((name, stage))
            if version is None:
                raise NotFoundError(f"model {name!r} has no {stage} version")
        else:
            name, v = rest.rsplit("/", 1)
            version = int(v)
        if (name, version) not in self.versions:
            raise NotFoundError(f"model {name!r} has no version {version}")
        return self.versions[(name, version)][0]

    def load(self, mv: FakeVersion, *, prefer_onnx: bool) -> FakeModel:
        return self.versions[(mv.name, mv.version)][1]

    def input_example(self, mv: FakeVersion) -> Tensors | None:
        example: Tensors = {}
        for spec in mv.signature.inputs:
            shape = tuple(2 if d == -1 else d for d in spec.shape)
            if spec.datatype == "BYTES":
                example[spec.name] = np.full(shape, b"ab", dtype=object)
            else:
                example[spec.name] = np.ones(shape, dtype=DTYPES[spec.datatype])
        return example

    def audit_log(self, since_id: int) -> list[Entry]:
        with self.lock:
            return [e for e in self.audit if e.id > since_id]


@pytest.fixture
def source() -> FakeSource:
    return FakeSource()


def serving_app(project: Project, source: FakeSource) -> Any:
    from flywheel.api import create_app
    from flywheel.serving import server_for, with_inference_fast_path

    server_for(project, source)
    return with_inference_fast_path(create_app(project, systems=["serving"]))


@pytest.fixture
def fast_project(project: Project) -> Project:
    """The SQLite project with a short reconcile interval and every prediction logged."""
    cfg = project.config
    serving = cfg.serving.model_copy(
        update={
            "poll_interval_ms": 50,
            "prediction_log_sample_rate": 1.0,
            "prediction_log_flush_seconds": 0.2,
        }
    )
    project.config = cfg.model_copy(update={"serving": serving})
    return project
