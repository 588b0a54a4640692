"""Flywheel serving vs Seldon MLServer on the same sklearn model, plus batching and overload.

Run: ``make bench-serving`` (or ``.venv/bin/python benchmarks/serving_vs_mlserver.py
[--quick | --smoke] [--no-neighbour] [--no-peer]``).

* The same LogisticRegression on 20 float features is served by ``flywheel serve`` (one
  process), by ``flywheel serve --workers 2`` (two processes on one port, pinned to the same
  CPU as the others: on this 2-core machine the second CPU is the load generator's) and by
  MLServer 1.7.1 (``mlserver-sklearn``, ``parallel_workers: 0``: its
  multi-process mode crashes with uvloop 0.23, SeldonIO/MLServer#2286), each pinned to CPU 0 with
  ``taskset``. MLServer is installed by this script into ``.bench/mlserver-venv``.
* Before any load, each server's answers to 16 rows are checked against the model's own
  ``predict`` (labels equal; Flywheel's probabilities within 1e-4 of ``predict_proba``), and the
  runtime that served is printed (Flywheel picks onnxruntime when its ONNX export is faster; a
  second copy registered without an ONNX export gives a like-for-like sklearn-runtime row).
* One load generator (asyncio over raw HTTP/1.1 keep-alive connections with uvloop; closed loop,
  bounded by a request count and a time limit) runs pinned to CPU 1 and sends the same V2 JSON
  request (1 row) to both, at concurrency 1, 8 and 64; then at 64 again with a CPU-bound
  neighbour process (a busy loop pinned to the servers' CPU) running beside the server.
* A PyTorch MLP (256 -> 2048 -> 2048 -> 10) is served by Flywheel with batching off and on, at
  concurrency 64.
* Overload: 256 and 640 concurrent clients against the sklearn model. The clients send a
  deadline (``X-Request-Timeout``: twice the p99 measured at 64, in this run) and honour
  ``Retry-After`` (a refused client waits that long, then comes back on a new connection);
  each request has a 10 s client timeout. Reported: admitted p99, how fast the 429s came, 5xx
  and client timeouts. One more run at 256 sends no deadline (the server's default applies).

``--smoke`` (CI): tiny sizes, MLServer skipped (its venv is not installed), a small MLP; every
step still runs and every answer is still checked. Any wrong answer or dead server exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / ".bench"
MLSERVER_VENV = BENCH / "mlserver-venv"
MLSERVER_VERSION = "1.7.1"
SERVER_CPU, CLIENT_CPU = 0, 1
FEATURES = 20
CLIENT_TIMEOUT_S = 10.0
TIMED_OUT, BROKEN = -2, -1  # statuses the load generator records for client-side failures


@dataclass(frozen=True)
class Sizes:
    """Requests per run and run time limits."""

    n: int
    limit_s: float
    passes: tuple[str, ...]  # which servers run each comparison level, in order
    mlp: tuple[int, int]  # hidden width, depth of the MLP
    overload_n: int


TWO_WORKERS = "flywheel-2w"  # ``flywheel serve --workers 2``, the same project
_PASSES = ("mlserver", "flywheel", TWO_WORKERS, "flywheel", TWO_WORKERS, "mlserver")
FULL = Sizes(5000, 60.0, _PASSES, (2048, 2), 15000)
QUICK = Sizes(1500, 20.0, _PASSES, (2048, 2), 4500)
SMOKE = Sizes(60, 10.0, ("flywheel", TWO_WORKERS), (32, 1), 900)


# -- load generator ------------------------------------------------------------------------------


@dataclass
class LoadResult:
    statuses: list[int] = field(default_factory=list)
    latencies_ms: list[float] = field(default_factory=list)
    seconds: float = 0.0
    retry_after_missing: int = 0
    samples: dict[int, str] = field(default_factory=dict)  # one error body per non-200 status

    def of(self, status: int) -> list[float]:
        return [lat for s, lat in zip(self.statuses, self.latencies_ms, strict=True) if s == status]

    def count(self, status: int) -> int:
        return self.statuses.count(status)

    @property
    def server_errors(self) -> int:
        return sum(1 for s in self.statuses if s >= 500)

    @property
    def throughput(self) -> float:
        return self.count(200) / self.seconds if self.seconds else 0.0

    def pct(self, q: float, status: int = 200) -> float:
        values = self.of(status)
        return float(np.percentile(values, q)) if values else float("nan")


def _header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


async def _connection(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    budget: list[int],
    out: LoadResult,
    honour_retry_after: bool,
) -> None:
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        out.statuses.append(BROKEN)
        out.latencies_ms.append(float("nan"))
        return
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            start = time.perf_counter()
            writer.write(request)
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), CLIENT_TIMEOUT_S)
                length = int(_header(head, b"content-length") or 0)
                payload = b""
                if length:
                    payload = await asyncio.wait_for(reader.readexactly(length), CLIENT_TIMEOUT_S)
            except TimeoutError:
                out.statuses.append(TIMED_OUT)
                out.latencies_ms.append((time.perf_counter() - start) * 1000)
                return  # the connection's state is unknown now
            status = int(head[9:12])
            if status != 200 and status not in out.samples:
                out.samples[status] = payload[:200].decode("utf-8", "replace")
            out.statuses.append(status)
            out.latencies_ms.append((time.perf_counter() - start) * 1000)
            if status == 429:
                retry = _header(head, b"retry-after")
                if retry is None:
                    out.retry_after_missing += 1
                elif honour_retry_after:
                    await asyncio.sleep(min(float(retry), max(0.0, deadline - time.perf_counter())))
                    # Back after a pause, as a client would be: on a new connection (the server
                    # may have closed the idle one meanwhile: uvicorn's keep-alive is 5 s).
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
    except (OSError, asyncio.IncompleteReadError):
        out.statuses.append(BROKEN)
        out.latencies_ms.append(float("nan"))
    finally:
        writer.close()


def drive(
    port: int,
    path: str,
    body: bytes,
    concurrency: int,
    requests: int,
    max_seconds: float,
    *,
    headers: dict[str, str] | None = None,
    honour_retry_after: bool = False,
) -> LoadResult:
    """Closed-loop load: ``concurrency`` connections share a budget of ``requests``."""
    import uvloop

    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def main() -> LoadResult:
        out = LoadResult()
        budget = [requests]
        start = time.perf_counter()
        deadline = start + max_seconds
        await asyncio.gather(
            *(
                _connection("127.0.0.1", port, request, deadline, budget, out, honour_retry_after)
                for _ in range(concurrency)
            )
        )
        out.seconds = time.perf_counter() - start
        return out

    return uvloop.run(main())


# -- servers -------------------------------------------------------------------------------------


def _wait_http(
    port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 180, streak: int = 1
) -> None:
    """Wait until ``path`` answers 200 ``streak`` times in a row, each on a new connection (with
    several worker processes on one port, each connection may reach another one)."""
    import httpx

    deadline = time.monotonic() + timeout
    ok = 0
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server on port {port} exited with {proc.returncode}")
        try:
            ok = (
                ok + 1
                if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200
                else 0
            )
        except httpx.TransportError:
            ok = 0
        if ok >= streak:
            return
        time.sleep(0.3 if ok == 0 else 0.02)
    raise RuntimeError(f"server on port {port} not ready after {timeout}s")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(
    cmd: Sequence[str], cpu: int | None, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    return subprocess.Popen(
        [*pin, *cmd],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _pause(proc: subprocess.Popen[bytes] | None, sig: signal.Signals) -> None:
    if proc is not None and proc.poll() is None:
        os.killpg(proc.pid, sig)


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


# -- the models ----------------------------------------------------------------------------------


def _rows(rows: int, features: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(rows, features)).round(4).astype(np.float32)


def _body(x: np.ndarray) -> bytes:
    tensor = {"name": "input", "shape": list(x.shape), "datatype": "FP32"}
    return json.dumps({"inputs": [{**tensor, "data": x.ravel().tolist()}]}).encode()


def prepare(workdir: Path, sizes: Sizes) -> tuple[Path, Path, Any]:
    """A Flywheel project with the sklearn model (with and without its ONNX export) and the
    MLPs, an MLServer model folder, and the fitted model itself (the reference answers)."""
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
        "project: bench\nserving:\n  max_batch_size: 64\n  max_queue_delay_us: 200\n",
        encoding="utf-8",
    )
    project = Project.open(proj_dir)
    project.prepare()
    registry = Registry(project)
    for name, onnx in (("clf", True), ("clf_sklearn", False)):
        mv = registry.register_model(
            name, model, flavor="sklearn", input_example=x[:4], export_onnx=onnx
        )
        registry.set_stage(name, mv.version, "production")

    width, depth = sizes.mlp
    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(256, width), torch.nn.ReLU()]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    mlp = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10)).eval()
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
    return proj_dir, ml_dir, model


def check_answers(port: int, model_name: str, reference: Any, server: str) -> str:
    """POST 16 rows, compare with the model's own ``predict`` (and ``predict_proba`` where the
    server returns probabilities); raise on any difference. Returns the runtime that served."""
    import httpx

    x = _rows(16, FEATURES, seed=7)
    base = f"http://127.0.0.1:{port}/v2/models/{model_name}"
    r = httpx.post(f"{base}/infer", content=_body(x), timeout=30)
    if r.status_code != 200:
        raise SystemExit(f"{server}: answer check got HTTP {r.status_code}: {r.text[:300]}")
    outputs = {o["name"]: np.asarray(o["data"]) for o in r.json()["outputs"]}
    labels = outputs.get("predictions", outputs.get("predict"))
    want = reference.predict(x)
    if labels is None or labels.astype(np.int64).tolist() != want.tolist():
        raise SystemExit(f"{server}: wrong labels {labels} (model: {want.tolist()})")
    if "probabilities" in outputs:
        probs = outputs["probabilities"].reshape(len(x), -1)
        if not np.allclose(probs, reference.predict_proba(x), atol=1e-4):
            raise SystemExit(f"{server}: probabilities differ from predict_proba")
    meta = httpx.get(base, timeout=10).json()
    params = meta.get("parameters") or {}
    return str(params.get("runtime") or meta.get("platform") or "mlserver_sklearn.SKLearnModel")


def check_mlp(port: int, name: str, width: int, depth: int) -> None:
    """The MLP's answer over HTTP equals the same module run here (within 1e-4)."""
    import httpx
    import torch

    torch.manual_seed(0)
    layers: list[torch.nn.Module] = [torch.nn.Linear(256, width), torch.nn.ReLU()]
    for _ in range(depth - 1):
        layers += [torch.nn.Linear(width, width), torch.nn.ReLU()]
    mlp = torch.nn.Sequential(*layers, torch.nn.Linear(width, 10)).eval()
    x = _rows(4, 256, seed=3)
    r = httpx.post(f"http://127.0.0.1:{port}/v2/models/{name}/infer", content=_body(x), timeout=60)
    if r.status_code != 200:
        raise SystemExit(f"flywheel {name}: HTTP {r.status_code}: {r.text[:300]}")
    got = np.asarray(r.json()["outputs"][0]["data"], dtype=np.float32).reshape(4, 10)
    with torch.no_grad():
        want = mlp(torch.from_numpy(x)).numpy()
    if not np.allclose(got, want, atol=1e-4):
        raise SystemExit(f"flywheel {name}: outputs differ from the module's own")


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class Run:
    """What one benchmark run measured (filled in as it goes)."""

    sizes: Sizes
    pinned: bool
    peer: bool
    runtimes: dict[str, str] = field(default_factory=dict)
    levels: dict[str, dict[int, LoadResult]] = field(default_factory=dict)
    neighbour: dict[str, LoadResult] = field(default_factory=dict)
    mlp: dict[str, LoadResult] = field(default_factory=dict)
    overload: list[tuple[str, LoadResult]] = field(default_factory=list)
    deadline_ms: float = 0.0
    alive: bool = True


def run_level(
    port: int, path: str, body: bytes, concurrency: int, n: int, limit: float, **kw: Any
) -> LoadResult:
    drive(port, path, body, concurrency, min(200, n), 10, **kw)  # warm-up
    return drive(port, path, body, concurrency, n, limit, **kw)


class Bench:
    """The servers of one run and the steps that load them."""

    def __init__(self, run: Run, servers: dict[str, tuple[int, subprocess.Popen[bytes]]]) -> None:
        self.run = run
        self.servers = servers
        self.body = _body(_rows(1, FEATURES))

    def _alone(self, name: str, fn: Any) -> LoadResult:
        """Run ``fn`` with every other server stopped (they never compete for the CPU)."""
        others = [proc for other, (_, proc) in self.servers.items() if other != name]
        for proc in others:
            _pause(proc, signal.SIGSTOP)
        try:
            result: LoadResult = fn()
        finally:
            for proc in others:
                _pause(proc, signal.SIGCONT)
        if self.servers[name][1].poll() is not None:
            raise SystemExit(f"{name} died during the benchmark")
        return result

    def level(self, c: int, names: Sequence[str], model: str = "clf") -> dict[str, LoadResult]:
        """Each name in ``names`` runs concurrency ``c`` once (in that order, interleaved so that
        load drifting on a shared machine favours neither); each server's best run is kept."""
        sizes = self.run.sizes
        n = sizes.n if c > 1 else max(2, sizes.n // 2)
        best: dict[str, LoadResult] = {}
        for name in names:
            if name not in self.servers:
                continue
            port = self.servers[name][0]
            path = f"/v2/models/{'clf' if name == 'mlserver' else model}/infer"
            result = self._alone(
                name, lambda p=port, q=path: run_level(p, q, self.body, c, n, sizes.limit_s)
            )
            if name not in best or result.throughput > best[name].throughput:
                best[name] = result
        return best

    def comparison(self) -> None:
        passes = self.run.sizes.passes
        for c in (1, 8, 64):
            for name, result in self.level(c, passes).items():
                self.run.levels.setdefault(name, {})[c] = result
        sk = self.level(64, ("flywheel",), model="clf_sklearn")["flywheel"]
        self.run.levels.setdefault("flywheel-sklearn", {})[64] = sk

    def with_neighbour(self, cpu: int | None, env: dict[str, str], log: Path) -> None:
        busy = [sys.executable, "-c", "while True: pass"]
        neighbour = _start(busy, cpu, env, log)
        try:
            self.run.neighbour = self.level(64, self.run.sizes.passes)
        finally:
            _stop(neighbour)

    def mlp(self) -> None:
        sizes = self.run.sizes
        port = self.servers["flywheel"][0]
        body = _body(_rows(1, 256))
        for key, name, n in (
            ("off", "mlp_unbatched", sizes.n // 3),
            ("on", "mlp_batched", sizes.n),
        ):
            self.run.mlp[key] = self._alone(
                "flywheel",
                lambda q=f"/v2/models/{name}/infer", k=n: run_level(
                    port, q, body, 64, k, sizes.limit_s
                ),
            )

    def overload(self) -> None:
        sizes = self.run.sizes
        port = self.servers["flywheel"][0]
        p99 = self.run.levels["flywheel"][64].pct(99)
        self.run.deadline_ms = max(20.0, round(2 * p99)) if math.isfinite(p99) else 100.0
        header = {"X-Request-Timeout": f"{self.run.deadline_ms:.0f}ms"}
        cases = [
            (f"256 clients, deadline {self.run.deadline_ms:.0f} ms", 256, header),
            (f"640 clients, deadline {self.run.deadline_ms:.0f} ms", 640, header),
            ("256 clients, no deadline sent (server default)", 256, {}),
        ]
        for label, c, headers in cases:
            result = self._alone(
                "flywheel",
                lambda k=c, h=headers: drive(
                    port,
                    "/v2/models/clf/infer",
                    self.body,
                    k,
                    sizes.overload_n,
                    sizes.limit_s,
                    headers=h,
                    honour_retry_after=True,
                ),
            )
            self.run.overload.append((label, result))
        self.run.alive = self.servers["flywheel"][1].poll() is None


def report(run: Run) -> None:
    import flywheel

    print()
    print(f"# Serving benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}")
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}); "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} at the end; "
        + (
            f"servers pinned to CPU {SERVER_CPU}, load generator to CPU {CLIENT_CPU}"
            if run.pinned
            else "nothing pinned (taskset or a second CPU missing)"
        )
        + f"; Python {platform.python_version()}"
    )
    peer = (
        f"MLServer {_pkg_version(str(MLSERVER_VENV / 'bin' / 'python'), 'mlserver')} "
        "(parallel_workers 0)"
        if run.peer
        else "MLServer skipped"
    )
    print(
        f"flywheel {flywheel.__version__} (1 process, uvicorn+uvloop; and `--workers 2`, both "
        f"processes on the same CPU); {peer}; requests per run: "
        f"{run.sizes.n} (c=1: {max(2, run.sizes.n // 2)}), best of "
        f"{run.sizes.passes.count('flywheel')} run(s), V2 JSON, 1 row x {FEATURES} FP32"
    )
    print(
        "answers checked against the model's own predict/predict_proba; runtime that served: "
        + ", ".join(f"{k} = {v}" for k, v in run.runtimes.items())
    )
    print()
    print(
        "| workload | Flywheel req/s | p50 ms | p99 ms | non-200 "
        "| MLServer req/s | p50 ms | p99 ms | non-200 | throughput ratio |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    ml = run.levels.get("mlserver", {})
    rows = [(f"sklearn, concurrency {c}", run.levels["flywheel"][c], ml.get(c)) for c in (1, 8, 64)]
    two = run.levels.get(TWO_WORKERS, {})
    rows += [
        (f"sklearn, concurrency {c}, Flywheel 2 workers", two[c], ml.get(c))
        for c in (1, 8, 64)
        if c in two
    ]
    rows.append(
        (
            "sklearn runtime (no ONNX) on both, concurrency 64",
            run.levels["flywheel-sklearn"][64],
            ml.get(64),
        )
    )
    if run.neighbour:
        rows.append(
            (
                "concurrency 64, CPU-bound neighbour on the server CPU",
                run.neighbour["flywheel"],
                run.neighbour.get("mlserver"),
            )
        )
        if TWO_WORKERS in run.neighbour:
            rows.append(
                (
                    "concurrency 64, CPU-bound neighbour, Flywheel 2 workers",
                    run.neighbour[TWO_WORKERS],
                    run.neighbour.get("mlserver"),
                )
            )
    for label, f, m in rows:
        print(f"| {label} | {_cells(f)} | {_cells(m)} | {_ratio(f, m)} |")
    for label, f, m in rows:
        for server, r in (("flywheel", f), ("mlserver", m)):
            for status, body in sorted((r.samples if r else {}).items()):
                print(f"{label}, {server}: a {status} said {body}")
    print()
    print("| PyTorch MLP, concurrency 64 | req/s | p50 ms | p99 ms | non-200 |")
    print("|---|---:|---:|---:|---:|")
    for key, label in (("off", "batching off"), ("on", "batching on (max 64, 2 ms)")):
        print(f"| {label} | {_cells(run.mlp[key])} |")
    print()
    _report_overload(run)


def _cells(r: LoadResult | None) -> str:
    if r is None:
        return "skipped | - | - | -"
    bad = len(r.statuses) - r.count(200)
    return f"{r.throughput:.0f} | {r.pct(50):.2f} | {r.pct(99):.2f} | {bad}"


def _ratio(f: LoadResult, m: LoadResult | None) -> str:
    if m is None or not m.throughput:
        return "-"
    return f"{f.throughput / m.throughput:.2f}x"


def _report_overload(run: Run) -> None:
    unloaded = run.levels["flywheel"][64].pct(99)
    print(
        "Overload (Flywheel, sklearn; clients honour Retry-After; "
        f"{CLIENT_TIMEOUT_S:.0f} s client timeout)"
    )
    print()
    print(
        "| clients | 200 / 429 / 5xx / client timeouts / broken | admitted req/s "
        "| admitted p50 / p99 ms | admitted p99 / p99 at 64 | 429 p50 / p99 / max ms "
        "| 429s within 50 ms | 429s without Retry-After |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for label, r in run.overload:
        shed = r.of(429)
        fast = sum(1 for lat in shed if lat <= 50.0)
        share = f"{100 * fast / len(shed):.1f}%" if shed else "-"
        ratio = r.pct(99) / unloaded if unloaded else float("nan")
        print(
            f"| {label} | {r.count(200)} / {r.count(429)} / {r.server_errors} / "
            f"{r.count(TIMED_OUT)} / {r.count(BROKEN)} | {r.throughput:.0f} | "
            f"{r.pct(50):.2f} / {r.pct(99):.2f} | {ratio:.2f}x | "
            f"{r.pct(50, 429):.2f} / {r.pct(99, 429):.2f} / "
            f"{max(shed) if shed else float('nan'):.2f} | {share} | {r.retry_after_missing} |"
        )
    print(f"\nserver still up afterwards: {'yes' if run.alive else 'NO'}")
    for label, r in run.overload:
        for status, body in sorted(r.samples.items()):
            if status >= 500:
                print(f"{label}: a {status} said {body}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer requests")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes, MLServer skipped, answers checked (CI)"
    )
    parser.add_argument(
        "--no-neighbour", action="store_true", help="skip the run beside a CPU-bound process"
    )
    parser.add_argument(
        "--no-peer", action="store_true", help="skip MLServer (Flywheel's figures only)"
    )
    args = parser.parse_args(argv)
    sizes = SMOKE if args.smoke else QUICK if args.quick else FULL
    pinned = bool(shutil.which("taskset")) and (os.cpu_count() or 1) >= 2
    if not pinned and not args.smoke:
        raise SystemExit(
            "needs taskset and 2 CPUs: one for the servers, one for the load generator"
        )
    if args.smoke or args.no_peer:
        why = "--smoke: its venv is not installed in smoke mode" if args.smoke else "--no-peer"
        print(f"peer MLServer: skipped ({why})")
    mlserver = None if args.smoke or args.no_peer else ensure_mlserver()
    workdir = Path(tempfile.mkdtemp(prefix="flywheel-bench-serving-"))
    proj_dir, ml_dir, model = prepare(workdir, sizes)
    server_cpu = SERVER_CPU if pinned else None
    if pinned:
        os.sched_setaffinity(0, {CLIENT_CPU})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["OPENBLAS_NUM_THREADS"] = "1"
    run = Run(sizes=sizes, pinned=pinned, peer=mlserver is not None)
    fw_port = _free_port()
    fw = _start(
        [sys.executable, "-m", "flywheel.cli", "serve", "-c", str(proj_dir / "flywheel.yaml"),
         "--port", str(fw_port)],
        server_cpu, env, workdir / "flywheel.log",
    )  # fmt: skip
    ml = None
    fw2_port = _free_port()
    fw2 = _start(
        [sys.executable, "-m", "flywheel.cli", "serve", "-c", str(proj_dir / "flywheel.yaml"),
         "--port", str(fw2_port), "--workers", "2"],
        server_cpu, env, workdir / "flywheel-2w.log",
    )  # fmt: skip
    servers = {"flywheel": (fw_port, fw), TWO_WORKERS: (fw2_port, fw2)}
    if mlserver is not None:
        ml_port = _free_port()
        ml_env = {
            **env,
            "MLSERVER_HTTP_PORT": str(ml_port),
            "MLSERVER_GRPC_PORT": str(_free_port()),
        }
        ml = _start([mlserver, "start", str(ml_dir)], server_cpu, ml_env, workdir / "mlserver.log")
        servers["mlserver"] = (ml_port, ml)
    try:
        for name, (port, proc) in servers.items():
            _wait_http(port, "/v2/health/ready", proc, streak=20 if name == TWO_WORKERS else 1)
        run.runtimes["flywheel clf"] = check_answers(fw_port, "clf", model, "flywheel")
        run.runtimes["flywheel clf_sklearn"] = check_answers(
            fw_port, "clf_sklearn", model, "flywheel"
        )
        for _ in range(4):  # new connections: both workers are likely to answer one
            run.runtimes["flywheel 2 workers clf"] = check_answers(
                fw2_port, "clf", model, "flywheel 2 workers"
            )
        if ml is not None:
            run.runtimes["mlserver"] = check_answers(
                servers["mlserver"][0], "clf", model, "mlserver"
            )
        for name in ("mlp_unbatched", "mlp_batched"):
            check_mlp(fw_port, name, *sizes.mlp)
        bench = Bench(run, servers)
        bench.comparison()
        if not args.no_neighbour:
            bench.with_neighbour(server_cpu, env, workdir / "neighbour.log")
        bench.mlp()
        bench.overload()
    finally:
        _stop(fw)
        _stop(fw2)
        _stop(ml)
    report(run)
    print(f"\nlogs: {workdir}")
    if not run.alive:
        raise SystemExit("flywheel died under overload")


if __name__ == "__main__":
    main()
