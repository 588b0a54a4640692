"""`flywheel serve --workers 2`: two processes answer inference on one port (#14 item 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from flywheel.project import Project
from flywheel.registry import Registry
from tests.conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_answer_inference_on_one_port(project: Project) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(np.int64))
    registry = Registry(project)
    mv = registry.register_model("clf", model, flavor="sklearn", input_example=x[:4])
    registry.set_stage("clf", mv.version, "production")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_CONFIG"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", "serve", "--port", str(port), "--workers", "2"],
        cwd=project.config.root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    rows = x[:3]
    body = {"inputs": [{"name": "input", "shape": [3, 4], "datatype": "FP32"}]}
    body["inputs"][0]["data"] = rows.ravel().tolist()
    want = model.predict(rows).tolist()
    replicas: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 120
        while len(replicas) < 2 and time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read() if proc.stdout else "no output")
            try:
                # One connection per round: its requests reach one worker, the next connection
                # whichever worker accepts it.
                with httpx.Client(base_url=base, timeout=30) as client:
                    answer = client.post("/v2/models/clf/infer", json=body)
                    if answer.status_code == 503:  # still loading the model
                        time.sleep(0.3)
                        continue
                    assert answer.status_code == 200, answer.text
                    labels = next(o for o in answer.json()["outputs"] if o["name"] == "predictions")
                    assert labels["data"] == want
                    replica = client.get("/serving/loaded").json()["replica"]
                    replicas[replica] = replicas.get(replica, 0) + 1
            except httpx.TransportError:
                time.sleep(0.3)
        assert len(replicas) == 2, replicas
        pids = {r.split("-")[-2] for r in replicas}
        assert len(pids) == 2 and str(proc.pid) not in pids, replicas  # two worker processes
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
