"""Tracking and registry benchmark: metric logging vs MLflow, and register+load per flavor.

Run with ``make bench-registry`` (or ``.venv/bin/python benchmarks/registry_bench.py``).

1. ``log_metric`` cost per point, as a curve over run sizes: the same loop
   (``for i in range(n): log_metric("loss", v, step=i)`` inside a run) for Flywheel, MLflow
   (synchronous) and MLflow (``synchronous=False``), at the **same** sizes ``--sizes`` for all
   three (#17 item 14: a ratio between different sizes compares fixed costs with amortised
   ones), on the same backend (SQLite file; PostgreSQL at 127.0.0.1:5432). The time runs until
   every point is stored (Flywheel: until ``flush()`` returns; MLflow synchronous: each call;
   MLflow ``synchronous=False``: until ``flush_async_logging()`` returns), and each side's stored
   count is read back (a run that stored another number of points fails the benchmark).
   MLflow is installed by this script into ``.bench/mlflow-venv`` and run there, in its own
   process.
2. Register + load time per flavor (sklearn, pytorch, tensorflow, lightgbm, onnx): registration
   includes saving, the reload check and the ONNX export; load is from the artifact store with
   sha256 verification.

Bounded by ``--sizes`` (default 100, 1,000 and 5,000 points: MLflow stores ~50 synchronous
points/s, so 5,000 take it about 100 s per backend). Everything runs on 127.0.0.1.
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
SIZES = (100, 1_000, 5_000)
SMOKE_SIZES = (100, 500)

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
    """Log ``n`` points in a fresh run (after one warm-up point), as ``MLFLOW_CHILD`` does."""
    from flywheel.tracking import Tracker

    tracker = Tracker(project)
    with tracker.start_run("bench") as run:
        run.log_metric("warmup", 0.0)
        run.flush()
        t0 = time.perf_counter()
        for i in range(n):
            run.log_metric("loss", 1.0 / (i + 1), step=i)
        run.flush()
        seconds = time.perf_counter() - t0
    stored = tracker.get_run(run.id).metrics["loss"].count
    if stored != n:
        raise RuntimeError(f"flywheel stored {stored} of {n} points")
    return {"points": n, "seconds": seconds}


def _pg_database(name: str, create: bool) -> None:
    import psycopg

    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        if create:
            conn.execute(f'CREATE DATABASE "{name}"')
        else:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def bench_logging(tmp: Path, sizes: tuple[int, ...], smoke: bool = False) -> list[dict[str, Any]]:
    """One row per (backend, size): seconds per stored point for Flywheel and both MLflow modes."""
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
            for n in sizes:
                fw = flywheel_rate(project, n)
                row: dict[str, Any] = {
                    "backend": backend,
                    "points": n,
                    "flywheel_s": fw["seconds"] / n,
                    "mlflow_sync_s": None,
                    "mlflow_async_s": None,
                    "mlflow_version": "-",
                }
                if python is not None:
                    ml_sync = mlflow_rate(python, ml_url, n, synchronous=True)
                    ml_async = mlflow_rate(python, ml_url, n, synchronous=False)
                    row["mlflow_sync_s"] = ml_sync["seconds"] / n
                    row["mlflow_async_s"] = ml_async["seconds"] / n
                    row["mlflow_version"] = ml_sync["version"]
                rows.append(row)
                print(f"  {backend}, {n:,} points: done", flush=True)
            project.close()
            if python is None:
                print("  peer mlflow: skipped in --smoke (its venv is not installed in smoke mode)")
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


def _us(seconds: float | None) -> str:
    return "skipped (--smoke)" if seconds is None else f"{seconds * 1e6:,.0f}"


def _ratio(fw: float, peer: float | None) -> str:
    return "-" if peer is None else f"{peer / fw:,.0f}x"


def print_logging_table(rows: list[dict[str, Any]]) -> None:
    """The per-point cost curve: the same sizes for every system, a ratio per size."""
    print(
        "| backend | points per run | Flywheel (us/point) | MLflow synchronous (us/point) "
        "| MLflow / Flywheel | MLflow synchronous=False (us/point) | MLflow / Flywheel |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['backend']} | {r['points']:,} | {r['flywheel_s'] * 1e6:,.1f} "
            f"| {_us(r['mlflow_sync_s'])} | {_ratio(r['flywheel_s'], r['mlflow_sync_s'])} "
            f"| {_us(r['mlflow_async_s'])} | {_ratio(r['flywheel_s'], r['mlflow_async_s'])} |"
        )


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, MLflow skipped, sklearn flavor only (CI)"
    )
    parser.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="points per run, comma-separated; every system logs every size",
    )
    args = parser.parse_args()
    sizes = SMOKE_SIZES if args.smoke else tuple(int(x) for x in args.sizes.split(",") if x)
    if not sizes or min(sizes) < 1:
        parser.error("--sizes: give one or more positive whole numbers, e.g. 100,1000")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="flywheel-bench-") as tmp_name:
        tmp = Path(tmp_name)
        print("log_metric cost per point ...", flush=True)
        logging_rows = bench_logging(tmp, sizes, smoke=args.smoke)
        print("register + load per flavor ...", flush=True)
        flavor_rows = bench_flavors(tmp, only=("sklearn",) if args.smoke else None)
    import flywheel

    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; load average {load_before:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; flywheel {flywheel.__version__}, "
        f"mlflow {logging_rows[0]['mlflow_version']}; {_versions()}"
    )
    print()
    print_logging_table(logging_rows)
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
