"""`flywheel serve ...` commands against a project with a real registry model."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from flywheel.cli._serve import app
from flywheel.project import Project
from flywheel.registry import Registry

pytestmark = pytest.mark.slow


def test_deploy_split_shadow_status_rollback(project: Project) -> None:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    registry = Registry(project)
    for scale in (1.0, 2.0, 3.0):
        model = to_onnx(LinearRegression().fit(x, scale * x.sum(axis=1)), x[:1], target_opset=17)
        registry.register_model("m", model, flavor="onnx", input_example=x[:2])
    registry.set_stage("m", 1, "production")
    config = str(project.config.root / "flywheel.yaml")
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(app, [*args, "-c", config])
        assert result.exit_code == 0, result.output
        return result.output

    assert "v1:100" in run("deploy", "shop", "--model", "m", "--version", "1")
    out = run("deploy", "shop", "--version", "2", "--canary", "10,50", "--step-requests", "5")
    assert "canary v2 over v1: running at 10%" in out
    failed = runner.invoke(app, ["deploy", "shop", "--version", "3", "-c", config])
    assert failed.exit_code != 0  # a canary is running
    assert "canary v2 over v1: paused at 10%" in run("pause", "shop", "--reason", "hold")
    assert "canary v2 over v1: running at 10%" in run("resume", "shop", "--reason", "go")
    assert "rolled_back" in run("rollback", "shop", "--reason", "manual test")
    assert "v1:90" in run("split", "shop", "1=90", "3=10", "--shadow", "2:0.5")
    assert "shadow v2 (50%)" in run("endpoints")
    assert "shadow" not in run("shadow", "shop", "--off").split("(revision")[0]
    status = orjson.loads(run("status", "shop", "--json"))
    kinds = [e["kind"] for e in status["events"]]
    assert kinds == [
        "deploy",
        "canary_start",
        "canary_pause",
        "canary_resume",
        "canary_rollback",
        "update",
        "shadow",
    ]
    assert status["events"][2]["detail"]["reason"] == "hold"
    assert status["events"][4]["detail"]["reason"] == "manual test"
    bad = runner.invoke(app, ["split", "shop", "1=x", "-c", config])
    assert bad.exit_code != 0
    missing = runner.invoke(app, ["deploy", "shop", "--version", "9", "-c", config])
    assert missing.exit_code != 0 and "no version 9" in str(missing.exception)
    assert "deleted" in run("delete", "shop")
