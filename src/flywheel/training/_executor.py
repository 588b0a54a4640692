"""Executors: the seam between scheduling decisions and processes.

``Executor`` is the interface the scheduler talks to (contract in its docstring); the
``LocalExecutor`` runs every job node's ``torchrun`` agent on this machine, under one
supervisor process per attempt (see ``_supervisor``). Multi-node jobs use c10d rendezvous
on a fresh port of 127.0.0.1, with node 0's agent hosting the store, exactly as agents on
separate machines would.

Files of one job (under ``.flywheel/training/jobs/<job id>/``)::

    checkpoints/                      shared by all attempts: resume finds the newest valid one
    attempt-<n>/launch.json           what the supervisor starts
    attempt-<n>/lock                  flock held while the supervisor lives
    attempt-<n>/status.json           exit codes, written atomically when all agents are done
    attempt-<n>/agent-<i>.log         torchrun's own output for job node i
    attempt-<n>/torchrun-<i>/...      per-rank stdout/stderr of every restart (torchrun --log-dir)
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from flywheel.artifacts import ArtifactStore
from flywheel.training._store import Job
from flywheel.training._supervisor import LOCK_FD_ENV, write_json_atomic

SUPERVISOR_SCRIPT = str(Path(__file__).with_name("_supervisor.py"))

# Env vars the runtime library reads inside workers.
ENV_JOB_ID = "FLYWHEEL_JOB_ID"
ENV_ATTEMPT = "FLYWHEEL_JOB_ATTEMPT"
ENV_SPEC = "FLYWHEEL_JOB_SPEC"
ENV_CHECKPOINT_DIR = "FLYWHEEL_CHECKPOINT_DIR"
ENV_DATASET = "FLYWHEEL_DATASET"
ENV_STOP_MARKER = "FLYWHEEL_STOP_MARKER"


class ProcessState(enum.StrEnum):
    NOT_STARTED = "not_started"
    RUNNING = "running"
    EXITED = "exited"
    LOST = "lost"


@dataclass(frozen=True)
class ProcessStatus:
    state: ProcessState
    exit_code: int | None = None
    signalled: bool = False
    restarts: int = 0
    # The workers checkpointed and stopped early on request (``runtime`` wrote the marker).
    stopped: bool = False


class Executor(Protocol):
    """Runs job attempts. Contract:

    * ``launch(job, env)`` starts attempt ``job.attempt`` and returns an id (a pid) once the
      attempt is observably running (``status`` says RUNNING or EXITED from then on, never
      NOT_STARTED or LOST unless the process really died). Launching an attempt that already
      started raises nothing and starts nothing: it returns the existing id.
    * ``status(job)`` is cheap, side-effect free, and works for attempts started by another
      (killed) scheduler process.
    * ``signal(job, sig)`` delivers ``sig`` to a running attempt; a no-op otherwise.
    * ``logs(job)`` returns the text of the attempt's logs so far, per file name.
    """

    def launch(self, job: Job, env: dict[str, str]) -> int: ...

    def status(self, job: Job) -> ProcessStatus: ...

    def signal(self, job: Job, sig: int) -> None: ...

    def logs(self, job: Job, attempt: int | None = None) -> dict[str, str]: ...


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _lock_held(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing also drops the lock if we got it
    return False


_ATTEMPT_DIR = re.compile(r"attempt_(\d+)$")


def torchrun_argv(
    job: Job,
    *,
    node_index: int,
    port: int,
    log_dir: Path,
    host: str = "127.0.0.1",
) -> list[str]:
    """The ``torchrun`` command line for one job node (``python -m torch.distributed.run``)."""
    spec = job.spec
    res = spec.resources
    argv = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nnodes={res.nodes}",
        f"--nproc-per-node={res.procs_per_node}",
        f"--max-restarts={spec.max_restarts}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={host}:{port}",
        f"--rdzv-id={job.id}-a{job.attempt}",
        f"--rdzv-conf=is_host={1 if node_index == 0 else 0},join_timeout=120",
        "--monitor-interval=0.2",
        f"--log-dir={log_dir}",
        "--redirects=3",
        "--local-addr=127.0.0.1",
    ]
    if spec.is_script:
        script = Path(spec.entrypoint)
        if not script.is_absolute() and spec.workdir:
            script = Path(spec.workdir) / script
        argv.append(str(script))
    else:
        argv += ["-m", "flywheel.training._entry", spec.entrypoint]
    return argv + list(spec.args)


class LocalExecutor:
    """Runs attempts as local processes (``torchrun`` agents under a supervisor)."""

    def __init__(self, jobs_dir: Path, artifacts: ArtifactStore | None = None) -> None:
        self.jobs_dir = jobs_dir
        self.artifacts = artifacts
        self._children: dict[str, subprocess.Popen[bytes]] = {}
        # Called (from a watcher thread) when an attempt this executor launched has exited, so
        # the scheduler reconciles at once instead of at its next poll (``Scheduler.wake``).
        self.on_exit: Callable[[], None] | None = None

    def job_dir(self, job_id: str) -> Path:
        return self.jobs_dir / job_id

    def attempt_dir(self, job: Job, attempt: int | None = None) -> Path:
        return self.job_dir(job.id) / f"attempt-{job.attempt if attempt is None else attempt}"

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "checkpoints"

    def launch(self, job: Job, env: dict[str, str]) -> int:
        adir = self.attempt_dir(job)
        status = self.status(job)
        if status.state is not ProcessState.NOT_STARTED:
            return int((adir / "supervisor.pid").read_text() or 0)
        adir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir(job.id).mkdir(parents=True, exist_ok=True)
        port = free_port()
        agents = []
        for i, slot in enumerate(job.placement or ()):
            agent_env = dict(env)
            agent_env["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in slot.gpus)
            agent_env[ENV_STOP_MARKER] = str(adir / "stopped")
            agents.append(
                {
                    "node": slot.node,
                    "argv": torchrun_argv(
                        job, node_index=i, port=port, log_dir=adir / f"torchrun-{i}"
                    ),
                    "env": agent_env,
                }
            )
        write_json_atomic(adir / "launch.json", {"agents": agents, "cwd": job.spec.workdir})
        lock_fd = os.open(adir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.set_inheritable(lock_fd, True)
            log = open(adir / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child
            child_env = dict(os.environ)
            child_env[LOCK_FD_ENV] = str(lock_fd)
            proc = subprocess.Popen(
                # A script, isolated and without site-packages: it needs only the standard
                # library, and every millisecond here delays the job's start.
                [sys.executable, "-I", "-S", SUPERVISOR_SCRIPT, str(adir)],
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(lock_fd,),
                start_new_session=True,
            )
            log.close()
        finally:
            os.close(lock_fd)  # the child holds the lock now
        (adir / "supervisor.pid").write_text(str(proc.pid))
        self._children[f"{job.id}/{job.attempt}"] = proc
        threading.Thread(
            target=self._watch, args=(proc,), name=f"flywheel-watch-{job.id}", daemon=True
        ).start()
        return proc.pid

    def _watch(self, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        if self.on_exit is not None:
            self.on_exit()

    def status(self, job: Job) -> ProcessStatus:
        adir = self.attempt_dir(job)
        child = self._children.get(f"{job.id}/{job.attempt}")
        if child is not None and child.poll() is not None:
            self._children.pop(f"{job.id}/{job.attempt}", None)  # reaped
        if not (adir / "launch.json").exists() or not (adir / "lock").exists():
            return ProcessStatus(ProcessState.NOT_STARTED)
        if _lock_held(adir / "lock"):
            return ProcessStatus(ProcessState.RUNNING, restarts=self.restarts(job))
        status_file = adir / "status.json"
        if status_file.exists():
            data = json.loads(status_file.read_text(encoding="utf-8"))
            return ProcessStatus(
                ProcessState.EXITED,
                exit_code=int(data["exit_code"]),
                signalled=bool(data.get("signalled")),
                restarts=self.restarts(job),
                stopped=(adir / "stopped").exists(),
            )
        return ProcessStatus(ProcessState.LOST, restarts=self.restarts(job))

    def restarts(self, job: Job) -> int:
        """How many times torchrun restarted the worker group in this attempt (max over nodes)."""
        best = 0
        for path in self.attempt_dir(job).glob("torchrun-*/*/attempt_*"):
            m = _ATTEMPT_DIR.search(path.name)
            if m:
                best = max(best, int(m.group(1)))
        return best

    def signal(self, job: Job, sig: int) -> None:
        adir = self.attempt_dir(job)
        if not _lock_held(adir / "lock"):
            return
        try:
            pid = int((adir / "supervisor.pid").read_text())
        except (OSError, ValueError):
            return
        try:
            if sig == signal.SIGKILL:
                os.killpg(pid, signal.SIGKILL)  # the supervisor's session: the agents
                self.kill_leftovers(job)  # workers live in sessions of their own
            else:
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def kill_leftovers(self, job: Job) -> int:
        """SIGKILL every process of this attempt still alive, wherever it was reparented.

        torchrun starts workers in their own sessions, so a killed supervisor or agent can
        leave them running; they are found by the job id and attempt in their environment.
        Returns how many were killed.
        """
        wanted = {
            f"{ENV_JOB_ID}={job.id}".encode(),
            f"{ENV_ATTEMPT}={job.attempt}".encode(),
        }
        killed = 0
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = set((proc / "environ").read_bytes().split(b"\0"))
            except OSError:
                continue
            if wanted <= environ:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed += 1
        return killed

    def log_files(self, job: Job, attempt: int | None = None) -> dict[str, Path]:
        """Log files of an attempt by a stable name: ``node0/agent.log``, ``node0/r2/rank1.log``."""
        adir = self.attempt_dir(job, attempt)
        files: dict[str, Path] = {}
        for agent_log in sorted(adir.glob("agent-*.log")):
            node = agent_log.stem.split("-")[1]
            files[f"node{node}/agent.log"] = agent_log
        for out in sorted(adir.glob("torchrun-*/*/attempt_*/*/std*.log")):
            local_rank = out.parent.name
            restart = out.parent.parent.name.split("_")[1]
            node = out.parent.parent.parent.parent.name.split("-")[1]
            stream = "" if out.stem == "stdout" else ".stderr"
            files[f"node{node}/restart{restart}/rank{local_rank}{stream}.log"] = out
        return files

    def logs(self, job: Job, attempt: int | None = None) -> dict[str, str]:
        return {
            name: path.read_text(encoding="utf-8", errors="replace")
            for name, path in self.log_files(job, attempt).items()
        }

    def archive_logs(self, job: Job) -> list[str]:
        """Copy the attempt's logs into the artifact store; returns the keys written."""
        if self.artifacts is None:
            return []
        keys = []
        for name, path in self.log_files(job).items():
            key = f"training/jobs/{job.id}/attempt-{job.attempt}/{name}"
            self.artifacts.put_named_file(key, path)
            keys.append(key)
        return keys


__all__ = [
    "ENV_ATTEMPT",
    "ENV_CHECKPOINT_DIR",
    "ENV_DATASET",
    "ENV_JOB_ID",
    "ENV_SPEC",
    "ENV_STOP_MARKER",
    "Executor",
    "LocalExecutor",
    "ProcessState",
    "ProcessStatus",
    "free_port",
    "torchrun_argv",
]
