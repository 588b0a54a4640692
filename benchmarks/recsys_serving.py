"""Online serving of the recommender under load, at 1,000,000 users x 1,000,000 items.

Run with ``make bench-recsys`` (or ``.venv/bin/python benchmarks/recsys_serving.py``).

What it does, in one run (every phase prints its time):

1. **data** — the seeded synthetic shop (``generate_transactions``) at ``--scale`` users and
   items (default 1,000,000 x 1,000,000, ``cover_catalogue=True`` so every launched item sells
   at least once), cleaned; cached as Parquet in ``--workdir`` for reruns;
2. **per store** (``--stores sqlite,redis``): a project whose online store is the embedded
   SQLite file or Redis (``redis://127.0.0.1:6379/0?prefix=fwbench:<random>:``, the event log
   too; every key under that prefix is deleted at the end), ``flywheel.recsys.ingest`` into it,
   then the server as a real subprocess on 127.0.0.1 (``flywheel up``, or ``--server
   recs-serve``), measured for:

   * **latency under load**: a bounded open-loop load generator (raw asyncio HTTP/1.1,
     keep-alive, one request scheduled every ``1/rate`` s for ``--duration`` s; latency counted
     from the *scheduled* send time, so a stalled server cannot hide queueing — no coordinated
     omission) on ``GET /recommendations/{user_id}?k=20`` for a mix of known users, new users
     and the product surface, at each of ``--rates``; p50 / p99 / max, the server's own
     per-stage ``latency_ms`` and the fallbacks it took;
   * **freshness**: ``POST /events`` (a view of a popular item by a user never seen before),
     then back-to-back ``GET /recommendations`` until the response shows the event (a
     ``session`` candidate, built from the user's recent items), ``--trials`` times; and the
     same event through the stream: ``POST /features/online`` until ``recs_user_recent``
     lists the item (what *another* server process sees);
   * **memory**: the server's RSS and peak RSS (``/proc/<pid>/status``) after the load;

3. **peer**: a plain FastAPI app (same uvicorn, same machine, same data) that does only the
   bare in-memory lookups — the user's purchase profile times the item-item co-occurrence
   matrix, and popularity — with no feature store, no experiment, no deadline or fallbacks, no
   re-ranking. It is the floor of what a Python service can answer this request with, not a
   feature-equivalent product.

The load generator shares the 2 cores with the server; both are on 127.0.0.1. Options:
``--scale N`` (users = items; e.g. 100000 for a quick run), ``--rates``, ``--duration``,
``--trials``, ``--stores``, ``--no-peer``, ``--workdir``, ``--server``. Environment:
``RECSYS_SERVING_SCALE`` sets the default scale.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REDIS = "redis://127.0.0.1:6379/0"
EVENT_REASONS = {"session", "category", "content"}  # candidates made from a user's recent items
STAGES_ORDER = ("experiment", "features", "candidates", "ranking", "rerank", "total")


# -- small helpers ----------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS / VmHWM (MiB) of ``pid`` plus its children (uvicorn workers)."""
    out = {"rss": 0.0, "hwm": 0.0}
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    for p in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out["rss" if key == "VmRSS" else "hwm"] += int(value.split()[0]) / 1024
    return out


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` and its children (uvicorn workers)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for p in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


# -- data -------------------------------------------------------------------------------------


@dataclass
class Shop:
    lines_path: Path
    users: np.ndarray  # known user ids
    popular_items: list[str]  # items with co-occurrence neighbours, for events / product pages
    items: int
    n_lines: int
    seconds: dict[str, float] = field(default_factory=dict)


def make_shop(scale: int, workdir: Path) -> Shop:
    """The cleaned synthetic lines at ``scale`` (generated once, then read from the cache)."""
    import pandas as pd

    from flywheel.recsys import SyntheticConfig, clean_transactions, generate_transactions

    cfg = SyntheticConfig(
        n_users=scale,
        n_items=scale,
        invoices_per_user=2,
        basket_size=5,
        cover_catalogue=True,
    )
    path = workdir / f"lines-{scale}-seed{cfg.seed}.parquet"
    seconds: dict[str, float] = {}
    if path.is_file():
        t = time.perf_counter()
        lines = pd.read_parquet(path)
        seconds["read cached lines"] = time.perf_counter() - t
    else:
        t = time.perf_counter()
        raw = generate_transactions(cfg)
        seconds["generate"] = time.perf_counter() - t
        log(f"generated {len(raw):,} invoice lines in {seconds['generate']:.1f} s")
        t = time.perf_counter()
        lines = clean_transactions(raw)
        del raw
        seconds["clean"] = time.perf_counter() - t
        workdir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        lines.to_parquet(tmp)
        os.replace(tmp, path)
    codes = lines["StockCode"].astype(str)
    counts = codes.value_counts()
    shop = Shop(
        lines_path=path,
        users=np.unique(lines["CustomerID"].to_numpy()).astype(np.int64),
        popular_items=[str(i) for i in counts.index[:2000]],
        items=len(counts),
        n_lines=len(lines),
        seconds=seconds,
    )
    return shop


# -- projects and servers ---------------------------------------------------------------------


def write_project(root: Path, store: str, prefix: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    online = "sqlite:///.flywheel/online.db"
    events = "sqlite:///.flywheel/events.db"
    if store == "redis":
        online = events = f"{REDIS}?prefix={prefix}"
    (root / "flywheel.yaml").write_text(
        "\n".join(
            [
                "project: bench",
                "metadata: sqlite:///.flywheel/metadata.db",
                f"online_store: '{online}'",
                "offline_store: .flywheel/offline",
                f"event_log: '{events}'",
                "artifacts: .flywheel/artifacts",
                "auth: {required: false}",
                "recsys:",
                "  content_method: tfidf   # MiniLM over a million texts is a batch job",
                "  two_tower_model: null   # no trained models at this scale in this run",
                "  ranker_endpoint: null",
                "",
            ]
        ),
        encoding="utf-8",
    )


def ingest_project(root: Path, shop: Shop) -> float:
    import inspect

    import pandas as pd

    from flywheel.project import Project
    from flywheel.recsys import ingest

    project = Project.open(root)
    project.prepare()
    lines = pd.read_parquet(shop.lines_path)
    kwargs: dict[str, Any] = {}
    if "history_weeks" in inspect.signature(ingest).parameters:
        kwargs["history_weeks"] = 0  # online serving needs the latest snapshot only
    t = time.perf_counter()
    last = [t]

    def step(description: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 5 or done == total:
            log(f"  ingest: {description} ({done}/{total}, {now - t:.0f} s)")
            last[0] = now

    report = ingest(project, lines, step=step, **kwargs)
    took = time.perf_counter() - t
    log(
        f"  ingested {report.lines:,} lines, {report.users:,} users, {report.items:,} items "
        f"in {took:.1f} s"
    )
    project.close()
    return took


def flywheel_cli(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"flywheel {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout.strip()


class Server:
    """A server subprocess on 127.0.0.1 with its output in a log file."""

    def __init__(self, argv: list[str], cwd: Path, log_path: Path, env: dict[str, str]) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **env}
        )

    def wait_ready(self, probe: str, timeout: float) -> float:
        import httpx

        t0 = time.perf_counter()
        while True:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{tail}")
            try:
                r = httpx.get(self.base + probe, timeout=30)
                if r.status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"server not ready after {timeout:.0f} s ({self.log_path})")
            time.sleep(1.0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


# -- the load generator -----------------------------------------------------------------------


class Http:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams (no client framework, so the
    generator stays cheap next to the server). At most ``max_connections`` in flight."""

    def __init__(self, port: int, max_connections: int = 256) -> None:
        self.port = port
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(max_connections)

    async def request(
        self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        async with self.slots:
            return await self._request(method, path, body, headers)

    async def _request(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None
    ) -> tuple[int, bytes]:
        if self.idle:
            reader, writer = self.idle.pop()
        else:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            for k, v in (headers or {}).items():
                head += f"{k}: {v}\r\n"
            if body:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            status_line = await reader.readline()
            if not status_line:
                raise ConnectionError("connection closed")
            status = int(status_line.split()[1])
            length = -1
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                key, _, value = line.decode("latin-1").partition(":")
                key = key.strip().lower()
                if key == "content-length":
                    length = int(value)
                elif key == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            if chunked:
                data = b""
                while True:
                    size = int((await reader.readline()).strip(), 16)
                    if size == 0:
                        await reader.readline()
                        break
                    data += await reader.readexactly(size)
                    await reader.readline()
            else:
                data = await reader.readexactly(length) if length > 0 else b""
        except BaseException:
            writer.close()
            raise
        self.idle.append((reader, writer))
        return status, data

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


@dataclass
class LoadResult:
    rate: int
    sent: int
    latencies_ms: list[float]  # from the scheduled send time
    by_kind: dict[str, list[float]]
    errors: int
    timeouts: int
    stages: dict[str, list[float]]
    fallbacks: dict[str, int]
    wall_s: float
    lag_ms: list[float]  # how late the generator sent (its own health)
    server_cpu_ms: float = float("nan")  # server CPU per request (robust to a busy machine)


def request_mix(shop: Shop, n: int, seed: int) -> list[tuple[str, str]]:
    """(kind, path) per request: 70 % known users (home), 15 % new users, 15 % product pages."""
    rng = random.Random(seed)
    top_user = int(shop.users.max())
    out = []
    for _ in range(n):
        x = rng.random()
        if x < 0.70:
            u = int(shop.users[rng.randrange(len(shop.users))])
            out.append(("known", f"/recommendations/{u}?k=20"))
        elif x < 0.85:
            u = top_user + 1 + rng.randrange(10_000_000)
            out.append(("new", f"/recommendations/{u}?k=20"))
        else:
            u = int(shop.users[rng.randrange(len(shop.users))])
            item = shop.popular_items[rng.randrange(len(shop.popular_items))]
            out.append(("product", f"/recommendations/{u}?k=20&surface=product&item_id={item}"))
    return out


async def open_loop(
    port: int, plan: list[tuple[str, str]], rate: float, timeout_s: float = 10.0
) -> LoadResult:
    http = Http(port)
    interval = 1.0 / rate
    results: list[tuple[str, float, int, bytes] | None] = [None] * len(plan)
    lag: list[float] = []
    clock = time.perf_counter  # the loop's own clock (uvloop) has 1 ms resolution

    async def one(i: int, kind: str, path: str, scheduled: float) -> None:
        try:
            status, body = await asyncio.wait_for(http.request("GET", path), timeout_s)
        except Exception:
            # a timeout counts as the timeout itself: a lower bound of its latency
            results[i] = (kind, timeout_s * 1000.0, -1, b"")
            return
        results[i] = (kind, (clock() - scheduled) * 1000.0, status, body)

    tasks = []
    start = clock() + 0.05
    for i, (kind, path) in enumerate(plan):
        scheduled = start + i * interval
        delay = scheduled - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        lag.append(max(0.0, clock() - scheduled) * 1000.0)
        tasks.append(asyncio.create_task(one(i, kind, path, scheduled)))
    await asyncio.gather(*tasks)
    wall = clock() - start
    await http.close()

    out = LoadResult(rate, len(plan), [], {}, 0, 0, {}, {}, wall, lag)
    for r in results:
        assert r is not None
        kind, ms, status, body = r
        if status == -1:
            out.timeouts += 1
            out.latencies_ms.append(ms)
            continue
        out.latencies_ms.append(ms)
        out.by_kind.setdefault(kind, []).append(ms)
        if status != 200:
            out.errors += 1
            continue
        payload = json.loads(body)
        for stage, value in payload.get("latency_ms", {}).items():
            out.stages.setdefault(stage, []).append(float(value))
        for reason in payload.get("fallbacks", []):
            out.fallbacks[reason] = out.fallbacks.get(reason, 0) + 1
    return out


def run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


# -- freshness --------------------------------------------------------------------------------


@dataclass
class Freshness:
    response_ms: list[float]
    response_polls: list[int]
    stream_ms: list[float]
    misses: int


async def freshness(port: int, shop: Shop, token: str, trials: int, seed: int) -> Freshness:
    """Event posted -> first response that reflects it (and -> stream view that holds it)."""
    http = Http(port, max_connections=4)
    # the page of a user never seen holds none of these reasons (checked on the first trial)
    status, data = await http.request("GET", f"/recommendations/{int(shop.users.max()) + 7}?k=20")
    before = (
        {r for it in json.loads(data)["items"] for r in it["reasons"]} if status == 200 else set()
    )
    if before & EVENT_REASONS:
        raise RuntimeError(f"a new user's page already has {sorted(before & EVENT_REASONS)}")
    rng = random.Random(seed)
    base_user = int(shop.users.max()) + 50_000_000 + rng.randrange(1_000_000) * 100
    out = Freshness([], [], [], 0)
    auth = {"Authorization": f"Bearer {token}"}
    clock = time.perf_counter
    for trial in range(trials):
        user = base_user + trial
        item = shop.popular_items[rng.randrange(200)]
        body = json.dumps(
            {"events": [{"user_id": user, "item_id": item, "event_type": "view"}]}
        ).encode()
        t0 = clock()
        status, data = await http.request("POST", "/events", body, auth)
        if status != 200:
            raise RuntimeError(f"POST /events answered {status}: {data[:300]!r}")
        polls = 0
        seen = False
        while clock() - t0 < 5.0:
            polls += 1
            status, data = await http.request("GET", f"/recommendations/{user}?k=20")
            # A user never seen before gets only trending / popular / exploration items; a
            # candidate built from their recent items (session, category, content) is the event.
            if status == 200 and any(
                EVENT_REASONS & set(it["reasons"]) for it in json.loads(data)["items"]
            ):
                seen = True
                break
        if seen:
            out.response_ms.append((clock() - t0) * 1000.0)
            out.response_polls.append(polls)
        else:
            out.misses += 1
        # The same event through the stream processor: what another process would see.
        query = json.dumps(
            {"features": ["recs_user_recent:last_items"], "entities": {"user_id": [user]}}
        ).encode()
        while clock() - t0 < 10.0:
            status, data = await http.request("POST", "/features/online", query)
            if status == 200:
                values = json.loads(data)["values"]["last_items"][0] or []
                if item in values:
                    out.stream_ms.append((clock() - t0) * 1000.0)
                    break
            await asyncio.sleep(0.005)
    await http.close()
    return out


# -- the peer ---------------------------------------------------------------------------------


def serve_peer(lines_path: Path, port: int) -> None:
    """A plain FastAPI app with only the in-memory lookups (see the module docstring)."""
    import pandas as pd
    import scipy.sparse as sp
    import uvicorn
    from fastapi import FastAPI, Query
    from fastapi.responses import ORJSONResponse

    lines = pd.read_parquet(lines_path, columns=["CustomerID", "StockCode", "InvoiceNo"])
    u_codes, users = pd.factorize(lines["CustomerID"].to_numpy(), sort=True)
    i_codes, items = pd.factorize(lines["StockCode"].astype(str).to_numpy(), sort=True)
    b_codes, _ = pd.factorize(lines["InvoiceNo"].astype(str).to_numpy())
    del lines
    n_items = len(items)
    ones = np.ones(len(i_codes), dtype=np.float32)
    baskets = sp.csr_matrix((ones, (b_codes, i_codes)), shape=(b_codes.max() + 1, n_items))
    baskets.data[:] = 1.0
    cooc = (baskets.T @ baskets).tocsr()
    counts = cooc.diagonal().astype(np.float64)
    cooc.setdiag(0)
    cooc.eliminate_zeros()
    norm = 1.0 / np.sqrt(np.maximum(counts, 1.0))
    sim = (sp.diags(norm) @ cooc @ sp.diags(norm)).tocsr().astype(np.float32)
    profile = sp.csr_matrix((ones, (u_codes, i_codes)), shape=(len(users), n_items))
    profile.sum_duplicates()
    popular = np.argsort(-counts, kind="stable")[:1000]
    user_row = {int(u): r for r, u in enumerate(users)}
    item_ids = [str(i) for i in items]
    item_row = {i: r for r, i in enumerate(item_ids)}
    app = FastAPI()

    def top(rows: np.ndarray, values: np.ndarray, k: int) -> list[int]:
        if len(rows) > k:
            part = np.argpartition(-values, k - 1)[:k]
            rows, values = rows[part], values[part]
        return rows[np.argsort(-values, kind="stable")].tolist()

    @app.get("/recommendations/{user_id}")
    def recommend(
        user_id: int, k: int = Query(20), surface: str = "home", item_id: str | None = None
    ) -> ORJSONResponse:
        t0 = time.perf_counter()
        picked: list[int] = []
        if surface == "product" and item_id in item_row:
            s = sim[item_row[item_id]]
            picked = top(s.indices, s.data, k)
        else:
            row = user_row.get(user_id)
            if row is not None:
                s = (profile[row] @ sim).tocsr()
                picked = top(s.indices, s.data, k)
        seen = set(picked)
        picked += [int(r) for r in popular[: 2 * k] if int(r) not in seen][: k - len(picked)]
        took = (time.perf_counter() - t0) * 1000.0
        return ORJSONResponse(
            {
                "user_id": user_id,
                "items": [{"item_id": item_ids[r]} for r in picked],
                "latency_ms": {"total": round(took, 3)},
            }
        )

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


# -- a sampling profiler for the server process (--profile) -------------------------------------

PROFILE_PHASES = {  # a frame (function name) that puts a sampled stack in a phase
    "requests: GET /recommendations": "get_recommendations",
    "requests: their feature reads (a worker pool)": "read_features",
    "requests: POST /events": "post_events",
    "start-up: fitting the in-memory state": "warm",
}


def run_profiled(out: Path, argv: list[str]) -> None:
    """Run ``python -m flywheel.cli ARGV`` with a thread that samples every thread's stack
    every 2 ms (a poor man's py-spy, so no extra package is needed); at exit, write where the
    request handlers and the start-up spent their time (self and inclusive, by file:line)."""
    import atexit
    import collections
    import runpy
    import threading

    samples: dict[str, collections.Counter[tuple[str, ...]]] = {
        phase: collections.Counter() for phase in PROFILE_PHASES
    }
    stop = threading.Event()

    def sample() -> None:
        me = threading.get_ident()
        while not stop.wait(0.002):
            for ident, frame in sys._current_frames().items():
                if ident == me:
                    continue
                stack: list[str] = []
                names: set[str] = set()
                f: Any = frame
                while f is not None:
                    code = f.f_code
                    stack.append(f"{code.co_filename}:{f.f_lineno}:{code.co_name}")
                    names.add(code.co_name)
                    f = f.f_back
                for phase, marker in PROFILE_PHASES.items():
                    if marker in names:  # waits included: a lock queue shows where it waits
                        samples[phase][tuple(stack)] += 1
                        break

    thread = threading.Thread(target=sample, name="bench-sampler", daemon=True)

    def short(entry: str) -> str:
        return entry.replace(str(ROOT) + "/", "").replace(
            str(Path(sys.prefix)) + "/lib/python3.11/site-packages/", ""
        )

    def section(phase: str, counts: collections.Counter[tuple[str, ...]]) -> list[str]:
        total = sum(counts.values())
        if not total:
            return [f"## {phase}: no samples", ""]
        own: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        nearest: collections.Counter[str] = collections.Counter()
        for stack, n in counts.items():
            own[stack[0]] += n
            for entry in set(stack):
                incl[entry] += n
            # the time of library code charged to the Flywheel line that called it
            ours = next((e for e in stack if "/src/flywheel/" in e), stack[0])
            nearest[ours] += n
        lines = [
            f"## {phase}: {total} thread samples ({total * 2 / 1000:.1f} thread-seconds)",
            "",
            "self (the line a sampled thread was on):",
        ]
        lines += [f"{n:7d} {100 * n / total:5.1f}%  {short(e)}" for e, n in own.most_common(30)]
        lines += ["", "self, charged to the nearest Flywheel line (libraries included):"]
        lines += [f"{n:7d} {100 * n / total:5.1f}%  {short(e)}" for e, n in nearest.most_common(30)]
        lines += ["", "inclusive, Flywheel code (file:line:function):"]
        ours = [(e, n) for e, n in incl.most_common() if "/src/flywheel/" in e]
        lines += [f"{n:7d} {100 * n / total:5.1f}%  {short(e)}" for e, n in ours[:45]]
        return [*lines, ""]

    def dump() -> None:
        stop.set()
        lines: list[str] = []
        for phase, counts in samples.items():
            lines += section(phase, counts)
        out.write_text("\n".join(lines) + "\n", encoding="utf-8")

    atexit.register(dump)
    thread.start()
    sys.argv = ["flywheel", *argv]
    runpy.run_module("flywheel.cli", run_name="__main__", alter_sys=True)


# -- reporting --------------------------------------------------------------------------------


@dataclass
class Row:
    system: str
    rate: int
    result: LoadResult


def load_table(rows: list[Row]) -> str:
    head = (
        "| system | rate (req/s) | sent | answered 200/s | p50 ms | p99 ms | max ms "
        "| errors / timeouts | server total p50 / p99 ms | server CPU ms/req |"
        "\n|---|---|---|---|---|---|---|---|---|---|"
    )
    out = [head]
    for row in rows:
        r = row.result
        total = r.stages.get("total", [])
        out.append(
            f"| {row.system} | {r.rate} | {r.sent} "
            f"| {(r.sent - r.errors - r.timeouts) / r.wall_s:.1f} "
            f"| {pct(r.latencies_ms, 50):.1f} | {pct(r.latencies_ms, 99):.1f} "
            f"| {max(r.latencies_ms):.1f} | {r.errors} / {r.timeouts} "
            f"| {pct(total, 50):.2f} / {pct(total, 99):.2f} | {r.server_cpu_ms:.1f} |"
        )
    return "\n".join(out)


def kind_table(rows: list[Row]) -> str:
    out = [
        "| system | rate | known p50 / p99 | new p50 / p99 | product p50 / p99 |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        cells = []
        for kind in ("known", "new", "product"):
            v = row.result.by_kind.get(kind, [])
            cells.append(f"{pct(v, 50):.1f} / {pct(v, 99):.1f}" if v else "-")
        out.append(f"| {row.system} | {row.rate} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def stage_table(rows: list[Row]) -> str:
    stages: list[str] = []
    for row in rows:
        for s in row.result.stages:
            if s not in stages:
                stages.append(s)
    stages.sort(key=lambda s: (STAGES_ORDER.index(s) if s in STAGES_ORDER else 50, s))
    out = [
        "| system | rate | " + " | ".join(f"{s} p50 / p99" for s in stages) + " | fallbacks |",
        "|---|---|" + "---|" * len(stages) + "---|",
    ]
    for row in rows:
        r = row.result
        cells = [
            f"{pct(r.stages[s], 50):.2f} / {pct(r.stages[s], 99):.2f}" if s in r.stages else "-"
            for s in stages
        ]
        falls = ", ".join(f"{k} {v}" for k, v in sorted(r.fallbacks.items())) or "none"
        out.append(f"| {row.system} | {r.rate} | " + " | ".join(cells) + f" | {falls} |")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------------


@contextlib.contextmanager
def redis_prefix_cleanup(prefix: str) -> Iterator[None]:
    try:
        yield
    finally:
        import redis

        client = redis.Redis.from_url(REDIS, socket_connect_timeout=2)
        removed = 0
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{prefix}*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                removed += int(client.delete(*batch))
                batch = []
        if batch:
            removed += int(client.delete(*batch))
        client.close()
        log(f"  redis: deleted {removed:,} keys under {prefix}")


def measure_store(
    store: str, shop: Shop, args: argparse.Namespace, rows: list[Row], notes: list[str]
) -> dict[str, Any]:
    workdir: Path = args.workdir
    root = workdir / f"project-{store}-{args.scale}"
    prefix = f"fwbench:{uuid.uuid4().hex[:10]}:"
    if root.exists():
        shutil.rmtree(root)
    write_project(root, store, prefix)
    facts: dict[str, Any] = {"store": store}
    cleanup = redis_prefix_cleanup(prefix) if store == "redis" else contextlib.nullcontext()
    with cleanup:
        log(f"[{store}] ingest into {root}")
        facts["ingest_s"] = ingest_project(root, shop)
        token = flywheel_cli(
            "tokens", "create", "--role", "writer", "--name", "bench", "-q", cwd=root
        )
        if args.server == "up":
            cli = ["up", "--port", "{port}", "--log-level", "warning"]
        else:
            cli = ["recs", "serve", "--port", "{port}"]
        argv = [sys.executable, "-m", "flywheel.cli", *cli]
        if args.profile:
            out = (workdir / f"profile-{store}.txt").resolve()
            argv = [sys.executable, str(Path(__file__).resolve()), "--run-profiled", str(out), *cli]
        server = Server(argv, root, workdir / f"server-{store}.log", {})
        try:
            probe = f"/recommendations/{int(shop.users[0])}?k=20"
            log(f"[{store}] starting `flywheel {args.server}` (fits the in-memory state)")
            facts["startup_s"] = server.wait_ready(probe, args.startup_timeout)
            facts["mem_ready"] = proc_memory(server.proc.pid)
            log(
                f"[{store}] ready in {facts['startup_s']:.0f} s, "
                f"RSS {facts['mem_ready']['rss']:,.0f} MiB"
            )
            port = server.port
            # warm-up: every code path once, unmeasured
            warm = request_mix(shop, 200, seed=99)
            run_loop(open_loop(port, warm, 50))
            for i, rate in enumerate(args.rates):
                plan = request_mix(shop, int(rate * args.duration), seed=i)
                cpu0 = proc_cpu_s(server.proc.pid)
                result = run_loop(open_loop(port, plan, rate))
                result.server_cpu_ms = (proc_cpu_s(server.proc.pid) - cpu0) * 1000 / len(plan)
                rows.append(Row(f"flywheel ({store})", rate, result))
                log(
                    f"[{store}] {rate} req/s: p50 {pct(result.latencies_ms, 50):.1f} ms, "
                    f"p99 {pct(result.latencies_ms, 99):.1f} ms, errors "
                    f"{result.errors + result.timeouts}"
                )
            if args.trials:
                fresh = run_loop(freshness(port, shop, token, args.trials, seed=7))
                facts["freshness"] = fresh
                log(
                    f"[{store}] freshness: response p50 {pct(fresh.response_ms, 50):.1f} ms, "
                    f"p99 {pct(fresh.response_ms, 99):.1f} ms; stream view p50 "
                    f"{pct(fresh.stream_ms, 50):.1f} ms, p99 {pct(fresh.stream_ms, 99):.1f} ms"
                )
            facts["mem_after"] = proc_memory(server.proc.pid)
        finally:
            server.stop()
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    return facts


def measure_peer(shop: Shop, args: argparse.Namespace, rows: list[Row]) -> dict[str, Any]:
    argv = [sys.executable, __file__, "--serve-peer", str(shop.lines_path), "--port", "{port}"]
    server = Server(argv, ROOT, args.workdir / "server-peer.log", {})
    facts: dict[str, Any] = {}
    try:
        log("[peer] starting the plain FastAPI app")
        facts["startup_s"] = server.wait_ready("/healthz", args.startup_timeout)
        run_loop(open_loop(server.port, request_mix(shop, 200, seed=99), 50))
        for i, rate in enumerate(args.rates):
            plan = request_mix(shop, int(rate * args.duration), seed=i)
            cpu0 = proc_cpu_s(server.proc.pid)
            result = run_loop(open_loop(server.port, plan, rate))
            result.server_cpu_ms = (proc_cpu_s(server.proc.pid) - cpu0) * 1000 / len(plan)
            rows.append(Row("peer: plain FastAPI lookups", rate, result))
            log(
                f"[peer] {rate} req/s: p50 {pct(result.latencies_ms, 50):.1f} ms, "
                f"p99 {pct(result.latencies_ms, 99):.1f} ms"
            )
        facts["mem"] = proc_memory(server.proc.pid)
    finally:
        server.stop()
    return facts


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--run-profiled":
        run_profiled(Path(sys.argv[2]), sys.argv[3:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale", type=int, default=int(os.environ.get("RECSYS_SERVING_SCALE", "1000000"))
    )
    parser.add_argument("--rates", default="50,100,200")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per rate")
    parser.add_argument("--trials", type=int, default=100, help="freshness trials (0: skip)")
    parser.add_argument("--stores", default="sqlite,redis")
    parser.add_argument("--server", choices=("up", "recs-serve"), default="up")
    parser.add_argument("--no-peer", action="store_true")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".bench" / "recsys-serving")
    parser.add_argument("--startup-timeout", type=float, default=1800.0)
    parser.add_argument("--keep", action="store_true", help="keep the projects afterwards")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the server's stacks (every 2 ms) and write where the time went to "
        "WORKDIR/profile-<store>.txt",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny run (2,000 x 2,000, SQLite, `recs serve`, one rate for 2 s, 3 freshness "
        "trials, no peer)",
    )
    parser.add_argument("--serve-peer", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_peer is not None:
        serve_peer(args.serve_peer, args.port)
        return 0
    if args.smoke:
        args.scale, args.rates, args.duration, args.trials = 2000, "20", 2.0, 3
        args.stores, args.no_peer, args.server = "sqlite", True, "recs-serve"
        args.workdir = args.workdir.parent / "recsys-serving-smoke"
        print("peer in-memory FastAPI app: skipped in --smoke (measured in the full run)")
    args.rates = [int(r) for r in args.rates.split(",") if r]
    stores = [s for s in args.stores.split(",") if s]
    started = time.perf_counter()
    print(f"# recsys serving benchmark — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; load average {os.getloadavg()[0]:.1f} at start"
    )
    log(f"data: synthetic shop, {args.scale:,} users x {args.scale:,} items")
    shop = make_shop(args.scale, args.workdir)
    for what, s in shop.seconds.items():
        log(f"  {what}: {s:.1f} s")
    log(
        f"  {shop.n_lines:,} clean purchase lines, {len(shop.users):,} users with purchases, "
        f"{shop.items:,} items sold"
    )
    rows: list[Row] = []
    notes: list[str] = []
    facts = [measure_store(s, shop, args, rows, notes) for s in stores]
    peer = None if args.no_peer else measure_peer(shop, args, rows)

    print()
    print(
        f"## GET /recommendations/{{user_id}}?k=20, open loop, {args.duration:.0f} s per rate "
        f"({args.scale:,} users x {args.scale:,} items; mix 70 % known users, 15 % new users, "
        "15 % product pages; latency from the scheduled send time)"
    )
    print()
    print(load_table(rows))
    print()
    print("Latency by request kind (ms, client side):")
    print()
    print(kind_table(rows))
    print()
    print("Server-side stages (`latency_ms` of the responses, ms):")
    print()
    print(stage_table([r for r in rows if not r.system.startswith("peer")]))
    print()
    print("## Freshness, start-up and memory")
    print()
    print(
        "| store | ingest s | start-up s | RSS ready MiB | RSS after load MiB | peak RSS MiB "
        "| event -> response p50 / p99 / max ms (polls p50) | event -> stream view p50 / p99 ms "
        "| misses |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for f in facts:
        fr: Freshness | None = f.get("freshness")
        resp = stream = "-"
        misses = "-"
        if fr is not None:
            resp = (
                f"{pct(fr.response_ms, 50):.1f} / {pct(fr.response_ms, 99):.1f} / "
                f"{max(fr.response_ms, default=float('nan')):.1f} "
                f"({pct([float(p) for p in fr.response_polls], 50):.0f})"
            )
            stream = f"{pct(fr.stream_ms, 50):.1f} / {pct(fr.stream_ms, 99):.1f}"
            misses = f"{fr.misses} of {args.trials}"
        print(
            f"| {f['store']} | {f['ingest_s']:.0f} | {f['startup_s']:.0f} "
            f"| {f['mem_ready']['rss']:,.0f} | {f['mem_after']['rss']:,.0f} "
            f"| {f['mem_after']['hwm']:,.0f} | {resp} | {stream} | {misses} |"
        )
    if peer is not None:
        print(
            f"| peer (in memory) | - | {peer['startup_s']:.0f} | - | {peer['mem']['rss']:,.0f} "
            f"| {peer['mem']['hwm']:,.0f} | no events | - | - |"
        )
    for note in notes:
        print(f"- {note}")
    print()
    print(f"total time {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
