"""A real multi-node Ray cluster on this machine, for tests and benchmarks.

``LocalRayCluster(base_port, nodes=[{"node_a": 1}, {"node_b": 1}])`` runs ``ray start --head``
and then ``ray start --address`` for each further node, every node with its own custom resource
(so placement is observable), one CPU each by default, every port taken from
``base_port .. base_port + 99`` and one temp folder per cluster. ``stop()`` kills exactly the
processes of this cluster (found by a marker in their environment), never others.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

from flywheel.errors import FlywheelError

CLUSTER_ENV = "FLYWHEEL_LOCAL_RAY_CLUSTER"


class LocalRayCluster:
    def __init__(
        self,
        base_port: int,
        nodes: list[dict[str, float]],
        *,
        cpus_per_node: int = 1,
        object_store_bytes: int = 80 * 1024 * 1024,
        env: dict[str, str] | None = None,
    ) -> None:
        if len(nodes) > 3:
            raise ValueError("at most 3 nodes fit in one block of 100 ports")
        self.base_port = base_port
        self.nodes = nodes
        self.cpus_per_node = cpus_per_node
        self.object_store_bytes = object_store_bytes
        self.env = env
        # A short path: Ray's unix sockets live under it (108-byte limit).
        self.temp_dir = tempfile.mkdtemp(prefix="fwray-", dir="/tmp")
        self.address = f"127.0.0.1:{base_port}"

    def _ports(self, i: int) -> list[str]:
        b = self.base_port + 30 * i
        ports = [
            f"--node-manager-port={b + 2}",
            f"--object-manager-port={b + 3}",
            f"--metrics-export-port={b + 4}",
            f"--dashboard-agent-grpc-port={b + 5}",
            f"--dashboard-agent-listen-port={b + 6}",
            f"--runtime-env-agent-port={b + 7}",
            f"--min-worker-port={b + 10}",
            f"--max-worker-port={b + 29}",
        ]
        if i == 0:
            ports += [
                f"--port={b}",
                f"--ray-client-server-port={b + 1}",
                f"--dashboard-port={b + 8}",
            ]
        return ports

    def start(self, timeout: float = 180.0, tries: int = 3) -> LocalRayCluster:
        """Start every node; ``ray start`` gives a raylet a fixed 30 s to register, which a
        loaded machine can miss: the whole cluster is then stopped and started again."""
        for attempt in range(tries):
            try:
                return self._start(timeout)
            except FlywheelError:
                if attempt == tries - 1:
                    raise
                self.temp_dir = tempfile.mkdtemp(prefix="fwray-", dir="/tmp")
        return self

    def _start(self, timeout: float) -> LocalRayCluster:
        ray_bin = str(Path(sys.executable).with_name("ray"))
        env = dict(self.env if self.env is not None else os.environ)
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        env[CLUSTER_ENV] = self.temp_dir  # inherited by every process of the cluster
        for i, resources in enumerate(self.nodes):
            argv = [
                ray_bin,
                "start",
                "--head" if i == 0 else f"--address={self.address}",
                "--node-ip-address=127.0.0.1",
                f"--num-cpus={self.cpus_per_node}",
                "--num-gpus=0",
                f"--resources={json.dumps(resources)}",
                f"--object-store-memory={self.object_store_bytes}",
                f"--temp-dir={self.temp_dir}",
                "--disable-usage-stats",
                *self._ports(i),
            ]
            if i == 0:
                argv.append("--include-dashboard=false")
            done = subprocess.run(
                argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
            )
            if done.returncode != 0:
                self.stop()
                raise FlywheelError(
                    f"ray start (node {i}) failed with exit {done.returncode}: "
                    f"{(done.stderr or done.stdout)[-2000:]}"
                )
        self._wait_nodes(timeout)
        return self

    def _wait_nodes(self, timeout: float, count: int | None = None) -> None:
        """Until every node is registered (``ray start`` of a worker can return before)."""
        probe = (
            "import ray, sys; ray.init(address=sys.argv[1], log_to_driver=False, "
            "configure_logging=False); print(sum(1 for n in ray.nodes() if n['Alive']))"
        )
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            done = subprocess.run(
                [sys.executable, "-c", probe, self.address],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            lines = done.stdout.strip().splitlines()
            last = lines[-1] if lines else done.stderr[-300:]
            if done.returncode == 0 and last == str(count or len(self.nodes)):
                return
            time.sleep(1.0)
        self.stop()
        raise FlywheelError(f"Ray cluster at {self.address}: nodes not up after {timeout}s: {last}")

    def pids(self) -> list[int]:
        """Processes of this cluster: their environment names its temp folder."""
        mine = f"{CLUSTER_ENV}={self.temp_dir}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                environ = (proc / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if mine in environ:
                found.append(int(proc.name))
        return found

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self.pids()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 10
            while pids and self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def __enter__(self) -> LocalRayCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


__all__ = ["LocalRayCluster"]
