"""Real processes: torchrun restarts after SIGKILL, bit-identical resume, preemption with
checkpoint and resume, a scheduler killed with -9, and a 2-agent rendezvous on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.project import Project
from flywheel.tracking import Tracker
from flywheel.training import (
    JobSpec,
    JobState,
    JobStore,
    NodeCapacity,
    Resources,
    Scheduler,
)
from flywheel.training._executor import _lock_held
from flywheel.training._service import TrainingService
from tests.training.conftest import WORKLOADS

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN = str(WORKLOADS / "ddp_train.py")
HELLO = str(WORKLOADS / "hello.py")


def _env(**extra: object) -> dict[str, str]:
    return {"OMP_NUM_THREADS": "1", "EPOCHS": "1", **{k: str(v) for k, v in extra.items()}}


@pytest.fixture(scope="module")
def reference_digest(parquet_file: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Final weights of an uninterrupted 2-process run under plain torchrun."""
    errors = []
    for attempt in range(2):  # the peer run is the baseline here, not the system under test
        out = tmp_path_factory.mktemp("ref") / "digest"
        env = {**os.environ, **_env(DATA=parquet_file, OUT=out, CKPT_DIR=out.parent / "ck")}
        done = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
             "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", TRAIN],
            env=env, capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        if done.returncode == 0:
            return out.read_text()
        errors.append(f"attempt {attempt}: exit {done.returncode}\n{done.stderr[-3000:]}")
    raise AssertionError("\n".join(errors))


def run_until_done(s: Scheduler, job_ids: list[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.tick()
        if all(s.store.get(j).state.terminal for j in job_ids):
            return
        time.sleep(0.2)
    logs = "\n".join(f"== {j}\n{all_logs(s.project, j)[-4000:]}" for j in job_ids)
    raise AssertionError(
        f"jobs not done in {timeout}s: {[s.store.get(j) for j in job_ids]}\n{logs}"
    )


def train_spec(name: str, digest_out: Path, data: Path, **kw: object) -> JobSpec:
    env = kw.pop("env", {})
    return JobSpec(
        name=name,
        entrypoint=TRAIN,
        dataset=str(data),
        resources=kw.pop("resources", Resources(procs_per_node=2)),  # type: ignore[arg-type]
        env={"OUT": str(digest_out), "EPOCHS": "1", **env},  # type: ignore[dict-item]
        **kw,  # type: ignore[arg-type]
    )


def all_logs(project: Project, job_id: str, attempt: int | None = None) -> str:
    return "\n".join(TrainingService(project).logs(job_id, attempt).values())


@contextlib.contextmanager
def scheduler_loop(s: Scheduler, interval: float) -> Iterator[None]:
    """``Scheduler.run`` in a thread, as ``flywheel up`` runs it."""
    stop = threading.Event()
    thread = threading.Thread(target=s.run, args=(stop, interval), daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        s.wake()
        thread.join(timeout=60)
        s.close()


def test_sigkill_worker_restart_resumes_bit_identical(
    project: Project, parquet_file: Path, reference_digest: str, tmp_path: Path
) -> None:
    """Through the real loop with a one-hour poll: the job can only start and finish because
    the submission and the attempt's exit wake the scheduler (no polling in between)."""
    s = Scheduler(project, inventory=[NodeCapacity("local", 2)])
    out = tmp_path / "digest"
    with scheduler_loop(s, interval=3600):
        job = TrainingService(project).submit(
            train_spec("crash", out, parquet_file, max_restarts=2,
                       env={"CRASH_AT_STEP": "8", "CRASH_RANK": "1", "LOGLEVEL": "INFO"})
        )  # fmt: skip
        deadline = time.monotonic() + 240
        while not s.store.get(job.id).state.terminal and time.monotonic() < deadline:
            time.sleep(0.2)
    done = s.store.get(job.id)
    logs = all_logs(project, job.id)
    assert done.state is JobState.SUCCEEDED, logs[-3000:]
    assert done.attempt == 1 and done.restarts == 1
    assert "start step=5 epoch=0 position=5 restart=1" in logs
    assert out.read_text() == reference_digest
    # One node: both rounds ran on the agent's store (up before the workers; no connect
    # backoff), the restarted group's keys kept apart by runtime.init()'s per-restart prefix.
    agent_log = TrainingService(project).logs(job.id)["node0/agent.log"]
    assert agent_log.count("use_agent_store: True") == 2, agent_log[-3000:]
    # Per-rank logs of both torchrun attempts were archived in the artifact store.
    keys = project.artifacts.list_named(f"training/jobs/{job.id}/attempt-1")
    assert any("restart1/rank1" in k for k in keys) and any("restart0/rank0" in k for k in keys)
    # Rank 0's metrics reached the job's series and the attempt's run through the scheduler.
    assert [k for k, _, _ in s.store.metrics(job.id)][:1] == ["loss"]
    run = Tracker(project).get_run(done.run_id or "")
    assert run.status == "finished" and "loss" in run.metrics


def test_preemption_checkpoints_requeues_and_resumes(
    pg_project: Project, parquet_file: Path, reference_digest: str, tmp_path: Path
) -> None:
    """On the real Postgres: a high-priority job preempts a running low one, which saves a
    checkpoint on SIGTERM, is requeued, resumes after, and still ends bit-identical."""
    s = Scheduler(pg_project, inventory=[NodeCapacity("local", 2)], grace_period=60)
    out = tmp_path / "digest"
    low = s.store.submit(
        train_spec("low", out, parquet_file, priority=10,
                   env={"STEP_SLEEP": "0.3", "CKPT_EVERY": "1000"})
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not s.store.metrics(low.id) and time.monotonic() < deadline:
        s.tick()
        time.sleep(0.2)
    assert s.store.metrics(low.id), all_logs(pg_project, low.id)[-3000:]
    high = s.store.submit(
        JobSpec(name="high", entrypoint=HELLO, priority=90,
                resources=Resources(procs_per_node=2))
    )  # fmt: skip
    run_until_done(s, [low.id, high.id])
    low_done, high_done = s.store.get(low.id), s.store.get(high.id)
    assert high_done.state is JobState.SUCCEEDED
    assert low_done.state is JobState.SUCCEEDED, all_logs(pg_project, low.id)[-3000:]
    assert low_done.preemptions == 1 and low_done.attempt == 2
    first = all_logs(pg_project, low.id, attempt=1)
    assert "stopping at step" in first
    stopped_at = int(first.split("stopping at step ")[1].split()[0])
    assert f"start step={stopped_at} " in all_logs(pg_project, low.id, attempt=2)
    assert out.read_text() == reference_digest
    moves = [(e.from_state, e.to_state) for e in s.store.events(low.id)]
    assert (JobState.RUNNING, JobState.PREEMPTED) in moves
    assert (JobState.PREEMPTED, JobState.QUEUED) in moves
    # The high-priority job started only after the low one had let go of its CPUs.
    high_start = high_done.started_at
    preempted_at = next(e.at for e in s.store.events(low.id) if e.to_state is JobState.PREEMPTED)
    assert high_start is not None and high_start >= preempted_at


def _start_scheduler(project: Project, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "scheduler", "run", "--interval", "0.2",
             "--config", str(project.root / "flywheel.yaml")],
            stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip


def test_scheduler_kill9_readopts_running_job(any_project: Project, tmp_path: Path) -> None:
    store = JobStore(any_project.db)
    job = store.submit(
        JobSpec(name="sleepy", entrypoint=HELLO, env={"SLEEP": "4"},
                resources=Resources(procs_per_node=1))
    )  # fmt: skip
    log = tmp_path / "scheduler.log"
    first = _start_scheduler(any_project, log)
    try:
        deadline = time.monotonic() + 120
        while store.get(job.id).state is not JobState.RUNNING and time.monotonic() < deadline:
            assert first.poll() is None, log.read_text()
            time.sleep(0.1)
        assert store.get(job.id).state is JobState.RUNNING, log.read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    attempt_dir = any_project.config.state_dir / "training" / "jobs" / job.id / "attempt-1"
    assert _lock_held(attempt_dir / "lock")  # the job outlived its scheduler
    second = _start_scheduler(any_project, log)
    try:
        deadline = time.monotonic() + 180
        while not store.get(job.id).state.terminal and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)
    done = store.get(job.id)
    assert done.state is JobState.SUCCEEDED, log.read_text()
    assert done.attempt == 1  # never relaunched
    assert all_logs(any_project, job.id).count("hello from rank 0") == 1
    assert not (any_project.config.state_dir / "training" / "jobs" / job.id / "attempt-2").exists()


def test_two_agent_rendezvous_on_localhost(
    project: Project, parquet_file: Path, reference_digest: str, tmp_path: Path
) -> None:
    """nodes=2 x 1 process: two torchrun agents meet at one c10d endpoint on 127.0.0.1 and train
    the same model as one agent with 2 processes, to the same bits."""
    s = Scheduler(project, inventory=[NodeCapacity("local", 2)])
    out = tmp_path / "digest"
    job = s.store.submit(
        train_spec("twonode", out, parquet_file, resources=Resources(nodes=2, procs_per_node=1))
    )
    run_until_done(s, [job.id])
    done = s.store.get(job.id)
    files = TrainingService(project).logs(job.id)
    assert done.state is JobState.SUCCEEDED, "\n".join(files.values())[-3000:]
    assert {"node0/agent.log", "node1/agent.log"} <= set(files)
    assert [s.node for s in done.placement] == ["local", "local"]
    assert out.read_text() == reference_digest
