"""Eight processes register the same model at once: versions 1..8, no gap, no duplicate."""

from __future__ import annotations

import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from flywheel.project import Project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKERS = 8


def _register(config_path: str, model: bytes, start_at: float) -> int:
    from flywheel.config import load_config
    from flywheel.registry import Registry

    project = Project(load_config(config_path))
    time.sleep(max(0.0, start_at - time.time()))
    mv = Registry(project).register_model("shared", model, flavor="onnx", export_onnx=False)
    project.close()
    return mv.version


def _tiny_onnx() -> bytes:
    import numpy as np
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    onx = to_onnx(LinearRegression().fit(x, x[:, 0]), x[:1], target_opset=17)
    return bytes(onx.SerializeToString())


def test_concurrent_registration_numbers_versions_densely(any_project: Project) -> None:
    config = str(Path(any_project.root) / "flywheel.yaml")
    model = _tiny_onnx()
    start_at = time.time() + 3.0
    # A fork server imports Flywheel once; the eight workers fork from it (cheap, and safe:
    # the server itself never ran a test).
    context = get_context("forkserver")
    context.set_forkserver_preload(["flywheel.registry._registry", "flywheel.registry._onnx"])
    with ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
        versions = list(
            pool.map(_register, [config] * WORKERS, [model] * WORKERS, [start_at] * WORKERS)
        )
    assert sorted(versions) == list(range(1, WORKERS + 1))
    from flywheel.registry import Registry

    stored = [v.version for v in Registry(any_project).list_versions("shared")]
    assert stored == list(range(1, WORKERS + 1))
