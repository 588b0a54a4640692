"""Two `flywheel serve` processes on one metadata store converge on endpoint and stage changes."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from flywheel.project import Project
from flywheel.registry import Registry
from flywheel.serving import EndpointStore, deploy
from tests.conftest import free_port, make_project

pytestmark = [pytest.mark.integration, pytest.mark.slow]

X = np.random.default_rng(1).normal(size=(100, 5)).astype(np.float32)


def _start(config: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", "serve", "-c", str(config), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"server exited: {proc.stderr.read().decode() if proc.stderr else ''}"
            )
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


@pytest.fixture
def replicas(tmp_path: Path) -> Iterator[tuple[Project, list[str]]]:
    from skl2onnx import to_onnx
    from sklearn.linear_model import LinearRegression

    project = make_project(tmp_path / "proj")
    registry = Registry(project)
    y = X @ np.arange(5, dtype=np.float32)
    for scale in (1.0, 2.0):
        # ONNX models: the replicas load them with onnxruntime alone, so they start quickly.
        model = to_onnx(LinearRegression().fit(X, scale * y), X[:1], target_opset=17)
        registry.register_model("reg", model, flavor="onnx", input_example=X[:3])
    registry.set_stage("reg", 1, "production")
    ports = [free_port(), free_port()]
    procs = [_start(project.config.root / "flywheel.yaml", p) for p in ports]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for url, proc in zip(urls, procs, strict=True):
            _wait_ready(url, proc)
        yield project, urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        project.close()


def _version(url: str, name: str) -> str | None:
    body = {"inputs": [{"name": "input", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]}
    response = httpx.post(f"{url}/v2/models/{name}/infer", json=body, timeout=10)
    if response.status_code == 404:  # this replica does not know the endpoint yet
        return None
    assert response.status_code == 200, response.text
    return str(response.json()["model_version"])


def _converge(urls: list[str], name: str, want: str, timeout: float = 10.0) -> float:
    start = time.monotonic()
    pending = set(urls)
    while pending:
        pending = {u for u in pending if _version(u, name) != want}
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{sorted(pending)} still not serving v{want} of {name}")
    return time.monotonic() - start


def test_two_replicas_converge_on_stage_and_endpoint_changes(
    replicas: tuple[Project, list[str]],
) -> None:
    project, urls = replicas
    assert {_version(u, "reg") for u in urls} == {"1"}
    Registry(project).set_stage("reg", 2, "production", reason="better")
    promote_s = _converge(urls, "reg", "2")
    deploy(project, "shop", model="reg", version=1)
    deploy_s = _converge(urls, "shop", "1")
    deploy(project, "shop", version=2)
    switch_s = _converge(urls, "shop", "2")
    EndpointStore(project.db).delete("shop")
    # The poll interval is 200 ms; print what convergence took for the record.
    print(f"converged: promote {promote_s:.2f}s, deploy {deploy_s:.2f}s, switch {switch_s:.2f}s")
    for url in urls:
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/v2/models/shop", timeout=5).status_code != 404:
            assert time.monotonic() < deadline, "endpoint deletion not noticed"
            time.sleep(0.05)
