"""Real data for the dashboard tests, made through the systems' public Python APIs, CLI and HTTP.

Against the project a running ``flywheel up`` serves: a feature repo applied and materialized, a
training dataset, the recommender's synthetic shop, tracked runs with metric series, a registered
sklearn model (two versions, one in production) linked to its run, dataset and feature service, an
endpoint with a traffic split, a shadow and inference traffic (half of it drifted), an A/B test
with exposures and events, a bandit with rewards in several batches (so its allocation history
has several points), and a running training job.
"""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
MODEL = "ui-ranker"
ENDPOINT = "ui-shop"
CANARY_ENDPOINT = "ui-canary"
AB_TEST = "ui-checkout"
BANDIT = "ui-home"
DRIFT_FEATURES = ["orders_7d", "spend_7d"]
BANDIT_BATCHES = 4

JOB_SCRIPT = """\
import time

from flywheel.training import runtime as rt

rt.init(seed=0)
for i in range(1200):  # ten minutes at most (the whole browser suite), even if nobody cancels it
    loss = 1.0 / (i + 1)
    print(f"step {i}: loss {loss:.4f}", flush=True)
    rt.log_metrics(i, loss=loss)
    time.sleep(0.5)
"""


def cli(root: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", *args],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flywheel {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def seed(root: Path, url: str, token: str) -> dict[str, Any]:
    """Fill the project at ``root`` (served at ``url``); returns names the tests look for."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from flywheel.features import FeatureStore
    from flywheel.project import Project
    from flywheel.registry import Registry
    from flywheel.tracking import Tracker

    auth = {"Authorization": f"Bearer {token}"}
    http = httpx.Client(base_url=url, headers=auth, timeout=30)

    # Features: the example repo, materialized, and a training dataset from it.
    shutil.copytree(EXAMPLES / "features" / "feature_repo", root / "feature_repo")
    # The example's data is generated, not committed: make it here, beside the copied repo.
    shutil.copy(EXAMPLES / "features" / "make_data.py", root / "make_data.py")
    subprocess.run([sys.executable, str(root / "make_data.py")], check=True, capture_output=True)
    cli(root, "features", "apply", "feature_repo")
    # The recommender: a small seeded synthetic shop (its own feature views join the catalog).
    cli(
        root,
        "recs",
        "ingest",
        "--synthetic",
        "--synthetic-users",
        "200",
        "--synthetic-items",
        "100",
    )
    r = http.post(
        "/features/materialize",
        json={"start": "2026-11-01T00:00:00Z", "end": "2026-11-26T00:00:00Z"},
    )
    r.raise_for_status()

    project = Project.open(root / "flywheel.yaml")
    try:
        store = FeatureStore(project)
        entities = pd.DataFrame(
            {
                "user_id": np.arange(200, dtype=np.int64),
                "event_timestamp": pd.Timestamp("2026-11-25T12:00:00Z"),
            }
        )
        store.create_training_dataset("ui_ranker_train", entities, "ranker_features")

        # Tracking: two runs with metric series.
        tracker = Tracker(project)
        run_ids = []
        for lr in (0.1, 0.03):
            with tracker.start_run(
                "ui-ranker", params={"lr": lr, "C": 1.0}, tags={"team": "ranking"}
            ) as run:
                for step in range(40):
                    loss = math.exp(-lr * step) + 0.05 * math.sin(step)
                    run.log_metrics({"train_loss": loss, "val_auc": 0.5 + 0.4 * (1 - loss)}, step)
                run_ids.append(run.id)

        # Registry: two versions of a small classifier on the dataset's numeric features (named,
        # so that the endpoint's logged inputs line up with the drift reference); v1 in production.
        dataset_files = [str(f) for f in store.get_training_dataset("ui_ranker_train").files]
        frame = pd.concat([pd.read_parquet(f) for f in dataset_files])
        x = frame[DRIFT_FEATURES].to_numpy(dtype=np.float32)
        y = (frame["spend_7d"] > frame["spend_7d"].median()).to_numpy(dtype=np.int64)
        registry = Registry(project)
        for c, run_id in zip((1.0, 0.01), run_ids, strict=True):
            registry.register_model(
                MODEL,
                LogisticRegression(C=c, max_iter=500).fit(x, y),
                flavor="sklearn",
                input_example=x[:5],
                run=run_id,
                training_dataset="ui_ranker_train",
                feature_service="ranker_features",
                description=f"logistic regression C={c}",
                # the drift reference, as a training job records it (docs/serving.md)
                config={"feature_names": DRIFT_FEATURES, "training_dataset_files": dataset_files},
            )
        registry.set_stage(MODEL, 1, "production", reason="first model", actor="seed")
        registry.set_stage(MODEL, 2, "staging", reason="candidate", actor="seed")
    finally:
        project.close()

    # Serving: an endpoint splitting 80/20 between the versions, shadowing v2, and traffic.
    r = http.put(
        f"/serving/endpoints/{ENDPOINT}",
        json={
            "model": MODEL,
            "routes": [{"version": 1, "weight": 80}, {"version": 2, "weight": 20}],
            "shadow": {"version": 2, "share": 1.0},
        },
    )
    r.raise_for_status()
    deadline = time.monotonic() + 30
    while http.get(f"/v2/models/{ENDPOINT}/ready").status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"endpoint {ENDPOINT} did not become ready")
        time.sleep(0.3)
    rng = np.random.default_rng(0)
    for i in range(120):
        row = x[i % len(x)] * (1.0 if i < 60 else 1.8)  # the second half drifts
        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [1, len(DRIFT_FEATURES)],
                    "datatype": "FP32",
                    "data": row.tolist(),
                }
            ]
        }
        http.post(
            f"/v2/models/{ENDPOINT}/infer", json=body, headers={"x-routing-key": f"user-{i}"}
        ).raise_for_status()

    # A second endpoint in the middle of a canary rollout of v2 (gated on errors and p99).
    http.put(
        f"/serving/endpoints/{CANARY_ENDPOINT}",
        json={"model": MODEL, "routes": [{"version": 1, "weight": 100}]},
    ).raise_for_status()
    http.post(
        f"/serving/endpoints/{CANARY_ENDPOINT}/deploy",
        json={"version": 2, "canary": [20, 50, 100], "step_requests": 100_000, "max_p99_ms": 250},
    ).raise_for_status()

    # Experiments: an A/B test with exposures and purchases, and a bandit with rewards.
    http.post(
        "/experiments",
        json={
            "name": AB_TEST,
            "unit": "user_id",
            "variants": [{"name": "control", "weight": 50}, {"name": "green", "weight": 50}],
            "metrics": [{"name": "conversion", "kind": "proportion", "event": "purchase"}],
        },
    ).raise_for_status()
    for batch in range(6):  # purchases arrive while units keep coming: a history to chart
        events = []
        for i in range(batch * 50, (batch + 1) * 50):
            unit = f"user-{i}"
            variant = http.post(f"/experiments/{AB_TEST}/assign", json={"unit_id": unit}).json()
            rate = 0.3 if variant["variant"] == "green" else 0.2
            if rng.random() < rate:
                events.append({"unit_id": unit, "event_type": "purchase", "value": 1.0})
        if events:
            http.post("/experiments/events", json={"events": events}).raise_for_status()
        time.sleep(0.3)
    http.post(
        "/experiments",
        json={
            "name": BANDIT,
            "unit": "user_id",
            "bandit": {"policy": "thompson", "arms": ["popular", "personalized", "trending"]},
        },
    ).raise_for_status()
    ctr = {"popular": 0.04, "personalized": 0.2, "trending": 0.08}
    for batch in range(BANDIT_BATCHES):  # each batch is one state update: one allocation point
        rewards = []
        for i in range(50):
            unit = f"b-{batch}-{i}"
            a = http.post(f"/experiments/{BANDIT}/assign", json={"unit_id": unit}).json()
            rewards.append(
                {
                    "unit_id": unit,
                    "decision_id": a["decision_id"],
                    "reward": float(rng.random() < ctr[a["variant"]]),
                }
            )
        r = http.post(f"/experiments/{BANDIT}/rewards", json={"rewards": rewards})
        r.raise_for_status()

    # Training: one small job that runs for a while and prints its progress.
    (root / "jobs").mkdir(exist_ok=True)
    (root / "jobs" / "ticker.py").write_text(JOB_SCRIPT)
    job = http.post(
        "/training/jobs",
        json={
            "spec": {
                "name": "ui-ticker",
                "entrypoint": "ticker.py",
                "workdir": str(root / "jobs"),
                "team": "ranking",
                "priority": 60,
                "max_restarts": 1,
                "resources": {"nodes": 1, "procs_per_node": 1, "cpus_per_proc": 1},
            }
        },
    )
    job.raise_for_status()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if http.get(f"/training/jobs/{job.json()['id']}").json().get("state") == "running":
            break
        time.sleep(0.5)
    http.close()
    return {"model": MODEL, "endpoint": ENDPOINT, "runs": run_ids, "job": job.json()["id"]}
