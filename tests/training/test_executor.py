"""The local executor's pieces that need no torchrun: command lines, liveness, leftovers."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flywheel.training import Job, JobSpec, JobState, ProcessState, Resources
from flywheel.training._executor import LocalExecutor, torchrun_argv
from flywheel.training._policy import Slot


def make_job(spec: JobSpec, attempt: int = 1, job_id: str = "j-1") -> Job:
    now = datetime.now(UTC)
    return Job(
        id=job_id, seq=1, spec=spec, state=JobState.ADMITTED, placement=(Slot("local", 1),),
        attempt=attempt, restarts=0, preemptions=0, pid=None, exit_code=None, reason="",
        cancel_requested=False, preempt_requested=False, signalled_at=None, run_id=None,
        model_version=None, submitted_at=now, started_at=None, finished_at=None, updated_at=now,
    )  # fmt: skip


def test_torchrun_command_line() -> None:
    spec = JobSpec(
        name="x", entrypoint="pkg.mod:main", args=("--a", "1"), max_restarts=4,
        resources=Resources(nodes=2, procs_per_node=3),
    )  # fmt: skip
    argv = torchrun_argv(make_job(spec), node_index=1, port=29999, log_dir=Path("/tmp/l"))
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert {"--nnodes=2", "--nproc-per-node=3", "--max-restarts=4", "--rdzv-backend=c10d"} <= set(
        argv
    )
    assert "--rdzv-endpoint=127.0.0.1:29999" in argv and "--rdzv-id=j-1-a1" in argv
    assert any(a.startswith("--rdzv-conf=is_host=0") for a in argv)
    assert argv[-5:] == ["-m", "flywheel.training._entry", "pkg.mod:main", "--a", "1"]
    script = JobSpec(name="s", entrypoint="train.py", workdir="/work/dir")
    assert torchrun_argv(make_job(script), node_index=0, port=1, log_dir=Path("/l"))[-1] == (
        "/work/dir/train.py"
    )


def test_status_of_unlaunched_attempt(tmp_path: Path) -> None:
    ex = LocalExecutor(tmp_path)
    job = make_job(JobSpec(name="x", entrypoint="m:f"))
    assert ex.status(job).state is ProcessState.NOT_STARTED
    assert ex.logs(job) == {}


@pytest.mark.integration
def test_kill_leftovers_finds_orphans_by_job_env(tmp_path: Path) -> None:
    job = make_job(JobSpec(name="x", entrypoint="m:f"), attempt=3, job_id="orphan-job")
    env = {**os.environ, "FLYWHEEL_JOB_ID": "orphan-job", "FLYWHEEL_JOB_ATTEMPT": "3"}
    mine = subprocess.Popen(["sleep", "60"], env=env, start_new_session=True)
    other_env = {**env, "FLYWHEEL_JOB_ATTEMPT": "4"}
    other = subprocess.Popen(["sleep", "60"], env=other_env, start_new_session=True)
    try:
        assert LocalExecutor(tmp_path).kill_leftovers(job) == 1
        assert mine.wait(timeout=10) == -9
        assert other.poll() is None  # another attempt's process is left alone
    finally:
        other.kill()
        other.wait()
