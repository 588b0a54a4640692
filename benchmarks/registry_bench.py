"""Tracking and registry benchmark: metric logging vs MLflow, and register+load per flavor.

Run with ``make bench-registry`` (or ``.venv/bin/python benchmarks/registry_bench.py``).

1. ``log_metric`` throughput: the same loop (``for i in range(n): log_metric("loss", v, step=i)``
   inside a run) for Flywheel and for MLflow, on the same backend (SQLite file; PostgreSQL at
   127.0.0.1:5432). Points/s counts until every point is stored (Flywheel: until ``flush()``
   returns; MLflow synchronous: each call; MLflow ``synchronous=False``: until
   ``flush_async_logging()`` returns). MLflow is installed by this script into
   ``.bench/mlflow-venv`` and run there, in its own process.
2. Register + load time per flavor (sklearn, pytorch, tensorflow, lightgbm, onnx): registration
   includes saving, the reload check and the ONNX export; load is from the artifact store with
   sha256 verification.

Bounded: Flywheel logs ``FLYWHEEL_BENCH_POINTS`` points (default 200,000); MLflow at most
``MLFLOW_BENCH_POINTS`` (default 1,000) synchronous and ``MLFLOW_BENCH_ASYNC_POINTS``
(default 2,000) asynchronous points. Everything runs on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH_VENV = ROOT / ".bench" / "mlflow-venv"
MLFLOW_VERSION = "3.17.2"
POSTGRES = os.environ.get("FLYWHEEL_BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
FLYWHEEL_POINTS = int(os.environ.get("FLYWHEEL_BENCH_POINTS", "200000"))
MLFLOW_POINTS = int(os.environ.get("MLFLOW_BENCH_POINTS", "1000"))
MLFLOW_ASYNC_POINTS = int(os.environ.get("MLFLOW_BENCH_ASYNC_POINTS", "2000"))

MLFLOW_CHILD = r"""
import json, sys, time, warnings
warnings.simplefilter("ignore")
import mlflow
args = json.loads(sys.argv[1])
mlflow.set_tracking_uri(args["uri"])
mlflow.set_experiment("bench")
n, sync = args["n"], args["synchronous"]
with mlflow.start_run():
    mlflow.log_metric("warmup", 0.0)
    t0 = time.perf_counter()
    for i in range(n):
        mlflow.log_metric("loss", 1.0 / (i + 1), step=i, synchronous=sync)
    if not sync:
        mlflow.flush_async_logging()
    seconds = time.perf_counter() - t0
run = mlflow.last_active_run()
stored = len(mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss"))
out = {"points": n, "seconds": seconds, "stored": stored, "version": mlflow.__version__}
print(json.dumps(out))
"""


def ensure_mlflow() -> Path:
    """The MLflow venv's python, created on first use (one pip call)."""
    python = BENCH_VENV / "bin" / "python"
    # On a fresh clone the venv does not exist yet: check for it before running it.
    if python.exists():
        check = subprocess.run([str(python), "-c", "import mlflow, psycopg2"], capture_output=True)
        if check.returncode == 0:
            return python
    print(f"installing mlflow=={MLFLOW_VERSION} into {BENCH_VENV} (once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"mlflow=={MLFLOW_VERSION}", "psycopg2-binary"],
        check=True,
    )
    return python


def mlflow_rate(python: Path, uri: str, n: int, synchronous: bool) -> dict[str, Any]:
    env = {**os.environ, "MLFLOW_ENABLE_ASYNC_LOGGING": "false", "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [
            str(python),
            "-c",
            MLFLOW_CHILD,
            json.dumps({"uri": uri, "n": n, "synchronous": synchronous}),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(f"mlflow child failed: {result.stderr[-2000:]}")
    out: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    if out["stored"] != n:
        raise RuntimeError(f"mlflow stored {out['stored']} of {n} points")
    return out


def flywheel_project(root: Path, metadata: str | None) -> Any:
    import yaml

    from flywheel.config import DEFAULT_CONFIG_TEXT, load_config
    from flywheel.project import Project

    root.mkdir(parents=True, exist_ok=True)
    data = yaml.safe_load(DEFAULT_CONFIG_TEXT.format(project="bench"))
    if metadata:
        data["metadata"] = metadata
    (root / "flywheel.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    project = Project(load_config(root))
    project.prepare()
    return project


def flywheel_rate(project: Any, n: int) -> dict[str, Any]:
    from flywheel.tracking import Tracker

    tracker = Tracker(project)
    with tracker.start_run("bench") as run:
        run.log_metric("warmup", 0.0)
        run.flush()
        t0 = time.perf_counter()
        for i in range(n):
            run.log_metric("loss", 1.0 / (i + 1), step=i)
        t_calls = time.perf_counter() - t0
        run.flush()
        seconds = time.perf_counter() - t0
    stored = tracker.get_run(run.id).metrics["loss"].count
    if stored != n:
        raise RuntimeError(f"flywheel stored {stored} of {n} points")
    return {"points": n, "seconds": seconds, "call_seconds": t_calls}


def _pg_database(name: str, create: bool) -> None:
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_logging(tmp: Path, smoke: bool = False) -> list[dict[str, Any]]:
    python = None if smoke else ensure_mlflow()
    rows: list[dict[str, Any]] = []
    pg_db = f"bench_{uuid.uuid4().hex[:8]}"
    base = POSTGRES.rsplit("/", 1)[0]
    # One database each: the two products' tables must not meet (both have "experiments").
    _pg_database(pg_db, create=True)
    _pg_database(pg_db + "_mlflow", create=True)
    try:
        backends = {
            "SQLite": (f"sqlite:///{tmp / 'fw-metadata.db'}", f"sqlite:///{tmp / 'mlflow.db'}"),
            "PostgreSQL": (
                f"{base}/{pg_db}",
                f"{base}/{pg_db}_mlflow".replace("postgresql://", "postgresql+psycopg2://", 1),
            ),
        }
        for backend, (fw_url, ml_url) in backends.items():
            project = flywheel_project(tmp / f"fw-{backend}", fw_url)
            fw = flywheel_rate(project, FLYWHEEL_POINTS)
            # Same sizes as the MLflow runs, so each ratio compares like with like (a run of
            # 1k points pays the fixed costs that 200k points amortise).
            fw_same = flywheel_rate(project, MLFLOW_POINTS)
            fw_same_async = flywheel_rate(project, MLFLOW_ASYNC_POINTS)
            project.close()
            print(f"  {backend}: flywheel done", flush=True)
            if python is None:
                print("  peer mlflow: skipped in --smoke (its venv is not installed in smoke mode)")
                ml_sync = ml_async = {"points": 0, "seconds": float("nan"), "version": "-"}
            else:
                ml_sync = mlflow_rate(python, ml_url, MLFLOW_POINTS, synchronous=True)
                ml_async = mlflow_rate(python, ml_url, MLFLOW_ASYNC_POINTS, synchronous=False)
                print(f"  {backend}: mlflow done", flush=True)
            rows.append(
                {
                    "backend": backend,
                    "flywheel": fw["points"] / fw["seconds"],
                    "flywheel_same": fw_same["points"] / fw_same["seconds"],
                    "flywheel_same_async": fw_same_async["points"] / fw_same_async["seconds"],
                    "flywheel_calls": fw["points"] / fw["call_seconds"],
                    "mlflow_sync": ml_sync["points"] / ml_sync["seconds"],
                    "mlflow_async": ml_async["points"] / ml_async["seconds"],
                    "mlflow_version": ml_sync["version"],
                }
            )
    finally:
        _pg_database(pg_db, create=False)
        _pg_database(pg_db + "_mlflow", create=False)
    return rows


def _models(only: tuple[str, ...] | None = None) -> dict[str, tuple[Any, np.ndarray]]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 20)).astype(np.float32)
    y = (x[:, 0] + x[:, 1] > 0).astype(np.int64)
    example = x[:8]

    from sklearn.linear_model import LogisticRegression

    models: dict[str, tuple[Any, np.ndarray]] = {
        "sklearn": (LogisticRegression(max_iter=200).fit(x, y), example)
    }
    if only is not None:
        return {k: v for k, v in models.items() if k in only}
    import torch

    torch.manual_seed(0)
    models["pytorch"] = (
        torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1)),
        example,
    )
    import keras

    models["tensorflow"] = (
        keras.Sequential(
            [keras.Input((20,)), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(1)]
        ),
        example,
    )
    import lightgbm as lgb

    models["lightgbm"] = (lgb.LGBMClassifier(n_estimators=100, verbose=-1).fit(x, y), example)
    from skl2onnx import to_onnx

    models["onnx"] = (to_onnx(models["sklearn"][0], x[:1], target_opset=17), example)
    return models


def bench_flavors(tmp: Path, only: tuple[str, ...] | None = None) -> list[dict[str, Any]]:
    from flywheel.registry import Registry

    project = flywheel_project(tmp / "fw-flavors", None)
    registry = Registry(project)
    rows = []
    for flavor, (model, example) in _models(only).items():
        t0 = time.perf_counter()
        mv = registry.register_model(f"bench-{flavor}", model, flavor=flavor, input_example=example)
        register_s = time.perf_counter() - t0
        loads, onnx_loads = [], []
        for _ in range(3):
            t0 = time.perf_counter()
            registry.load(mv, trusted=False).predict({"input": example})
            loads.append(time.perf_counter() - t0)
            if mv.onnx_sha256:
                t0 = time.perf_counter()
                registry.load(mv, prefer_onnx=True).predict({"input": example})
                onnx_loads.append(time.perf_counter() - t0)
        rows.append(
            {
                "flavor": flavor,
                "register_s": register_s,
                "load_ms": statistics.median(loads) * 1000,
                "onnx_load_ms": statistics.median(onnx_loads) * 1000 if onnx_loads else None,
                "onnx": bool(mv.onnx_sha256),
            }
        )
        print(f"  {flavor}: done", flush=True)
    project.close()
    return rows


def _versions() -> str:
    import importlib.metadata as md

    names = ["torch", "tensorflow-cpu", "scikit-learn", "lightgbm", "onnxruntime", "psycopg"]
    return ", ".join(f"{n} {md.version(n)}" for n in names)


def main() -> None:
    import argparse

    global FLYWHEEL_POINTS, MLFLOW_POINTS, MLFLOW_ASYNC_POINTS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, MLflow skipped, sklearn flavor only (CI)"
    )
    args = parser.parse_args()
    if args.smoke:
        FLYWHEEL_POINTS, MLFLOW_POINTS, MLFLOW_ASYNC_POINTS = 2000, 100, 200
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print("log_metric throughput ...", flush=True)
        logging_rows = bench_logging(tmp, smoke=args.smoke)
        print("register + load per flavor ...", flush=True)
        flavor_rows = bench_flavors(tmp, only=("sklearn",) if args.smoke else None)
    import flywheel

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; flywheel {flywheel.__version__}, "
        f"mlflow {logging_rows[0]['mlflow_version']}; {_versions()}"
    )
    print(
        f"points: Flywheel {FLYWHEEL_POINTS:,}; MLflow {MLFLOW_POINTS:,} synchronous, "
        f"{MLFLOW_ASYNC_POINTS:,} with synchronous=False"
    )
    print()
    print(
        f"| backend | Flywheel points/s at {FLYWHEEL_POINTS:,} | Flywheel at {MLFLOW_POINTS:,} "
        f"| MLflow at {MLFLOW_POINTS:,} (synchronous) | ratio (same size) "
        f"| Flywheel at {MLFLOW_ASYNC_POINTS:,} | MLflow at {MLFLOW_ASYNC_POINTS:,} "
        "(synchronous=False) | ratio (same size) | Flywheel log_metric calls/s |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in logging_rows:
        if r["mlflow_version"] == "-":
            ratio_sync = ratio_async = "skipped (--smoke)"
        else:
            ratio_sync = f"{r['flywheel_same'] / r['mlflow_sync']:,.0f}x"
            ratio_async = f"{r['flywheel_same_async'] / r['mlflow_async']:,.1f}x"
        print(
            f"| {r['backend']} | {r['flywheel']:,.0f} | {r['flywheel_same']:,.0f} | "
            f"{r['mlflow_sync']:,.0f} | {ratio_sync} | {r['flywheel_same_async']:,.0f} | "
            f"{r['mlflow_async']:,.0f} | {ratio_async} | {r['flywheel_calls']:,.0f} |"
        )
    print()
    print(
        "| flavor | register (s, incl. reload check + ONNX export) | load + predict (ms) "
        "| ONNX load + predict (ms) |"
    )
    print("|---|---:|---:|---:|")
    for r in flavor_rows:
        onnx = f"{r['onnx_load_ms']:.0f}" if r["onnx_load_ms"] is not None else "no converter"
        print(f"| {r['flavor']} | {r['register_s']:.2f} | {r['load_ms']:.0f} | {onnx} |")


if __name__ == "__main__":
    main()
