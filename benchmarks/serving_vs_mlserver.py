"""Flywheel serving vs Seldon MLServer on the same sklearn model, plus batching and overload.

Run: ``make bench-serving`` (or ``.venv/bin/python benchmarks/serving_vs_mlserver.py [--quick]``).

* The same LogisticRegression on 20 float features is served by ``flywheel serve`` (one
  process) and by MLServer 1.7.1 (``mlserver-sklearn``, ``parallel_workers: 0``: its
  multi-process mode crashes with uvloop 0.23, SeldonIO/MLServer#2286), each pinned to CPU 0 with
  ``taskset``. MLServer is installed by this script into ``.bench/mlserver-venv``.
* One load generator (asyncio over raw HTTP/1.1 keep-alive connections with uvloop; closed loop,
  bounded by a request count and a time limit) runs pinned to CPU 1 and sends the same V2 JSON
  request (1 row) to both, at concurrency 1, 8 and 64.
* A PyTorch MLP (256 -> 2048 -> 2048 -> 10) is served by Flywheel with batching off and on, at
  concurrency 64.
* Overload: 10x the concurrency (640 connections) against the sklearn model with a 64-request
  queue; the server must stay up, shed with 429, and keep the admitted requests' p99 bounded.

Every figure printed is measured in this run on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
MLSERVER_VENV = BENCH / "mlserver-venv"
MLSERVER_VERSION = "1.7.1"
SERVER_CPU, CLIENT_CPU = 0, 1
FEATURES = 20


# -- load generator ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    statuses: list[int]
    latencies_ms: list[float]
    seconds: float

    def of(self, status: int) -> list[float]:
        return [lat for s, lat in zip(self.statuses, self.latencies_ms, strict=True) if s == status]

    @property
    def throughput(self) -> float:
        ok = sum(1 for s in self.statuses if s == 200)
        return ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float, status: int = 200) -> float:
        values = self.of(status)
        return float(np.percentile(values, q)) if values else float("nan")


async def _connection(
    host: str, port: int, request: bytes, deadline: float, budget: list[int], out: LoadResult
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            out.statuses.append(status)
            out.latencies_ms.append((time.perf_counter() - start) * 1000)
    except (ConnectionError, asyncio.IncompleteReadError):
        out.statuses.append(-1)
        out.latencies_ms.append(float("nan"))
    finally:
        writer.close()


def drive(
    port: int, path: str, body: bytes, concurrency: int, requests: int, max_seconds: float
) -> LoadResult:
    """Closed-loop load: ``concurrency`` connections share a budget of ``requests``."""
    import uvloop

    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def main() -> LoadResult:
        out = LoadResult([], [], 0.0)
        budget = [requests]
        start = time.perf_counter()
        deadline = start + max_seconds
        await asyncio.gather(
            *(
                _connection("127.0.0.1", port, request, deadline, budget, out)
                for _ in range(concurrency)
            )
        )
        out.seconds = time.perf_counter() - start
        return out

    return uvloop.run(main())


# -- servers -------------------------------------------------------------------------------------


def _wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pinned(
    cmd: Sequence[str], cpu: int, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        ["taskset", "-c", str(cpu), *cmd],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def ensure_mlserver() -> str:
    """MLServer in its own venv under .bench/ (created on first run)."""
    mlserver = MLSERVER_VENV / "bin" / "mlserver"
    if mlserver.exists():
        return str(mlserver)
    import sklearn

    print(f"installing MLServer {MLSERVER_VERSION} into {MLSERVER_VENV} ...", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(MLSERVER_VENV)], check=True)
    pip = str(MLSERVER_VENV / "bin" / "pip")
    subprocess.run([pip, "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run(
        [
            pip,
            "install",
            "-q",
            f"mlserver=={MLSERVER_VERSION}",
            f"mlserver-sklearn=={MLSERVER_VERSION}",
            f"scikit-learn=={sklearn.__version__}",
        ],
        check=True,
    )
    return str(mlserver)


def _pkg_version(python: str, package: str) -> str:
    out = subprocess.run(
        [python, "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "?"


# -- the benchmark -------------------------------------------------------------------------------


def _body(features: int, rows: int = 1) -> bytes:
    x = np.random.default_rng(1).normal(size=(rows, features)).round(4)
    return json.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "shape": [rows, features],
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
    ).encode()


def prepare(workdir: Path) -> tuple[Path, Path]:
    """A Flywheel project with the sklearn model and the MLPs, and an MLServer model folder."""
    import joblib
    import torch
    from sklearn.linear_model import LogisticRegression

    from flywheel.project import Project
    from flywheel.registry import Registry

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, FEATURES)).astype(np.float32)
    y = (x[:, :3].sum(axis=1) > 0).astype(np.int64)
    model = LogisticRegression(max_iter=500).fit(x, y)

    proj_dir = workdir / "flywheel"
    proj_dir.mkdir()
    (proj_dir / "flywheel.yaml").write_text(
        "project: bench\nserving:\n  max_queue_size: 64\n  max_batch_size: 64\n"
        "  max_queue_delay_us: 200\n",
        encoding="utf-8",
    )
    project = Project.open(proj_dir)
    project.prepare()
    registry = Registry(project)
    mv = registry.register_model("clf", model, flavor="sklearn", input_example=x[:4])
    registry.set_stage("clf", mv.version, "production")

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(
        torch.nn.Linear(256, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 2048),
        torch.nn.ReLU(),
        torch.nn.Linear(2048, 10),
    ).eval()
    example = rng.normal(size=(4, 256)).astype(np.float32)
    for name, config in (
        ("mlp_unbatched", {"batching": False, "max_queue_size": 512}),
        ("mlp_batched", {"max_batch_size": 64, "max_queue_delay_us": 2000, "max_queue_size": 512}),
    ):
        v = registry.register_model(
            name, mlp, flavor="pytorch", input_example=example, config=config
        )
        registry.set_stage(name, v.version, "production")
    project.close()

    ml_dir = workdir / "mlserver"
    (ml_dir / "clf").mkdir(parents=True)
    joblib.dump(model, ml_dir / "clf" / "model.joblib")
    (ml_dir / "settings.json").write_text(
        json.dumps({"parallel_workers": 0, "debug": False, "metrics_endpoint": None}),
        encoding="utf-8",
    )
    (ml_dir / "clf" / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "clf",
                "implementation": "mlserver_sklearn.SKLearnModel",
                "parameters": {"uri": "./model.joblib", "version": "v1"},
            }
        ),
        encoding="utf-8",
    )
    return proj_dir, ml_dir


def run_level(
    port: int, path: str, body: bytes, concurrency: int, n: int, limit: float
) -> LoadResult:
    drive(port, path, body, concurrency, min(200, n), 10)  # warm-up
    return drive(port, path, body, concurrency, n, limit)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run)")
    args = parser.parse_args(argv)
    n = 1500 if args.quick else 5000
    limit = 20.0 if args.quick else 60.0
    if not shutil.which("taskset"):
        raise SystemExit("taskset (util-linux) is needed to pin server and client to CPUs")
    cpus = os.cpu_count() or 1
    if cpus < 2:
        raise SystemExit("needs 2 CPUs: one for the server, one for the load generator")

    mlserver = ensure_mlserver()
    workdir = Path(tempfile.mkdtemp(prefix="flywheel-bench-serving-"))
    proj_dir, ml_dir = prepare(workdir)
    os.sched_setaffinity(0, {CLIENT_CPU})

    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
    }
    fw_port, ml_port = _free_port(), _free_port()
    ml_env = {**env, "MLSERVER_HTTP_PORT": str(ml_port), "MLSERVER_GRPC_PORT": str(_free_port())}
    body = _body(FEATURES)
    path = "/v2/models/clf/infer"
    rows: list[tuple[str, LoadResult, LoadResult]] = []

    fw = _pinned(
        [sys.executable, "-m", "flywheel.cli", "serve", "-c", str(proj_dir / "flywheel.yaml"),
         "--port", str(fw_port)],
        SERVER_CPU, env, workdir / "flywheel.log",
    )  # fmt: skip
    ml = _pinned([mlserver, "start", str(ml_dir)], SERVER_CPU, ml_env, workdir / "mlserver.log")
    try:
        _wait_http(fw_port, "/v2/health/ready", fw)
        _wait_http(ml_port, "/v2/health/ready", ml)
        results: dict[str, dict[int, LoadResult]] = {"flywheel": {}, "mlserver": {}}
        servers = {"mlserver": (ml_port, ml), "flywheel": (fw_port, fw)}
        # One server at a time (the other is stopped, so they never compete for CPU 0), and
        # interleaved: each level runs MLServer, Flywheel, Flywheel, MLServer, keeping each
        # server's best run, so that load drifting on a shared machine favours neither.
        for c in (1, 8, 64):
            for name in ("mlserver", "flywheel", "flywheel", "mlserver"):
                port, proc = servers[name]
                other = fw if name == "mlserver" else ml
                os.killpg(other.pid, signal.SIGSTOP)
                try:
                    result = run_level(port, path, body, c, n if c > 1 else n // 2, limit)
                finally:
                    os.killpg(other.pid, signal.SIGCONT)
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} died at concurrency {c}")
                best = results[name].get(c)
                if best is None or result.throughput > best.throughput:
                    results[name][c] = result
        for c in (1, 8, 64):
            rows.append(
                (f"sklearn, concurrency {c}", results["flywheel"][c], results["mlserver"][c])
            )

        os.killpg(ml.pid, signal.SIGSTOP)
        mlp_body = _body(256)
        unbatched = run_level(
            fw_port, "/v2/models/mlp_unbatched/infer", mlp_body, 64, n // 3, limit
        )
        batched = run_level(fw_port, "/v2/models/mlp_batched/infer", mlp_body, 64, n, limit)
        unloaded = results["flywheel"][64]
        overload = drive(fw_port, path, body, 640, n * 3, limit)
        alive = fw.poll() is None
        os.killpg(ml.pid, signal.SIGCONT)
    finally:
        _stop(fw)
        _stop(ml)

    import flywheel

    def fmt(r: LoadResult) -> str:
        return f"{r.throughput:8.0f} req/s  p50 {r.pct(50):6.2f} ms  p99 {r.pct(99):7.2f} ms"

    errors_fw = sum(1 for r in results["flywheel"].values() for s in r.statuses if s != 200)
    errors_ml = sum(1 for r in results["mlserver"].values() for s in r.statuses if s != 200)
    print()
    print(f"# Serving benchmark, {time.strftime('%Y-%m-%d')}, {platform.node()}")
    print(
        f"machine: {cpus} CPUs ({platform.processor() or platform.machine()}), "
        f"server pinned to CPU {SERVER_CPU}, load generator to CPU {CLIENT_CPU}; "
        f"Python {platform.python_version()}"
    )
    print(
        f"flywheel {flywheel.__version__} (1 process, uvicorn+uvloop); "
        f"MLServer {_pkg_version(str(MLSERVER_VENV / 'bin' / 'python'), 'mlserver')} "
        f"(parallel_workers 0); requests per run: {n} (c=1: {n // 2}), best of 2 runs each, "
        f"V2 JSON, 1 row x {FEATURES} FP32"
    )
    print()
    print(
        "| workload | Flywheel req/s | p50 ms | p99 ms "
        "| MLServer req/s | p50 ms | p99 ms | throughput ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, f, m in rows:
        ratio = f.throughput / m.throughput if m.throughput else float("inf")
        print(
            f"| {label} | {f.throughput:.0f} | {f.pct(50):.2f} | {f.pct(99):.2f} | "
            f"{m.throughput:.0f} | {m.pct(50):.2f} | {m.pct(99):.2f} | {ratio:.2f}x |"
        )
    print(f"\nnon-200 answers during the comparison: flywheel {errors_fw}, mlserver {errors_ml}")
    print()
    print("| PyTorch MLP 256-2048-2048-10, concurrency 64 | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    for label, r in (("batching off", unbatched), ("batching on (max 64, 2 ms)", batched)):
        print(f"| {label} | {r.throughput:.0f} | {r.pct(50):.2f} | {r.pct(99):.2f} |")
    ratio = batched.throughput / unbatched.throughput if unbatched.throughput else float("nan")
    print(f"batching speed-up: {ratio:.2f}x")
    print()
    shed = overload.statuses.count(429)
    other = len(overload.statuses) - shed - overload.statuses.count(200)
    print(
        "| sklearn, 640 connections (10x the 64 level), queue limit 64, "
        "429s held 250 ms (`shed_delay_ms`) | value |"
    )
    print("|---|---:|")
    print(f"| server still up afterwards | {'yes' if alive else 'NO'} |")
    print(f"| answered 200 / 429 / other | {overload.statuses.count(200)} / {shed} / {other} |")
    print(f"| admitted throughput | {overload.throughput:.0f} req/s |")
    print(f"| admitted p50 / p99 | {overload.pct(50):.2f} / {overload.pct(99):.2f} ms |")
    print(f"| 429 answer p50 | {overload.pct(50, 429):.2f} ms |")
    print(f"| p99 at concurrency 64 (no overload) | {unloaded.pct(99):.2f} ms |")
    print(f"| admitted p99 / p99 at 64 | {overload.pct(99) / unloaded.pct(99):.2f}x |")
    print(f"\nlogs: {workdir}")


if __name__ == "__main__":
    main()
