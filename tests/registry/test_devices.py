"""Device placement: config.device = cpu | auto | cuda[:N], on this machine's hardware.

The CPU paths are asserted everywhere. An explicit ``cuda`` is asserted both ways: it loads onto
the GPU where the runtime can use one, and is a 409 naming ``config.device`` where it cannot.
The GPU-only checks (weights really on the card, outputs equal to the CPU's) run where torch sees
a CUDA device and are skipped elsewhere.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from flywheel.project import Project
from flywheel.registry import DeviceUnavailable, Registry, RegistryError
from flywheel.registry._device import CUDA_PROVIDER, place

TORCH_GPU = torch.cuda.is_available()
ORT_GPU = CUDA_PROVIDER in ort.get_available_providers()
needs_gpu = pytest.mark.skipif(not TORCH_GPU, reason="no CUDA device on this machine")


def _mlp() -> object:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(4, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)
    ).eval()


def _x(rows: int = 9) -> np.ndarray:
    return np.random.default_rng(0).normal(size=(rows, 4)).astype(np.float32)


def test_config_device_is_validated_at_registration_and_load(project: Project) -> None:
    x = _x()
    y = (x[:, 0] > 0).astype(np.int64)
    registry = Registry(project)
    model = LogisticRegression().fit(x, y)
    with pytest.raises(RegistryError, match=r"config\.device 'gpu' must be 'cpu', 'auto'"):
        registry.register_model(
            "m", model, flavor="sklearn", input_example=x[:3], config={"device": "gpu"}
        )
    mv = registry.register_model(
        "m", model, flavor="sklearn", input_example=x[:3], config={"device": " AUTO "}
    )
    assert mv.config["device"] == "auto"  # stored normalised
    with pytest.raises(RegistryError, match=r"config\.device 'tpu'"):
        registry.load(mv, device="tpu")


def test_sklearn_auto_runs_on_the_cpu_and_explicit_cuda_is_refused(project: Project) -> None:
    x = _x(60)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    registry = Registry(project)
    mv = registry.register_model(
        "clf",
        LogisticRegression().fit(x, y),
        flavor="sklearn",
        input_example=x[:3],
        config={"device": "auto"},
    )
    auto = registry.load(mv)
    assert auto.device == "cpu" and auto.placement["device_requested"] == "auto"
    cpu = registry.load(mv, device="cpu")
    assert cpu.device == "cpu" and cpu.placement == {"device_requested": "cpu"}
    y_pred = cpu.predict({"input": x})["predictions"]
    np.testing.assert_array_equal(auto.predict({"input": x})["predictions"], y_pred)
    # scikit-learn has no GPU runtime: an explicit cuda is a clear 409, on any machine.
    with pytest.raises(DeviceUnavailable, match=r"config\.device is 'cuda'") as refused:
        registry.load(mv, device="cuda")
    assert refused.value.status_code == 409
    assert "sklearn runtime has no GPU support" in str(refused.value)
    assert "'auto'" in str(refused.value)
    # Its ONNX export can take the GPU through onnxruntime's CUDA provider, where there is one.
    onnx_cpu = registry.load(mv, prefer_onnx=True, device="auto")
    assert onnx_cpu.runtime == "onnxruntime"
    assert onnx_cpu.placement["execution_providers"][-1] == "CPUExecutionProvider"
    if ORT_GPU:
        on_gpu = registry.load(mv, prefer_onnx=True, device="cuda")
        assert on_gpu.device == "cuda:0"
        assert on_gpu.placement["execution_providers"][0] == CUDA_PROVIDER
        np.testing.assert_array_equal(on_gpu.predict({"input": x})["predictions"], y_pred)
    else:
        assert onnx_cpu.device == "cpu"
        assert onnx_cpu.placement["execution_providers"] == ["CPUExecutionProvider"]
        with pytest.raises(DeviceUnavailable, match=CUDA_PROVIDER):
            registry.load(mv, prefer_onnx=True, device="cuda")


def test_pytorch_auto_and_cuda_follow_the_hardware(project: Project) -> None:
    registry = Registry(project)
    mv = registry.register_model(
        "mlp", _mlp(), flavor="pytorch", input_example=_x(4), export_onnx=False
    )
    x = _x(33)
    reference = registry.load(mv).predict({"input": x})["output"]
    auto = registry.load(mv, device="auto")
    assert auto.device == ("cuda:0" if TORCH_GPU else "cpu")
    np.testing.assert_allclose(
        auto.predict({"input": x})["output"], reference, rtol=1e-4, atol=1e-5
    )
    if TORCH_GPU:
        assert registry.load(mv, device="cuda").device == "cuda:0"
        missing = f"cuda:{torch.cuda.device_count()}"  # one past the last GPU
        with pytest.raises(DeviceUnavailable, match=f"no {missing}"):
            registry.load(mv, device=missing)
    else:
        with pytest.raises(DeviceUnavailable, match="torch sees no CUDA device"):
            registry.load(mv, device="cuda")
        with pytest.raises(DeviceUnavailable, match=r"config\.device is 'cuda:1'"):
            registry.load(mv, device="cuda:1")


def test_place_decides_per_runtime() -> None:
    assert place("torch", "cpu", "m") == "cpu"
    assert place("lightgbm", "auto", "m") == "cpu"
    assert place("torch", "auto", "m") == ("cuda:0" if TORCH_GPU else "cpu")
    assert place("onnxruntime", "auto", "m") == ("cuda:0" if ORT_GPU else "cpu")
    with pytest.raises(DeviceUnavailable, match="lightgbm runtime has no GPU support"):
        place("lightgbm", "cuda", "model 'm' version 1")


@needs_gpu
@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_pytorch_weights_and_batches_really_run_on_the_gpu(project: Project) -> None:
    registry = Registry(project)
    exported = registry.register_model(
        "mlp-gpu", _mlp(), flavor="pytorch", input_example=_x(4), config={"device": "cuda"}
    )
    assert exported.details["format"] == "torch.export"
    scripted = registry.register_model(
        "mlp-ts",
        torch.jit.script(_mlp()),
        flavor="pytorch",
        input_example=_x(4),
        config={"device": "cuda:0"},
        export_onnx=False,
    )
    assert scripted.details["format"] == "torchscript"
    x = _x(257)
    for mv in (exported, scripted):
        before = torch.cuda.memory_allocated()
        gpu = registry.load(mv)  # the version's own config asks for cuda
        assert gpu.device == "cuda:0" and gpu.placement["torch_device"] == "cuda:0"
        assert torch.cuda.memory_allocated() > before  # the weights are on the card
        out = gpu.predict({"input": x})["output"]
        assert isinstance(out, np.ndarray)  # copied back to host memory
        cpu = registry.load(mv, device="cpu").predict({"input": x})["output"]
        np.testing.assert_allclose(out, cpu, rtol=1e-4, atol=1e-5)
