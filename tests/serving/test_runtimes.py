"""Every registry flavor served over V2 and matching the registry's own predictions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as tc

from flywheel.api import create_app
from flywheel.project import Project
from flywheel.registry import Registry
from tests.conftest import make_project
from tests.serving.conftest import running_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RNG = np.random.default_rng(0)
X = RNG.normal(size=(300, 8)).astype(np.float32)
Y = (X[:, 0] + 0.5 * X[:, 1] > 0).astype(np.int64)


def _sklearn() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression().fit(X, Y)


def _lightgbm() -> Any:
    import lightgbm as lgb

    return lgb.LGBMRegressor(n_estimators=20, verbose=-1).fit(X, Y.astype(float))


def _pytorch() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
    ).eval()


def _tensorflow() -> Any:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    return tf.keras.Sequential([tf.keras.Input((8,)), tf.keras.layers.Dense(3)])


def _onnx() -> Any:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    return to_onnx(LinearRegression().fit(X, Y), X[:1], target_opset=17)


FLAVORS = {
    "sklearn": _sklearn,
    "lightgbm": _lightgbm,
    "pytorch": _pytorch,
    "tensorflow": _tensorflow,
    "onnx": _onnx,
}


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, str]]:
    project = make_project(Path(tmp_path_factory.mktemp("flavors")) / "proj")
    registry = Registry(project)
    for flavor, build in FLAVORS.items():
        mv = registry.register_model(flavor, build(), flavor=flavor, input_example=X[:4])
        registry.set_stage(flavor, mv.version, "production")
    with running_server(create_app(project, systems=["serving"])) as server:
        yield project, server
    project.close()


@pytest.mark.parametrize("flavor", list(FLAVORS))
def test_flavor_served_matches_registry(served: tuple[Project, str], flavor: str) -> None:
    project, server = served
    registry = Registry(project)
    mv = registry.resolve(f"models:/{flavor}@production")
    client = tc.InferenceServerClient(server)
    assert client.is_model_ready(flavor)
    meta = client.get_model_metadata(flavor)
    params = meta["parameters"]
    assert params["flavor"] == flavor and params["version"] == mv.version
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 8]}]
    served_runtime = params["runtime"]
    timings = params["runtime_timings_ms"]
    if mv.onnx_sha256 and flavor != "onnx":
        # Both runtimes were timed and the faster one serves.
        assert set(timings) == {registry.load(mv).runtime, "onnxruntime"}
        assert served_runtime == min(timings, key=timings.get)
    reference = registry.load(mv, prefer_onnx=served_runtime == "onnxruntime").predict(
        {"input": X[:7]}
    )
    native = registry.load(mv).predict({"input": X[:7]})
    inp = tc.InferInput("input", [7, 8], "FP32")
    inp.set_data_from_numpy(X[:7])
    result = client.infer(flavor, [inp])
    for name, expected in reference.items():
        got = result.as_numpy(name)
        assert got is not None, name
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got, native[name], rtol=1e-3, atol=1e-4)
    # Concurrent requests to one flavor get batched and still match row by row.
    inp1 = tc.InferInput("input", [1, 8], "FP32")
    inp1.set_data_from_numpy(X[3:4], binary_data=False)
    one = client.infer(flavor, [inp1])
    for name, expected in reference.items():
        np.testing.assert_allclose(one.as_numpy(name), expected[3:4], rtol=1e-5, atol=1e-6)


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no GPU on this machine")
def test_gpu_runtime_when_asked(served: tuple[Project, str]) -> None:
    project, server = served
    registry = Registry(project)
    mv = registry.register_model(
        "gpu_mlp", _pytorch(), flavor="pytorch", input_example=X[:4], config={"device": "cuda"}
    )
    registry.set_stage("gpu_mlp", mv.version, "production")
    meta = tc.InferenceServerClient(server).get_model_metadata("gpu_mlp")
    assert meta["parameters"]["device"].startswith("cuda")
