"""Training platform benchmark: Flywheel vs raw ``torchrun`` on the same script, in one run.

Run with ``make bench-training`` (or ``.venv/bin/python benchmarks/training_bench.py``).

The workload is ``tests/training/workloads/ddp_train.py``: a tiny MLP (dropout, SGD with
momentum, StepLR) trained with CPU DDP (gloo) on a 512-row Parquet file read through
``ShardedParquetDataset``, checkpointing every 5 steps, ``OMP_NUM_THREADS=1``. Figures:

* **overhead**: wall time of the same 2-process job under raw ``torchrun`` (the peer) and
  under Flywheel (submit -> scheduler -> supervisor -> torchrun -> SUCCEEDED seen in the DB);
* **samples/s** with 1 and 2 processes (rank 0's step timestamps, steady state);
* **checkpoint save / restore MB/s** (``Checkpointer``: torch.save + sha256 + fsync + rename;
  restore = read + verify + load), a 64 MB model+optimizer state, in process;
* **crash -> progress**: rank 1 SIGKILLs itself at step 8; time from its last step to the first
  step of the restarted group (detection, restart, imports, rendezvous, resume);
* **admission** of 1,000 queued jobs by one scheduler round (plan + one transaction), SQLite
  and Postgres, with a no-op executor;
* **soak**: the crash/resume run repeated: stock torchrun (shared rendezvous store, no
  prefix), Flywheel's per-attempt ``PrefixStore`` alone, and the platform path (scheduled
  jobs: fresh store per round via ``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``). A recovery counts
  only if the job succeeds after a restart with final weights bit-identical to the
  uninterrupted run.

Bounded by ``TRAINING_BENCH_SOAK`` (platform repeats, default 20) and ``TRAINING_BENCH_PLAIN``
(stock and prefix-only repeats, default 5); a run that hangs for
``TRAINING_BENCH_RUN_TIMEOUT`` seconds (default 180) is killed and counts as a failure.
"""

from __future__ import annotations

import contextlib
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
STEP_LINE = re.compile(r"step (\d+) loss \S+ t=([\d.]+)")


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
    work: Path, nproc: int, env: dict[str, str], restarts: int = 2
) -> tuple[int, float, Path]:
    log_dir = work / f"logs-{time.monotonic_ns()}"
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
    proc = subprocess.Popen(
        argv,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        rc = proc.wait(timeout=RUN_TIMEOUT)
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


def crash_to_progress(log_dir: Path) -> float | None:
    crashed = step_times(rank_logs(log_dir, 0, 0))  # rank 0 logs; rank 1 died at that step
    resumed = step_times(rank_logs(log_dir, 1, 0))
    if not crashed or not resumed:
        return None
    return resumed[0][1] - crashed[-1][1]


def new_project(root: Path, metadata: str | None = None) -> Any:
    from tests.conftest import make_project

    overrides: dict[str, Any] = {"training": {"poll_interval": 0.2}}
    if metadata:
        overrides["metadata"] = metadata
    return make_project(root, **overrides)


def flywheel_run(project: Any, env: dict[str, str], name: str) -> tuple[Any, float]:
    from flywheel.training import JobSpec, Resources, Scheduler

    scheduler = Scheduler(project)
    t0 = time.perf_counter()
    job = scheduler.store.submit(
        JobSpec(
            name=name,
            entrypoint=str(TRAIN),
            resources=Resources(procs_per_node=2),
            max_restarts=2,
            env=env,
        )
    )
    while not (job := scheduler.store.get(job.id)).state.terminal:
        scheduler.tick()
        time.sleep(project.config.training.poll_interval)
    return job, time.perf_counter() - t0


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


def print_rows(rows: list[tuple[str, str, str, str]], t_start: float) -> None:
    import torch

    print()
    print(
        f"Flywheel training benchmark, {time.strftime('%Y-%m-%d')}; "
        f"{os.cpu_count()} CPUs, {platform.platform()}, Python {platform.python_version()}, "
        f"torch {torch.__version__}; total {time.time() - t_start:.0f}s; "
        f"load average {os.getloadavg()[0]:.1f} (shared machine: figures vary with it)"
    )
    header = ("metric", "Flywheel", "raw torchrun", "ratio / note")
    widths = [max(len(r[i]) for r in [*rows, header]) for i in range(4)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="one 1-epoch job through the scheduler and under raw torchrun, nothing else (CI)",
    )
    smoke = parser.parse_args().smoke
    work = Path(tempfile.mkdtemp(prefix="flywheel-train-bench-"))
    data = work / "data.parquet"
    make_data(data)
    rows: list[tuple[str, str, str, str]] = []
    t_start = time.time()

    # -- overhead: the same 2-process job, raw torchrun vs flywheel ------------------------------
    env3 = {"DATA": str(data), "EPOCHS": "1" if smoke else "3"}
    proj = new_project(work / "proj")
    raw_walls, fw_walls, sps2 = [], [], []
    runs = 1 if smoke else 2
    for i in range(runs):
        rc, wall, logs = raw_torchrun(work, 2, {**env3, "CKPT_DIR": str(work / f"ck-raw{i}")})
        assert rc == 0, "raw torchrun failed"
        raw_walls.append(wall)
        sps2.append(samples_per_s(rank_logs(logs, 0, 0), 16, 2))
        job, wall = flywheel_run(proj, env3, f"overhead{i}")
        assert job.state.value == "succeeded", job.reason
        fw_walls.append(wall)
    raw_w, fw_w = statistics.median(raw_walls), statistics.median(fw_walls)
    rows.append(
        (
            f"2-proc job wall time, s (median of {runs})",
            f"{fw_w:.2f}",
            f"{raw_w:.2f}",
            f"{(fw_w / raw_w - 1) * 100:+.1f}% overhead",
        )
    )
    print(f"overhead done ({time.time() - t_start:.0f}s)", flush=True)
    if smoke:
        print("crash soak, checkpoints, admission: skipped in --smoke")
        print_rows(rows, t_start)
        shutil.rmtree(work, ignore_errors=True)
        return

    # -- samples/s 1 vs 2 processes ---------------------------------------------------------------
    rc, _, logs1 = raw_torchrun(work, 1, {**env3, "CKPT_DIR": str(work / "ck-1p")})
    sps1 = samples_per_s(rank_logs(logs1, 0, 0), 16, 1)
    s2 = statistics.median(sps2)
    rows.append(("samples/s, 1 process", f"{sps1:,.0f}", "same loop", ""))
    rows.append(
        (
            "samples/s, 2 processes (DDP, gloo)",
            f"{s2:,.0f}",
            "same loop",
            f"x{s2 / sps1:.2f} vs 1 process",
        )
    )

    # -- checkpoints ------------------------------------------------------------------------------
    mb, save_mbs, load_mbs = checkpoint_speed(work)
    rows.append((f"checkpoint save, MB/s ({mb:.0f} MB, sha256+fsync)", f"{save_mbs:,.0f}", "-", ""))
    rows.append((f"checkpoint restore, MB/s ({mb:.0f} MB, verified)", f"{load_mbs:,.0f}", "-", ""))

    # -- admission of 1,000 queued jobs ----------------------------------------------------------
    t_sqlite, t_sqlite_all = admission(new_project(work / "adm-sqlite"))
    rows.append(
        (
            "admit 1,000 queued jobs, s (SQLite)",
            f"{t_sqlite:.3f}",
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
                "-",
                f"{t_pg_all:.3f} s incl. recording launches",
            )
        )
    print(f"admission done ({time.time() - t_start:.0f}s)", flush=True)

    # -- crash/resume soak ----------------------------------------------------------------------
    env1 = {"DATA": str(data), "EPOCHS": "1"}
    ref_out = work / "ref-digest"
    rc, _, _ = raw_torchrun(
        work, 2, {**env1, "OUT": str(ref_out), "CKPT_DIR": str(work / "ck-ref")}
    )
    assert rc == 0, f"reference torchrun run failed with exit {rc}"
    reference = ref_out.read_text()
    crash = {**env1, "CRASH_AT_STEP": "8", "CRASH_RANK": "1"}

    def raw_soak(n: int, extra: dict[str, str], label: str) -> tuple[int, list[float]]:
        ok, delays = 0, []
        for i in range(n):
            out = work / f"{label}-{i}"
            rc, _, logs = raw_torchrun(
                work,
                2,
                {**crash, **extra, "OUT": str(out), "CKPT_DIR": str(work / f"ck-{label}-{i}")},
            )
            # A from-scratch restart is bit-identical too: count only a resume from step > 0.
            good = (
                rc == 0
                and out.exists()
                and out.read_text() == reference
                and resumed_step(rank_logs(logs, 1, 0)) > 0
            )
            ok += good
            d = crash_to_progress(logs)
            if good and d is not None:
                delays.append(d)
            shutil.rmtree(logs, ignore_errors=True)
        print(f"soak {label}: {ok}/{n} ({time.time() - t_start:.0f}s)", flush=True)
        return ok, delays

    plain_ok, plain_delays = raw_soak(PLAIN, {"FLYWHEEL_ATTEMPT_STORE_PREFIX": "0"}, "plain")
    prefix_ok, prefix_delays = raw_soak(PLAIN, {}, "prefix")
    soak_proj = new_project(work / "soak")
    fw_ok, fw_delays = 0, []
    from flywheel.training._service import TrainingService

    for i in range(SOAK):
        out = work / f"fw-{i}"
        job, _ = flywheel_run(soak_proj, {**crash, "OUT": str(out)}, f"soak{i}")
        good = (
            job.state.value == "succeeded"
            and job.restarts >= 1
            and out.exists()
            and out.read_text() == reference
        )
        logs = TrainingService(soak_proj).logs(job.id)
        good = good and resumed_step(logs.get("node0/restart1/rank0.log", "")) > 0
        fw_ok += good
        crashed = step_times(logs.get("node0/restart0/rank0.log", ""))
        resumed = step_times(logs.get("node0/restart1/rank0.log", ""))
        if good and crashed and resumed:
            fw_delays.append(resumed[0][1] - crashed[-1][1])
    print(f"soak platform: {fw_ok}/{SOAK} ({time.time() - t_start:.0f}s)", flush=True)
    delays = fw_delays or prefix_delays
    rows.append(
        (
            "crash -> first resumed step, s (median)",
            f"{statistics.median(fw_delays):.1f}" if fw_delays else "n/a",
            f"{statistics.median(plain_delays):.1f}" if plain_delays else "n/a",
            "torchrun restart; raw = stock runs; Flywheel: scheduled job",
        )
    )
    rows.append(
        (
            "crash/resume recoveries, bit-identical",
            f"{fw_ok}/{SOAK}",
            f"{plain_ok}/{PLAIN}",
            "peer = stock torchrun, shared rendezvous store",
        )
    )
    rows.append(
        (
            "  ... with only the per-attempt PrefixStore",
            f"{prefix_ok}/{PLAIN}",
            "-",
            "raw torchrun + flywheel runtime",
        )
    )
    del delays

    # -- table ------------------------------------------------------------------------------------
    print_rows(rows, t_start)
    print(
        json.dumps(
            {
                "soak_platform": f"{fw_ok}/{SOAK}",
                "soak_plain": f"{plain_ok}/{PLAIN}",
                "soak_prefix": f"{prefix_ok}/{PLAIN}",
            }
        )
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
