"""The supervisor: one small process per job attempt that owns the job's ``torchrun`` agents.

``python -m flywheel.training._supervisor ATTEMPT_DIR`` reads ``launch.json`` from the folder,
starts one ``torchrun`` agent per job node, forwards SIGTERM/SIGINT to them (preemption and
cancel: torchrun passes it on to the workers, which checkpoint and exit), waits for all, and
writes ``status.json`` atomically with the exit codes. It imports nothing heavy (no torch).

Liveness is a ``flock`` on ``ATTEMPT_DIR/lock``, taken by the launcher *before* this process
starts and inherited by it (file descriptor in ``$FLYWHEEL_SUPERVISOR_LOCK_FD``), so there is
no moment when a started supervisor looks dead. The scheduler probes the lock: held means
alive, free plus ``status.json`` means finished, free without it means lost (killed with -9,
machine rebooted). A pid can be recycled; a lock cannot outlive its process.

It waits for its agents without polling (one thread per agent blocked in ``wait``), so it writes
``status.json`` the moment the last agent exits; the launcher runs it as a script with ``-I -S``
(no site-packages, not even the ``flywheel`` package), so it starts its agents within a few
milliseconds of the launch. Only the standard library may be imported here.

The agents get ``PR_SET_PDEATHSIG=SIGKILL``: if the supervisor is killed with -9 they die
too, so a job the scheduler finds "lost" is really gone before it is requeued (never twice).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

LOCK_FD_ENV = "FLYWHEEL_SUPERVISOR_LOCK_FD"
# After one agent of a multi-node job fails, how long the others get to notice on their own.
PEER_EXIT_GRACE_S = 30.0
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def supervise(attempt_dir: Path) -> int:
    launch = json.loads((attempt_dir / "launch.json").read_text(encoding="utf-8"))
    signalled: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, _frame: Any) -> None:
        signalled.append(signum)
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    started = time.time()
    for i, agent in enumerate(launch["agents"]):
        log = open(attempt_dir / f"agent-{i}.log", "ab")  # noqa: SIM115 - owned by the child
        procs.append(
            subprocess.Popen(
                agent["argv"],
                env=agent["env"],
                cwd=launch.get("cwd") or None,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent,
            )
        )
        log.close()
    wait_for_agents(procs, lambda: forward(signal.SIGTERM, None))
    codes = [p.returncode for p in procs]
    exit_code = next((c for c in codes if c != 0), 0)
    write_json_atomic(
        attempt_dir / "status.json",
        {
            "exit_code": exit_code,
            "agent_exit_codes": codes,
            "signalled": bool(signalled),
            "started_at": started,
            "finished_at": time.time(),
        },
    )
    return 0


def wait_for_agents(procs: list[subprocess.Popen[bytes]], stop_all: Any) -> None:
    """Block until every agent exited; ``PEER_EXIT_GRACE_S`` after the first failure, call
    ``stop_all`` once (the others did not notice on their own)."""
    exited: queue.Queue[int] = queue.Queue()

    def watch(index: int, proc: subprocess.Popen[bytes]) -> None:
        proc.wait()
        exited.put(index)

    for i, proc in enumerate(procs):
        threading.Thread(target=watch, args=(i, proc), daemon=True).start()
    deadline: float | None = None
    stopped = False
    for _ in procs:
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                index = exited.get(timeout=timeout)
                break
            except queue.Empty:  # the grace period ran out
                stop_all()
                deadline, stopped = None, True
        if procs[index].returncode != 0 and deadline is None and not stopped:
            deadline = time.monotonic() + PEER_EXIT_GRACE_S


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m flywheel.training._supervisor ATTEMPT_DIR\n")
        return 2
    # Keep the inherited lock open (never close it) for as long as this process lives.
    fd = os.environ.pop(LOCK_FD_ENV, None)
    if fd is not None:
        os.set_inheritable(int(fd), False)
    return supervise(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
