"""PyTorch and LightGBM flavors round-trip: register -> load -> same predictions as the original."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pytest
import torch

from flywheel.project import Project
from flywheel.registry import ModelRefused, Registry


class TwoTower(torch.nn.Module):
    """Two named inputs, two outputs (a tuple)."""

    def __init__(self) -> None:
        super().__init__()
        self.user = torch.nn.Linear(4, 64)
        self.item = torch.nn.Linear(3, 64)

    def forward(self, user: torch.Tensor, item: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        u, i = torch.relu(self.user(user)), torch.relu(self.item(item))
        return (u * i).sum(dim=1), u


def test_pytorch_round_trips_through_torch_export_and_onnx(project: Project) -> None:
    torch.manual_seed(0)
    model = TwoTower()
    rng = np.random.default_rng(0)
    example = {
        "user": rng.normal(size=(3, 4)).astype(np.float32),
        "item": rng.normal(size=(3, 3)).astype(np.float32),
    }
    registry = Registry(project)
    mv = registry.register_model("two-tower", model, flavor="pytorch", input_example=example)
    assert mv.details["format"] == "torch.export"
    assert mv.signature.input_names == ("user", "item")
    assert mv.signature.output_names == ("output_0", "output_1")
    assert mv.onnx_sha256 is not None, mv.details.get("onnx_error")
    batch = {
        "user": rng.normal(size=(41, 4)).astype(np.float32),
        "item": rng.normal(size=(41, 3)).astype(np.float32),
    }
    with torch.no_grad():
        want = [
            t.numpy()
            for t in model(torch.from_numpy(batch["user"]), torch.from_numpy(batch["item"]))
        ]
    for prefer_onnx, runtime in ((False, "torch"), (True, "onnxruntime")):
        loaded = registry.load(mv, prefer_onnx=prefer_onnx)
        assert loaded.runtime == runtime
        out = loaded.predict(batch)
        np.testing.assert_allclose(out["output_0"], want[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(out["output_1"], want[1], rtol=1e-4, atol=1e-5)
    # float64 inputs are cast to the signature's FP32
    out64 = registry.load(mv).predict({k: v.astype(np.float64) for k, v in batch.items()})
    np.testing.assert_allclose(out64["output_0"], want[0], rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_pytorch_torchscript_module_and_named_outputs(project: Project) -> None:
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))
    scripted = torch.jit.script(net)
    x = np.random.default_rng(2).normal(size=(5, 4)).astype(np.float32)
    from flywheel.registry import Signature, TensorSpec

    sig = Signature(
        (TensorSpec("features", "FP32", (-1, 4)),), (TensorSpec("score", "FP32", (-1, 1)),)
    )
    registry = Registry(project)
    mv = registry.register_model(
        "scripted",
        scripted,
        flavor="pytorch",
        signature=sig,
        input_example={"features": x},
        export_onnx=False,
    )
    assert mv.details["format"] == "torchscript"
    assert mv.signature.output_names == ("score",)
    big = np.random.default_rng(3).normal(size=(17, 4)).astype(np.float32)
    out = registry.load(mv).predict({"features": big})["score"]
    with torch.no_grad():
        np.testing.assert_allclose(out, net(torch.from_numpy(big)).numpy(), rtol=1e-5, atol=1e-6)


def test_pytorch_state_dict_is_stored_and_loads_weights_only(project: Project) -> None:
    import json

    net = torch.nn.Linear(4, 2)
    x = np.zeros((2, 4), dtype=np.float32)
    mv = Registry(project).register_model(
        "sd", net, flavor="pytorch", input_example=x, export_onnx=False
    )
    manifest = json.loads(project.artifacts.get_bytes(mv.artifact_sha256))
    import io

    state = torch.load(
        io.BytesIO(project.artifacts.get_bytes(manifest["files"]["state_dict.pt"])),
        weights_only=True,
    )
    torch.testing.assert_close(state["weight"], net.weight.detach())


def test_pytorch_model_failing_on_its_example_is_refused(project: Project) -> None:
    net = torch.nn.Linear(4, 2)
    with pytest.raises(ModelRefused, match="fails on its input example"):
        Registry(project).register_model(
            "bad", net, flavor="pytorch", input_example=np.zeros((2, 5), dtype=np.float32)
        )
    with pytest.raises(ModelRefused, match=r"torch\.nn\.Module"):
        Registry(project).register_model(
            "bad", object(), flavor="pytorch", input_example=np.zeros((2, 5), dtype=np.float32)
        )


def test_lightgbm_ranker_round_trips_as_native_text(project: Project) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 5))
    y = (x[:, 0] * 2 + rng.normal(size=300) > 0).astype(int)
    model = lgb.LGBMRanker(n_estimators=20, min_child_samples=5, verbose=-1)
    model.fit(x, y, group=[30] * 10)
    registry = Registry(project)
    mv = registry.register_model("ltr", model, flavor="lightgbm", input_example=x[:4])
    assert mv.details["format"] == "lightgbm-text"
    assert mv.onnx_sha256 is None and "onnxmltools" in mv.details["onnx_error"]
    loaded = registry.load("models:/ltr/1")
    assert loaded.runtime == "lightgbm"
    probe = rng.normal(size=(50, 5))
    np.testing.assert_allclose(loaded.predict({"input": probe})["output"], model.predict(probe))
    # prefer_onnx without an ONNX export falls back to the native runtime
    assert registry.load(mv, prefer_onnx=True).runtime == "lightgbm"
