"""Every registry flavor served over V2 and matching the registry's own predictions, on the
device its config asks for (CPU paths everywhere; the GPU test runs where torch sees CUDA)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as tc

from flywheel.api import create_app
from flywheel.project import Project
from flywheel.registry import DeviceUnavailable, Registry
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


def _torch_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _runtime_has_gpu(runtime: str) -> bool:
    """Whether ``runtime`` can use a GPU on this machine (what config.device=cuda needs)."""
    if runtime == "torch":
        return _torch_gpu()
    if runtime == "onnxruntime":
        import onnxruntime as ort

        return "CUDAExecutionProvider" in ort.get_available_providers()
    if runtime == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    return False  # sklearn, lightgbm


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
    # No config.device: the CPU, and the metadata says so (and which onnxruntime providers).
    assert params["device"] == "cpu" and params["device_requested"] == "cpu"
    if served_runtime == "onnxruntime":
        assert params["execution_providers"] == ["CPUExecutionProvider"]
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


@pytest.mark.parametrize("flavor", list(FLAVORS))
def test_device_requests_follow_each_runtime(served: tuple[Project, str], flavor: str) -> None:
    project, _ = served
    registry = Registry(project)
    mv = registry.resolve(f"models:/{flavor}@production")
    native = registry.load(mv)
    gpu = _runtime_has_gpu(native.runtime)
    reference = native.predict({"input": X[:5]})
    auto = registry.load(mv, device="auto")
    assert auto.device == ("cuda:0" if gpu else "cpu")
    for name, expected in reference.items():
        np.testing.assert_allclose(auto.predict({"input": X[:5]})[name], expected, 1e-4, 1e-5)
    if gpu:
        assert registry.load(mv, device="cuda").device == "cuda:0"
    else:
        with pytest.raises(DeviceUnavailable, match=r"config\.device is 'cuda'") as refused:
            registry.load(mv, device="cuda")
        assert refused.value.status_code == 409 and "'auto'" in str(refused.value)


def _infer_json(server: str, name: str, rows: np.ndarray) -> httpx.Response:
    body = {
        "inputs": [
            {
                "name": "input",
                "shape": list(rows.shape),
                "datatype": "FP32",
                "data": rows.ravel().tolist(),
            }
        ]
    }
    return httpx.post(f"http://{server}/v2/models/{name}/infer", json=body, timeout=60)


def test_device_auto_serves_where_the_hardware_allows(served: tuple[Project, str]) -> None:
    project, server = served
    registry = Registry(project)
    mv = registry.register_model(
        "mlp_auto", _pytorch(), flavor="pytorch", input_example=X[:4], config={"device": "auto"}
    )
    registry.set_stage("mlp_auto", mv.version, "production")
    params = tc.InferenceServerClient(server).get_model_metadata("mlp_auto")["parameters"]
    assert params["device_requested"] == "auto"
    if params["runtime"] == "torch":
        assert params["device"] == ("cuda:0" if _torch_gpu() else "cpu")
    answer = _infer_json(server, "mlp_auto", X[:6])
    assert answer.status_code == 200, answer.text
    got = np.asarray(answer.json()["outputs"][0]["data"]).reshape(6, 2)
    want = registry.load(mv, device="cpu").predict({"input": X[:6]})["output"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif("__import__('torch').cuda.is_available()", reason="this machine has a GPU")
@pytest.mark.parametrize("flavor", ["pytorch", "sklearn"])
def test_explicit_cuda_without_a_gpu_is_a_409_naming_config_device(
    served: tuple[Project, str], flavor: str
) -> None:
    project, server = served
    if flavor == "sklearn" and _runtime_has_gpu("onnxruntime"):
        pytest.skip("onnxruntime's CUDA provider would serve the sklearn export")
    registry = Registry(project)
    name = f"{flavor}_cuda"
    mv = registry.register_model(
        name, FLAVORS[flavor](), flavor=flavor, input_example=X[:4], config={"device": "cuda"}
    )
    registry.set_stage(name, mv.version, "production")
    for response in (
        _infer_json(server, name, X[:2]),
        httpx.get(f"http://{server}/v2/models/{name}", timeout=60),
    ):
        assert response.status_code == 409, response.text
        error = response.json()["error"]
        assert "config.device is 'cuda'" in error and "'auto'" in error
    # The server stays healthy for everything else.
    assert _infer_json(server, "sklearn", X[:2]).status_code == 200


@pytest.mark.skipif("not __import__('torch').cuda.is_available()", reason="no GPU on this machine")
def test_gpu_runtime_when_asked(served: tuple[Project, str]) -> None:
    import torch

    project, server = served
    registry = Registry(project)
    before = torch.cuda.memory_allocated()
    mv = registry.register_model(
        "gpu_mlp", _pytorch(), flavor="pytorch", input_example=X[:4], config={"device": "cuda"}
    )
    registry.set_stage("gpu_mlp", mv.version, "production")
    client = tc.InferenceServerClient(server)
    params = client.get_model_metadata("gpu_mlp")["parameters"]
    assert params["device"].startswith("cuda") and params["device_requested"] == "cuda"
    if params["runtime"] == "onnxruntime":  # onnxruntime-gpu was faster: on its CUDA provider
        assert params["execution_providers"][0] == "CUDAExecutionProvider"
    else:
        assert params["runtime"] == "torch" and params["torch_device"] == "cuda:0"
        assert torch.cuda.memory_allocated() > before  # the served weights are on the card
    # Batches really go through the GPU and come back equal to the CPU's answers.
    inp = tc.InferInput("input", [64, 8], "FP32")
    inp.set_data_from_numpy(X[:64])
    got = client.infer("gpu_mlp", [inp]).as_numpy("output")
    want = registry.load(mv, device="cpu").predict({"input": X[:64]})["output"]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    loaded = httpx.get(f"http://{server}/serving/loaded", timeout=30).json()["versions"]
    assert any(v["model"] == "gpu_mlp" and v["device"].startswith("cuda") for v in loaded)


def test_concurrent_requests_are_batched(served: tuple[Project, str]) -> None:
    """Issue #17 item 12: many concurrent one-row requests share runtime calls (batches of more
    than one row, counted by the server's own batch-size histogram), and every answer is still
    its own row's."""
    import asyncio

    import httpx
    from prometheus_client import REGISTRY

    project, server = served
    mv = Registry(project).resolve("models:/sklearn@production")
    expected = Registry(project).load(mv).predict({"input": X[:48]})
    labels = {"model": "sklearn", "version": str(mv.version)}

    def histogram() -> tuple[float, float]:
        count = REGISTRY.get_sample_value("flywheel_serving_batch_size_count", labels) or 0.0
        rows = REGISTRY.get_sample_value("flywheel_serving_batch_size_sum", labels) or 0.0
        return count, rows

    before = histogram()

    async def burst() -> list[dict[str, object]]:
        async with httpx.AsyncClient(base_url=f"http://{server}", timeout=30) as client:

            async def one(i: int) -> dict[str, object]:
                body = {
                    "inputs": [
                        {
                            "name": "input",
                            "shape": [1, 8],
                            "datatype": "FP32",
                            "data": X[i].tolist(),
                        }
                    ]
                }
                r = await client.post("/v2/models/sklearn/infer", json=body)
                assert r.status_code == 200, r.text
                return dict(r.json())

            return await asyncio.gather(*(one(i) for i in range(48)))

    answers = asyncio.run(burst())
    after = histogram()
    calls, rows = after[0] - before[0], after[1] - before[1]
    assert rows == 48
    assert calls < 48, f"{calls:.0f} runtime calls for 48 requests: nothing was batched"
    for i, answer in enumerate(answers):
        outputs = {o["name"]: o["data"] for o in answer["outputs"]}  # type: ignore[attr-defined]
        for name, values in expected.items():
            np.testing.assert_allclose(
                outputs[name], values[i : i + 1].ravel(), rtol=1e-3, atol=1e-4
            )
