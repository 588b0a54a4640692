"""Training platform benchmark: Flywheel vs raw ``torchrun`` on the same script, in one run.

Run with ``make bench-training`` (or ``.venv/bin/python benchmarks/training_bench.py``);
``--smoke`` (CI) runs one 1-epoch job each way and one Flywheel crash/resume; ``--crash-only``
runs just the crash -> resume comparison.

The workload is ``tests/training/workloads/ddp_train.py``: a tiny MLP (dropout, SGD with
momentum, StepLR) trained with CPU DDP (gloo) on a 512-row Parquet file read through
``ShardedParquetDataset``, checkpointing every 5 steps, ``OMP_NUM_THREADS=1``. Flywheel runs
as users run it: the real scheduler loop (``Scheduler.run``, default ``poll_interval``) in a
thread, jobs submitted through ``TrainingService``. Figures:

* **overhead**: wall time of the same 2-process job under raw ``torchrun`` (the peer) and
  under Flywheel (submit -> scheduler -> supervisor -> torchrun -> SUCCEEDED recorded), the CPU
  seconds each spends, submit -> first step, and a timeline of where a Flywheel job's seconds
  go (launch recorded, supervisor up, first/last step, agents exited, final state recorded);
* **samples/s** with 1 and 2 processes (rank 0's step timestamps, steady state);
* **checkpoint save / restore MB/s** (``Checkpointer``: torch.save + sha256 + fsync + rename;
  restore = read + verify + load), a 64 MB model+optimizer state, in process;
* **admission** of 1,000 queued jobs by one scheduler round (plan + one transaction), SQLite
  and Postgres, with a no-op executor;
* **crash -> first resumed step**: rank 1 logs ``crashing at step 8 t=...`` and SIGKILLs
  itself; the time to rank 0's first step of the restarted group, as median (min-max, n) and
  split into ``PHASES`` (agent's detection, rendezvous, spawn+imports, process group,
  setup+checkpoint load, first step) from torchrun's ``LOGLEVEL=INFO`` log and rank 0's
  timestamps. Raw column = stock torchrun runs (shared rendezvous store, no prefix);
* **soak**: the crash/resume run repeated, the three kinds **interleaved** round by round:
  stock torchrun (until ``PLAIN`` recovered, at most 3x), raw torchrun with Flywheel's
  per-attempt ``PrefixStore`` only, and scheduled jobs (fresh store per round via
  ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``). A recovery counts only if the job succeeds after
  a restart that resumed from a checkpoint (step > 0: a restart from scratch is bit-identical
  too) with final weights bit-identical to the uninterrupted run; every run's exit is printed;
* **Ray** (when the ``ray`` extra is installed): a real 2-node Ray cluster on 127.0.0.1 (one
  CPU per node), a 2-node x 1-process job through ``RayExecutor``: submit -> first step, and a
  crash soak counted as above.

Bounded by ``TRAINING_BENCH_SOAK`` (platform repeats, default 20), ``TRAINING_BENCH_PLAIN``
(stock and prefix-only repeats, default 5) and ``TRAINING_BENCH_RAY_SOAK`` (default 10); a run
that hangs for ``TRAINING_BENCH_RUN_TIMEOUT`` seconds (default 180; raw crash runs
``TRAINING_BENCH_CRASH_TIMEOUT``, default 90) is killed and fails.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TRAIN = ROOT / "tests" / "training" / "workloads" / "ddp_train.py"
SOAK = int(os.environ.get("TRAINING_BENCH_SOAK", "20"))
PLAIN = int(os.environ.get("TRAINING_BENCH_PLAIN", "5"))
RUN_TIMEOUT = float(os.environ.get("TRAINING_BENCH_RUN_TIMEOUT", "180"))
# A crash run that recovers takes 10-25 s even on a loaded 2-core machine; stock torchrun's
# second restart can hang until the process group's 300 s timeout (shared-store bug).
CRASH_TIMEOUT = float(os.environ.get("TRAINING_BENCH_CRASH_TIMEOUT", "90"))
RAY_SOAK = int(os.environ.get("TRAINING_BENCH_RAY_SOAK", "10"))
STEP_LINE = re.compile(r"step (\d+) loss \S+ t=([\d.]+)")
PREFIX_ENV = "FLYWHEEL_ATTEMPT_STORE_PREFIX"  # "0": the runtime builds no per-attempt prefix
CRASH_LINE = re.compile(r"crashing at step (\d+) t=([\d.]+)")


def make_data(path: Path) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    n = 512
    cols = {f"f{i}": rng.normal(size=n).astype("float32") for i in range(8)}
    cols["y"] = (sum(cols[f"f{i}"] * (i + 1) for i in range(8)) / 10).astype("float32")
    pq.write_table(pa.table(cols), path, row_group_size=64)


def rank_logs(log_dir: Path, restart: int, rank: int) -> str:
    files = list(log_dir.glob(f"*/attempt_{restart}/{rank}/stdout.log"))
    return files[0].read_text() if files else ""


def resumed_step(text: str) -> int:
    """The step a (restarted) worker resumed from: ``start step=N`` in its log; -1 if absent."""
    found = re.findall(r"start step=(\d+)", text)
    return int(found[-1]) if found else -1


def step_times(text: str) -> list[tuple[int, float]]:
    return [(int(m.group(1)), float(m.group(2))) for m in STEP_LINE.finditer(text)]


def raw_torchrun(
    work: Path, nproc: int, env: dict[str, str], restarts: int = 2, timeout: float = RUN_TIMEOUT
) -> tuple[int, float, Path]:
    """Stock ``torchrun`` on the workload; its own (agent) output goes to ``agent.log`` in the
    log folder, so crash runs can time its restart (``LOGLEVEL=INFO`` in ``env``)."""
    log_dir = work / f"logs-{time.monotonic_ns()}"
    log_dir.mkdir(parents=True)
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={nproc}",
        f"--max-restarts={restarts}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        "--monitor-interval=0.2",
        f"--log-dir={log_dir}",
        "--redirects=3",
        str(TRAIN),
    ]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_LOG_DIR": str(log_dir), **env}
    t0 = time.perf_counter()
    with open(log_dir / "agent.log", "wb") as agent_log:
        proc = subprocess.Popen(
            argv,
            env=full_env,
            stdout=agent_log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:  # a hung restart counts as a failure
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = -9
    kill_workers(log_dir)
    return rc, time.perf_counter() - t0, log_dir


def kill_workers(log_dir: Path) -> None:
    """Workers live in their own sessions; kill any left behind by a hung or killed run."""
    marker = str(TRAIN).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
            environ = (proc / "environ").read_bytes()
        except OSError:
            continue
        if marker in cmdline and str(log_dir).encode() in environ:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(proc.name), signal.SIGKILL)


def samples_per_s(text: str, batch: int, world: int) -> float:
    times = step_times(text)
    steady = times[len(times) // 4 :]  # skip warm-up steps
    (s0, t0), (s1, t1) = steady[0], steady[-1]
    return (s1 - s0) * batch * world / (t1 - t0)


def raw_logs(log_dir: Path) -> list[str]:
    """Every worker's stdout of a raw torchrun run (all restarts) and the agent's own log."""
    texts = [p.read_text() for p in log_dir.glob("*/attempt_*/*/stdout.log")]
    agent = log_dir / "agent.log"
    return [*texts, agent.read_text(errors="replace")] if agent.exists() else texts


def new_project(root: Path, metadata: str | None = None, **overrides: Any) -> Any:
    """A project with the default ``training.poll_interval`` (1 s): the scheduler is woken by
    submissions and exits, so the figures do not depend on a short poll."""
    from tests.conftest import make_project

    if metadata:
        overrides["metadata"] = metadata
    return make_project(root, **overrides)


class SchedulerLoop:
    """The real scheduler loop (``Scheduler.run``) in a thread, as ``flywheel up`` runs it."""

    def __init__(self, project: Any) -> None:
        import threading

        from flywheel.training import Scheduler

        self.scheduler = Scheduler(project)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.scheduler.run, args=(self.stop,), daemon=True)

    def __enter__(self) -> Any:
        self.thread.start()
        return self.scheduler

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.scheduler.wake()
        self.thread.join(timeout=30)
        self.scheduler.close()


def flywheel_run(project: Any, env: dict[str, str], name: str, **spec: Any) -> tuple[Any, float]:
    """Submit through ``TrainingService`` (as the CLI and API do) while a ``SchedulerLoop``
    runs; wall time = submit -> the scheduler recording the final state (``finished_at``)."""
    from flywheel.training import JobSpec, Resources
    from flywheel.training._service import TrainingService

    service = TrainingService(project)
    resources = spec.pop("resources", None) or Resources(procs_per_node=2)
    t0 = time.time()
    job = service.submit(
        JobSpec(
            name=name,
            entrypoint=str(TRAIN),
            resources=resources,
            max_restarts=spec.pop("max_restarts", 2),
            env=env,
            **spec,
        )
    )
    deadline = time.monotonic() + RUN_TIMEOUT
    while not (job := service.get(job.id)).state.terminal:
        if time.monotonic() > deadline and not job.cancel_requested:
            service.cancel(job.id)  # a hung run fails (cancelled), it does not stop the bench
        time.sleep(0.25)  # how often the benchmark looks; the wall time is the recorded one
    return job, job.finished_at.timestamp() - t0 if job.finished_at else float("inf")


def job_logs(project: Any, job: Any) -> list[str]:
    """Every log text of the job's last attempt (all nodes, restarts and ranks)."""
    from flywheel.training._service import TrainingService

    return list(TrainingService(project).logs(job.id).values())


def job_step_times(project: Any, job: Any) -> list[tuple[int, float]]:
    """Rank 0's step lines over every restart of the job's last attempt, in time order."""
    from flywheel.training._service import TrainingService

    logs = TrainingService(project).logs(job.id)
    times = [st for name, text in logs.items() if "rank0" in name for st in step_times(text)]
    return sorted(times, key=lambda st: st[1])


def crash_gap(texts: list[str]) -> float | None:
    """Seconds from the crash (the crashing rank logs ``crashing at step S t=T`` just before
    its SIGKILL) to rank 0's first step of the restarted group (a step < S after T). Works
    whatever torchrun's per-restart log folders hold (on Ray the surviving node's agent
    restarts its group without counting a restart and rewrites the same log file)."""
    crash = [m for text in texts for m in CRASH_LINE.finditer(text)]
    if not crash:
        return None
    at_step, at = int(crash[0].group(1)), float(crash[0].group(2))
    after = [t for text in texts for step, t in step_times(text) if t > at and step < at_step]
    return min(after) - at if after else None


AGENT_LINE = re.compile(r"^[IWE](\d\d)(\d\d) (\d\d):(\d\d):(\d\d\.\d+) \d+ [^\]]*\] (.*)$", re.M)
IMPORTED_LINE = re.compile(r"imported t=([\d.]+) joined t=([\d.]+)")
START_LINE = re.compile(r"start step=(\d+) .*t=([\d.]+)")
# Where the seconds of a restart go, in order (each phase ends at the named event).
PHASES = (
    "detected",  # the agent's monitor saw the dead worker ("Worker group FAILED")
    "rendezvous",  # survivors stopped, next rendezvous round done ("Starting worker group")
    "spawn+import",  # new workers started, torch and the runtime imported (rank 0)
    "process group",  # rt.init(): init_process_group done (rank 0)
    "setup+resume",  # data, model (DDP), optimizer, checkpoint found and loaded (rank 0)
    "first step",  # rank 0's first optimizer step of the restarted group
)


def agent_events(text: str, year: int) -> list[tuple[float, str]]:
    """(time, message) of every line torchrun's agent logged (glog format, local time,
    ``LOGLEVEL=INFO``)."""
    out = []
    for m in AGENT_LINE.finditer(text):
        month, day, hh, mm, ss, message = m.groups()
        whole = time.mktime(
            (year, int(month), int(day), int(hh), int(mm), int(float(ss)), 0, 0, -1)
        )
        out.append((whole + float(ss) % 1, message))
    return out


def crash_phases(texts: list[str]) -> dict[str, float] | None:
    """Seconds of each ``PHASES`` step of the first restart after the crash (the crashing rank
    logs ``crashing at step S t=T``), from the agent's log and rank 0's timestamps; ``None``
    if the restart did not get that far (or the agent's log is missing). Sums to
    ``crash_gap``."""
    crash = [m for text in texts for m in CRASH_LINE.finditer(text)]
    if not crash:
        return None
    at_step, at = int(crash[0].group(1)), float(crash[0].group(2))
    year = time.localtime(at).tm_year
    agent = sorted(e for text in texts for e in agent_events(text, year) if e[0] >= at - 0.01)
    failed = next((t for t, msg in agent if "Worker group FAILED" in msg), None)
    started = next(
        (t for t, msg in agent if "Starting worker group" in msg and failed and t >= failed),
        None,
    )
    joined = sorted(
        (float(m.group(1)), float(m.group(2)))
        for text in texts
        for m in IMPORTED_LINE.finditer(text)
        if float(m.group(1)) > at
    )
    resumed = sorted(
        float(m.group(2))
        for text in texts
        for m in START_LINE.finditer(text)
        if float(m.group(2)) > at and int(m.group(1)) > 0
    )
    first = sorted(t for text in texts for step, t in step_times(text) if t > at and step < at_step)
    if failed is None or started is None or not joined or not resumed or not first:
        return None
    ends = [failed, started, joined[0][0], joined[0][1], resumed[0], first[0]]
    return {name: end - begin for name, begin, end in zip(PHASES, [at, *ends], ends, strict=False)}


def spread(values: list[float]) -> str:
    """``median (min-max, n=N)`` of a sample, or ``n/a``."""
    if not values:
        return "n/a"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}, n={len(values)})"


def checkpoint_speed(work: Path) -> tuple[float, float, float]:
    import torch

    from flywheel.training import runtime as rt

    rt.init()
    model = torch.nn.Sequential(*[torch.nn.Linear(1024, 1024) for _ in range(8)])  # 8.4M params
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 1024)).sum().backward()
    opt.step()  # momentum buffers exist: model + optimizer ~ 64 MB
    ck = rt.Checkpointer(work / "ck", model=model, optimizer=opt, every_steps=1, keep_last=2)
    saves, loads = [], []
    for step in range(1, 4):
        t0 = time.perf_counter()
        ck.save(step)
        saves.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        ck.resume()
        loads.append(time.perf_counter() - t0)
    mb = ck.last_saved_bytes / 1e6
    return mb, mb / statistics.median(saves), mb / statistics.median(loads)


class NullExecutor:
    def launch(self, job: Any, env: dict[str, str]) -> int:
        return 0

    def status(self, job: Any) -> Any:
        from flywheel.training import ProcessState, ProcessStatus

        return ProcessStatus(ProcessState.RUNNING)

    def signal(self, job: Any, sig: int) -> None:
        pass

    def logs(self, job: Any, attempt: int | None = None) -> dict[str, str]:
        return {}


def admission(project: Any, n: int = 1000) -> tuple[float, float]:
    from flywheel.training import JobSpec, NodeCapacity, Resources, Scheduler, TickReport

    s = Scheduler(project, executor=NullExecutor(), inventory=[NodeCapacity("big", 4 * n)])
    for i in range(n):
        s.store.submit(
            JobSpec(
                name=f"j{i}",
                entrypoint="m:f",
                team=f"team{i % 7}",
                priority=i % 5 * 10,
                resources=Resources(procs_per_node=2),
            )
        )
    report = TickReport()
    t0 = time.perf_counter()
    s._schedule(report)  # plan + admit (what "admission" means)
    t_admit = time.perf_counter() - t0
    assert len(report.admitted) == n, len(report.admitted)
    t0 = time.perf_counter()
    s._launch_admitted(report)  # + recording n launches (no processes)
    return t_admit, t_admit + time.perf_counter() - t0


def postgres_url() -> str | None:
    import uuid

    import sqlalchemy as sa

    base = os.environ.get(
        "FLYWHEEL_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    )
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    try:
        engine = sa.create_engine(base, connect_args={"connect_timeout": 3})
        with engine.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        engine.dispose()
    except Exception:
        return None
    return f"{base}?options=-csearch_path%3D{schema}"


Row = tuple[str, str, str, str, str]  # metric, local executor, Ray executor, raw torchrun, note


def print_rows(rows: list[Row], t_start: float, notes: list[str]) -> None:
    import torch

    print()
    print(
        f"Flywheel training benchmark, {time.strftime('%Y-%m-%d')}; "
        f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}; total {time.time() - t_start:.0f}s; "
        f"load average {os.getloadavg()[0]:.1f} (shared machine: figures vary with it)"
    )
    header = ("metric", "Flywheel (local)", "Flywheel (Ray)", "raw torchrun", "ratio / note")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(len(header))]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
    for note in notes:
        print(note)


def cpu_seconds() -> float:
    """CPU time of this process (the scheduler thread and the benchmark) and of its reaped
    children (torchrun, the supervisor and all their descendants)."""
    import resource

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def timeline(project: Any, job: Any, t0: float) -> dict[str, float]:
    """Seconds from submit of: launch recorded, supervisor up, first and last step, agents
    exited, final state recorded (the instrumented path of one local job)."""
    from flywheel.training._executor import LocalExecutor
    from flywheel.training._scheduler import jobs_dir

    executor = LocalExecutor(jobs_dir(project))
    status = json.loads((executor.attempt_dir(job) / "status.json").read_text())
    steps = job_step_times(project, job)
    return {
        "launched": job.started_at.timestamp() - t0,
        "supervisor": status["started_at"] - t0,
        "first step": steps[0][1] - t0,
        "last step": steps[-1][1] - t0,
        "agents exited": status["finished_at"] - t0,
        "recorded": job.finished_at.timestamp() - t0,
    }


def overhead(
    work: Path, data: Path, runs: int, epochs: str
) -> tuple[list[Row], list[str], list[float]]:
    """The same 2-process job, raw torchrun and Flywheel's local executor, alternating."""
    env = {"DATA": str(data), "EPOCHS": epochs}
    proj = new_project(work / "proj")
    raw_walls, raw_first, raw_tail, fw_walls, sps2 = [], [], [], [], []
    raw_cpu, fw_cpu = [], []
    lines: list[dict[str, float]] = []
    with SchedulerLoop(proj):
        for i in range(runs):
            t0, c0 = time.time(), cpu_seconds()
            rc, wall, logs = raw_torchrun(work, 2, {**env, "CKPT_DIR": str(work / f"ck-raw{i}")})
            raw_cpu.append(cpu_seconds() - c0)
            assert rc == 0, f"raw torchrun failed with exit {rc}"
            steps = step_times(rank_logs(logs, 0, 0))
            raw_walls.append(wall)
            raw_first.append(steps[0][1] - t0)
            raw_tail.append(t0 + wall - steps[-1][1])
            sps2.append(samples_per_s(rank_logs(logs, 0, 0), 16, 2))
            t0, c0 = time.time(), cpu_seconds()
            job, wall = flywheel_run(proj, env, f"overhead{i}")
            assert job.state.value == "succeeded", job.reason
            time.sleep(0.5)  # the supervisor is reaped by the executor's watcher thread
            fw_cpu.append(cpu_seconds() - c0)
            fw_walls.append(wall)
            lines.append(timeline(proj, job, t0))
    med = {k: statistics.median(line[k] for line in lines) for k in lines[0]}
    raw_w, fw_w = statistics.median(raw_walls), statistics.median(fw_walls)
    rows: list[Row] = [
        (
            f"2-proc job wall time, s (median of {runs})",
            f"{fw_w:.2f}",
            "",
            f"{raw_w:.2f}",
            f"{fw_w - raw_w:+.2f} s ({(fw_w / raw_w - 1) * 100:+.1f}%) local vs raw",
        ),
        (
            "CPU s per job (all its processes; Flywheel: + scheduler)",
            f"{statistics.median(fw_cpu):.2f}",
            "",
            f"{statistics.median(raw_cpu):.2f}",
            "less sensitive to load than wall time",
        ),
        (
            "submit -> first step, s",
            f"{med['first step']:.2f}",
            "",
            f"{statistics.median(raw_first):.2f}",
            "raw: from Popen",
        ),
    ]
    notes = [
        "where a local job's seconds go (median, from submit): "
        + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
        + f"; raw torchrun: first step {statistics.median(raw_first):.2f}, "
        f"last step -> exit {statistics.median(raw_tail):.2f}"
    ]
    proj.close()
    return rows, notes, sps2


def start_ray(work: Path) -> tuple[Any, Any] | None:
    """A real 2-node Ray cluster on this machine and a project whose executor is Ray, or
    ``None`` when the ``ray`` extra is not installed."""
    try:
        import ray  # noqa: F401
    except ImportError:
        return None
    import socket

    from flywheel.training._ray_cluster import LocalRayCluster

    base = next(b for b in (16400, 16500, 16600) if _port_free(socket, b))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH")) if p
    )
    cluster = LocalRayCluster(base, [{"node_a": 1}, {"node_b": 1}], env=env).start()
    shared = work / "ray-shared"
    shared.mkdir()
    proj = new_project(
        work / "ray-proj",
        artifacts=f"file://{shared}",
        training={"executor": "ray", "ray": {"address": cluster.address}},
    )
    return cluster, proj


def _port_free(socket: Any, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def ray_rows(
    work: Path, data: Path, reference: str, n: int, raw_first: float
) -> tuple[list[Row], list[str]]:
    """Launch -> first step and a crash soak on a 2-node Ray cluster (one process per node)."""
    from flywheel.training import Resources

    started = start_ray(work)
    if started is None:
        return [], [
            "Ray rows: skipped (the ray extra is not installed: pip install 'flywheel[ray]')"
        ]
    cluster, proj = started
    two_nodes = Resources(nodes=2, procs_per_node=1)
    env1 = {"DATA": str(data), "EPOCHS": "1"}
    try:
        with SchedulerLoop(proj):
            t0 = time.time()
            job, wall = flywheel_run(proj, env1, "ray-clean", resources=two_nodes)
            assert job.state.value == "succeeded", job.reason
            first = job_step_times(proj, job)[0][1] - t0
            ok, gaps = 0, []
            for i in range(n):
                out = work / f"ray-{i}"
                crash = {**env1, "CRASH_AT_STEP": "8", "CRASH_RANK": "1", "OUT": str(out)}
                job, _ = flywheel_run(proj, crash, f"ray-soak{i}", resources=two_nodes)
                good = recovered(proj, job, out, reference)
                ok += good
                gap = crash_gap(job_logs(proj, job))
                if good and gap is not None:
                    gaps.append(gap)
            print(f"soak ray: {ok}/{n}", flush=True)
    finally:
        proj.close()
        cluster.stop()
    rows: list[Row] = [
        (
            "2-node job (1 proc/node): submit -> first step, s",
            "",
            f"{first:.2f}",
            f"{raw_first:.2f}",
            f"wall {wall:.2f} s; raw = 2 procs on one host",
        ),
        (
            "Ray: crash -> first resumed step, s (median)",
            "",
            f"{statistics.median(gaps):.1f}" if gaps else "n/a",
            "",
            "torchrun restart on Ray",
        ),
        (
            "Ray: crash/resume recoveries, bit-identical",
            "",
            f"{ok}/{n}",
            "",
            "resumed step > 0 and final weights == uninterrupted run",
        ),
    ]
    return rows, []


def recovered(project: Any, job: Any, out: Path, reference: str) -> bool:
    """Succeeded after a torchrun restart, resumed from a checkpoint (step > 0: a restart from
    scratch is bit-identical too), with the uninterrupted run's final weights."""
    from flywheel.training._service import TrainingService

    logs = TrainingService(project).logs(job.id)
    starts = [resumed_step(text) for name, text in logs.items() if "rank0" in name]
    return (
        job.state.value == "succeeded"
        and job.restarts >= 1
        and max(starts, default=-1) > 0
        and out.exists()
        and out.read_text() == reference
    )


@dataclasses.dataclass
class CrashSide:
    """One column of the crash -> resume comparison: every run's exit and, for the runs that
    recovered (resumed from a step > 0, final weights bit-identical), the seconds."""

    label: str
    wanted: int  # recovered samples wanted
    max_runs: int
    exits: list[str] = dataclasses.field(default_factory=list)
    gaps: list[float] = dataclasses.field(default_factory=list)
    by_round: dict[int, float] = dataclasses.field(default_factory=dict)  # recovered runs
    phases: list[dict[str, float]] = dataclasses.field(default_factory=list)

    @property
    def more(self) -> bool:
        return len(self.gaps) < self.wanted and len(self.exits) < self.max_runs

    @property
    def ok(self) -> str:
        return f"{len(self.gaps)}/{len(self.exits)}"

    def record(self, exit_label: str, good: bool, texts: list[str], round_no: int = 0) -> None:
        self.exits.append(exit_label)
        gap = crash_gap(texts)
        phases = crash_phases(texts)
        if good and gap is not None:
            self.gaps.append(gap)
            self.by_round[round_no] = gap
            if phases is not None:
                self.phases.append(phases)
        detail = " ".join(f"{k} {v:.2f}" for k, v in (phases or {}).items())
        print(
            f"  {self.label} run {len(self.exits)}: {exit_label}, "
            f"{'recovered' if good else 'NOT recovered'}, crash -> first resumed step "
            f"{'n/a' if gap is None else f'{gap:.2f}'} s [{detail}] "
            f"load {os.getloadavg()[0]:.1f}",
            flush=True,
        )

    def exit_summary(self) -> str:
        counts = collections.Counter(self.exits)
        return ", ".join(f"{k} x{v}" for k, v in sorted(counts.items()))

    def paired(self, other: CrashSide) -> str:
        """Median of (this - other) over the rounds where both recovered: each pair ran
        back to back, so a load change between rounds cancels out."""
        diffs = [self.by_round[r] - other.by_round[r] for r in self.by_round if r in other.by_round]
        if not diffs:
            return "n/a"
        return f"{statistics.median(diffs):+.2f} s (n={len(diffs)})"

    def phase(self, name: str) -> str:
        values = [p[name] for p in self.phases]
        return f"{statistics.median(values):.2f}" if values else "n/a"


def crash_section(
    work: Path, data: Path, t_start: float, smoke: bool = False
) -> tuple[list[Row], list[str], str, dict[str, str]]:
    """Rank 1 SIGKILLs itself at step 8; torchrun restarts the group, which resumes from the
    step-5 checkpoint. Stock torchrun (the raw column: shared rendezvous store, no prefix),
    torchrun with Flywheel's per-attempt PrefixStore only, and Flywheel jobs through the real
    scheduler loop run **interleaved**, round by round, so load changes hit every column alike.
    Stock runs repeat until ``PLAIN`` of them recovered (they fail often: the shared-store
    restart bug, pytorch/pytorch#135712), at most ``3 * PLAIN`` runs."""
    env1 = {"DATA": str(data), "EPOCHS": "1"}
    ref_out = work / "ref-digest"
    rc, _, _ = raw_torchrun(
        work, 2, {**env1, "OUT": str(ref_out), "CKPT_DIR": str(work / "ck-ref")}
    )
    assert rc == 0, f"reference torchrun run failed with exit {rc}"
    reference = ref_out.read_text()
    # LOGLEVEL=INFO: torchrun's agent logs when it saw the failure and restarted (both sides).
    crash = {**env1, "CRASH_AT_STEP": "8", "CRASH_RANK": "1", "LOGLEVEL": "INFO"}
    # Flywheel also runs in every round a stock run does, so every stock sample has a pair.
    fw = CrashSide("Flywheel", 1 if smoke else SOAK, 1 if smoke else max(SOAK, 3 * PLAIN))
    stock = CrashSide("stock torchrun", 0 if smoke else PLAIN, 0 if smoke else 3 * PLAIN)
    prefix = CrashSide("torchrun + PrefixStore", 0 if smoke else PLAIN, 0 if smoke else PLAIN)
    loads = [os.getloadavg()[0]]
    proj = new_project(work / "soak")

    def run_raw(side: CrashSide, extra: dict[str, str], round_no: int) -> None:
        i = len(side.exits)
        out = work / f"{side.label.replace(' ', '-')}-{i}"
        ck = work / f"ck-{side.label.replace(' ', '-')}-{i}"
        env = {**crash, **extra, "OUT": str(out), "CKPT_DIR": str(ck)}
        rc, _, logs = raw_torchrun(work, 2, env, timeout=CRASH_TIMEOUT)
        # A from-scratch restart is bit-identical too: count only a resume from step > 0.
        good = (
            rc == 0
            and out.exists()
            and out.read_text() == reference
            and resumed_step(rank_logs(logs, 1, 0)) > 0
        )
        side.record("timeout" if rc == -9 else f"exit {rc}", good, raw_logs(logs), round_no)
        shutil.rmtree(logs, ignore_errors=True)

    def run_flywheel(round_no: int) -> None:
        out = work / f"fw-{len(fw.exits)}"
        job, _ = flywheel_run(proj, {**crash, "OUT": str(out)}, f"soak{len(fw.exits)}")
        exit_label = f"{job.state.value} (exit {job.exit_code})"
        good = recovered(proj, job, out, reference)
        fw.record(exit_label, good, job_logs(proj, job), round_no)

    with SchedulerLoop(proj):
        round_no = 0
        while fw.more or stock.more or prefix.more:
            fw_too = fw.more or (stock.more and len(fw.exits) < fw.max_runs)
            steps = [
                (fw_too, run_flywheel),
                (stock.more, lambda r: run_raw(stock, {PREFIX_ENV: "0"}, r)),
                (prefix.more, lambda r: run_raw(prefix, {}, r)),
            ]
            if round_no % 2:  # alternate who goes first
                steps.reverse()
            for wanted, step in steps:
                if wanted:
                    step(round_no)
            round_no += 1
            loads.append(os.getloadavg()[0])
    proj.close()
    print(
        f"crash soak: Flywheel {fw.ok}, stock {stock.ok}, prefix {prefix.ok} "
        f"({time.time() - t_start:.0f}s)",
        flush=True,
    )
    sides = (fw, stock, prefix)
    rows: list[Row] = [
        (
            "crash -> first resumed step, s: median (min-max, n)",
            spread(fw.gaps),
            "",
            spread(stock.gaps),
            f"raw = stock torchrun; + PrefixStore only: {spread(prefix.gaps)}",
        ),
    ]
    for name in PHASES:
        rows.append(
            (
                f"  ... {name}, s (median)",
                fw.phase(name),
                "",
                stock.phase(name),
                f"prefix {prefix.phase(name)}",
            )
        )
    rows.append(
        (
            "  ... Flywheel minus raw, same round (median of pairs)",
            "",
            "",
            fw.paired(stock),
            f"vs PrefixStore only: {fw.paired(prefix)}",
        )
    )
    rows.append(
        (
            "crash/resume recoveries, bit-identical (of runs)",
            fw.ok,
            "",
            stock.ok,
            f"resumed step > 0; raw = stock torchrun; + PrefixStore only: {prefix.ok}",
        )
    )
    notes = [
        "crash runs interleaved round by round; load average during them "
        f"{min(loads):.1f}-{max(loads):.1f}; every run's exit: "
        + "; ".join(f"{side.label}: {side.exit_summary() or 'none'}" for side in sides)
    ]
    counts = {
        f"soak_{key}": side.ok
        for key, side in zip(("platform", "plain", "prefix"), sides, strict=True)
    }
    return rows, notes, reference, counts


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one 1-epoch job through the scheduler and under raw torchrun, and one Flywheel "
        "crash/resume, nothing else (CI)",
    )
    parser.add_argument(
        "--crash-only",
        action="store_true",
        help="only the interleaved crash -> resume comparison (no overhead, Ray, admission)",
    )
    args = parser.parse_args()
    smoke = args.smoke
    work = Path(tempfile.mkdtemp(prefix="flywheel-train-bench-"))
    data = work / "data.parquet"
    make_data(data)
    t_start = time.time()
    if args.crash_only:
        rows, notes, _, counts = crash_section(work, data, t_start)
        print_rows(rows, t_start, notes)
        print(json.dumps(counts))
        shutil.rmtree(work, ignore_errors=True)
        return

    # -- overhead: the same 2-process job, raw torchrun vs flywheel ------------------------------
    rows, notes, sps2 = overhead(work, data, 1 if smoke else 3, "1" if smoke else "3")
    print(f"overhead done ({time.time() - t_start:.0f}s)", flush=True)
    if smoke:
        # One Flywheel crash: it must resume from its checkpoint, bit-identical, and every
        # phase of the restart must be found in its logs (what the full run reports).
        crash_rows, _, _, counts = crash_section(work, data, t_start, smoke=True)
        assert counts["soak_platform"] == "1/1", counts
        assert all(r[1] != "n/a" for r in crash_rows), crash_rows
        rows += crash_rows
        notes.append("Ray rows, raw crash runs, checkpoints, admission: skipped in --smoke")
        print_rows(rows, t_start, notes)
        shutil.rmtree(work, ignore_errors=True)
        return

    # -- samples/s 1 vs 2 processes ---------------------------------------------------------------
    rc, _, logs1 = raw_torchrun(
        work, 1, {"DATA": str(data), "EPOCHS": "3", "CKPT_DIR": str(work / "ck-1p")}
    )
    assert rc == 0, f"1-process torchrun run failed with exit {rc}"
    sps1 = samples_per_s(rank_logs(logs1, 0, 0), 16, 1)
    s2 = statistics.median(sps2)
    rows.append(("samples/s, 1 process", f"{sps1:,.0f}", "", "same loop", ""))
    rows.append(
        (
            "samples/s, 2 processes (DDP, gloo)",
            f"{s2:,.0f}",
            "",
            "same loop",
            f"x{s2 / sps1:.2f} vs 1 process",
        )
    )

    # -- checkpoints ------------------------------------------------------------------------------
    mb, save_mbs, load_mbs = checkpoint_speed(work)
    rows.append(
        (f"checkpoint save, MB/s ({mb:.0f} MB, sha256+fsync)", f"{save_mbs:,.0f}", "", "-", "")
    )
    rows.append(
        (f"checkpoint restore, MB/s ({mb:.0f} MB, verified)", f"{load_mbs:,.0f}", "", "-", "")
    )

    # -- admission of 1,000 queued jobs ----------------------------------------------------------
    t_sqlite, t_sqlite_all = admission(new_project(work / "adm-sqlite"))
    rows.append(
        (
            "admit 1,000 queued jobs, s (SQLite)",
            f"{t_sqlite:.3f}",
            "",
            "-",
            f"{t_sqlite_all:.3f} s incl. recording launches",
        )
    )
    pg = postgres_url()
    if pg:
        t_pg, t_pg_all = admission(new_project(work / "adm-pg", pg))
        rows.append(
            (
                "admit 1,000 queued jobs, s (Postgres)",
                f"{t_pg:.3f}",
                "",
                "-",
                f"{t_pg_all:.3f} s incl. recording launches",
            )
        )
    print(f"admission done ({time.time() - t_start:.0f}s)", flush=True)

    # -- crash/resume: stock torchrun, PrefixStore-only torchrun and Flywheel, interleaved ------
    crash_rows, crash_notes, reference, counts = crash_section(work, data, t_start)
    ray_table, more = ray_rows(
        work,
        data,
        reference,
        RAY_SOAK,
        float(next(r[3] for r in rows if r[0].startswith("submit -> first step"))),
    )
    rows += crash_rows + ray_table
    notes += crash_notes + more

    # -- table ------------------------------------------------------------------------------------
    print_rows(rows, t_start, notes)
    print(json.dumps(counts))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
