"""The Ray actor that runs one job node's ``torchrun`` agent on the Ray node it was placed on.

This module imports no Ray at import time (``ray`` is an optional extra): ``RayExecutor`` wraps
``TorchrunAgent`` with ``ray.remote`` when it creates the actor, and Ray imports this module on
the node. One detached, named actor per placement-group bundle; it survives the scheduler (the
driver) so a restarted scheduler finds it by name (job id and attempt) and adopts it.

The agent's ``torchrun`` is a child of the actor's worker process with ``PR_SET_PDEATHSIG``, so
killing the actor (or losing its node) takes the agent down with it; the agent's workers run in
sessions of their own and are found by the job id and attempt in their environment.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from flywheel.training._supervisor import _die_with_parent


def kill_attempt_processes(job_id: str, attempt: int) -> int:
    """SIGKILL every process on this machine whose environment names this job and attempt."""
    wanted = {f"FLYWHEEL_JOB_ID={job_id}".encode(), f"FLYWHEEL_JOB_ATTEMPT={attempt}".encode()}
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


class TorchrunAgent:
    """One job node: starts ``torchrun`` once, reports its exit code, forwards signals."""

    def __init__(self, job_id: str, attempt: int, node_index: int) -> None:
        self.job_id = job_id
        self.attempt = attempt
        self.node_index = node_index
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def where(self) -> dict[str, Any]:
        """The Ray node this actor runs on: id, IP and its resources (custom labels included)."""
        import ray

        ctx = ray.get_runtime_context()
        node_id = ctx.get_node_id()
        ip = ray.util.get_node_ip_address()
        resources: dict[str, float] = {}
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                resources = dict(node.get("Resources", {}))
        return {"node_id": node_id, "ip": ip, "pid": os.getpid(), "resources": resources}

    def free_port(self, host: str) -> int:
        """A free TCP port on this node for the c10d rendezvous store (node 0 only)."""
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            return int(s.getsockname()[1])

    def start(self, argv: list[str], env: dict[str, str], cwd: str | None, log: str) -> int:
        """Start ``torchrun`` (idempotent: a second call returns the running agent's pid)."""
        if self.proc is not None:
            return self.proc.pid
        full_env = dict(os.environ)
        full_env.update(env)
        argv = [sys.executable, *argv[1:]]  # this node's interpreter, not the scheduler's
        Path(log).parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                argv,
                env=full_env,
                cwd=cwd or None,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        self.starts += 1
        return self.proc.pid

    def poll(self) -> dict[str, Any]:
        """``{"started": bool, "exit_code": int | None, "starts": n}``."""
        if self.proc is None:
            return {"started": False, "exit_code": None, "starts": self.starts}
        return {"started": True, "exit_code": self.proc.poll(), "starts": self.starts}

    def signal(self, sig: int) -> None:
        """SIGTERM goes to torchrun (it forwards to the workers, which checkpoint); SIGKILL
        kills the agent and every worker of this attempt on this node."""
        if self.proc is None or self.proc.poll() is not None:
            return
        if sig == signal.SIGKILL:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            kill_attempt_processes(self.job_id, self.attempt)
            self.proc.wait()
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def kill_leftovers(self) -> int:
        """Kill the agent (if alive) and every process of this attempt on this node."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait()
        return kill_attempt_processes(self.job_id, self.attempt)


__all__ = ["TorchrunAgent", "kill_attempt_processes"]
