"""``RayExecutor``: the scheduler's jobs placed and launched on the nodes of a Ray cluster.

Flywheel keeps its queue, quotas, fair share, preemption, tracking, checkpoints and registry;
Ray does placement and process launch:

* **Inventory** — Ray's alive nodes: CPUs, GPUs and custom resources (shown as labels). A
  node's inventory name is its Ray node id.
* **A job attempt = a placement group** named ``flywheel-<job id>-a<attempt>`` (detached, so it
  outlives the scheduler), one bundle per job node (``STRICT_SPREAD`` for multi-node jobs,
  ``PACK`` otherwise), each bundle pinned to the node the scheduler's plan chose (label
  ``ray.io/node-id``), so Flywheel's accounting and Ray's placement agree.
* **One ``torchrun`` agent per bundle** in a detached, named actor (``TorchrunAgent``) on that
  bundle's node; the agents meet at a c10d store on the first bundle's node.
* **Shared files** — the attempt folder (launch record, agent logs, per-rank logs, status, the
  stop marker) and the checkpoints live under the artifact store, which must be a ``file://``
  URL of a filesystem every Ray node mounts at the same path (NFS, CephFS, ...). A plain path
  is refused: it names this machine's disk, which the other nodes cannot see.

Lifecycle, as for local jobs: ``signal(SIGTERM)`` reaches torchrun through the actor (workers
checkpoint and stop); when every agent has exited the scheduler calls ``release`` (actors
killed, placement group removed, Ray's resources returned). A restarted scheduler finds an
attempt by its names — ``launch`` of an attempt whose actors exist starts nothing new. An agent
whose actor died (its node was lost) makes the attempt LOST: the scheduler releases it and
requeues the job, which resumes from its checkpoint on whatever nodes are alive.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

from flywheel.artifacts import ArtifactStore
from flywheel.config import CONFIG_FILENAME, FlywheelConfig
from flywheel.errors import ConfigError
from flywheel.training._errors import TrainingError
from flywheel.training._executor import (
    ENV_STOP_MARKER,
    LocalExecutor,
    ProcessState,
    ProcessStatus,
    torchrun_argv,
)
from flywheel.training._policy import NodeCapacity
from flywheel.training._store import Job
from flywheel.training._supervisor import write_json_atomic

NODE_ID_LABEL = "ray.io/node-id"
# ``auto``, ``host:port`` (a head node's GCS) or ``ray://host:port`` (Ray Client, port 10001 by
# default on a head started with ``ray start --head``).
_ADDRESS = re.compile(r"^(auto|(ray://)?[A-Za-z0-9_.\-\[\]:]*[A-Za-z0-9_.\-\]]:\d{1,5})$")
# Ray resources that are not labels a user set.
_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory", "accelerator_type:")


def shared_root(config: FlywheelConfig) -> Path:
    """The shared folder (``file://`` artifact store) the Ray executor keeps job files in.

    ``ConfigError`` if the artifact store is a plain path (this machine only) or a remote
    fsspec URL (checkpoints are written with ordinary file I/O by the workers).
    """
    url = config.artifacts
    file = str(config.root / CONFIG_FILENAME)
    if url.startswith("file://"):
        path = Path(url[len("file://") :])
        if not path.is_absolute():
            raise ConfigError(
                file,
                "artifacts",
                f"{url!r} must be an absolute file:// URL when training.executor is ray "
                "(a folder every Ray node mounts at the same path)",
            )
        return path
    if "://" not in url:
        raise ConfigError(
            file,
            "artifacts",
            f"{url!r} is a local path, but training.executor: ray runs jobs on other machines; "
            "set artifacts to file:///<absolute path> on a filesystem every Ray node mounts at "
            "the same path (NFS, CephFS, ...)",
        )
    raise ConfigError(
        file,
        "artifacts",
        f"{url!r}: training.executor: ray needs a file:// URL on a shared mount (object "
        "stores are not supported for live checkpoints yet)",
    )


def check_address(address: str, config: FlywheelConfig) -> str:
    """``address`` if it is ``auto``, ``host:port`` or ``ray://host:port``; else ``ConfigError``
    naming ``training.ray.address`` (before any connection attempt)."""
    if not _ADDRESS.match(address):
        raise ConfigError(
            str(config.root / CONFIG_FILENAME),
            "training.ray.address",
            f"{address!r} is not a Ray address: use auto (the cluster this machine joined, or "
            "$RAY_ADDRESS), host:port (a head node's GCS, e.g. 10.0.0.5:6379) or "
            "ray://host:port (Ray Client, e.g. ray://10.0.0.5:10001)",
        )
    return address


def _labels(resources: dict[str, float]) -> tuple[str, ...]:
    return tuple(
        sorted(
            k
            for k in resources
            if k not in _BUILTIN_RESOURCES
            and not k.startswith(("node:", "accelerator_type:"))
            and "_group_" not in k
        )
    )


class RayExecutor(LocalExecutor):
    """Runs attempts on a Ray cluster (see the module docstring). Reuses ``LocalExecutor``'s
    file layout and log reading, with the jobs folder on the shared artifact mount."""

    distinct_nodes = True  # STRICT_SPREAD: the scheduler's plan puts job nodes on distinct nodes

    def __init__(
        self,
        config: FlywheelConfig,
        artifacts: ArtifactStore | None = None,
        *,
        address: str | None = None,
    ) -> None:
        super().__init__(shared_root(config) / "training" / "attempts", artifacts)
        self.address = check_address(address or config.training.ray.address, config)
        self.namespace = config.training.ray.namespace
        self.placement_timeout = config.training.ray.placement_timeout
        self._ray: Any = None
        self._file = str(config.root / CONFIG_FILENAME)

    # -- connection ------------------------------------------------------------------------------

    def ray(self) -> Any:
        """The ``ray`` module, connected to the cluster (imported on first use only)."""
        if self._ray is None:
            try:
                import ray
            except ImportError:
                raise ConfigError(
                    self._file,
                    "training.executor",
                    "ray needs the ray extra: pip install 'flywheel[ray]'",
                ) from None
            if not ray.is_initialized():
                try:
                    ray.init(
                        address=self.address,
                        namespace=self.namespace,
                        log_to_driver=False,
                        configure_logging=False,
                    )
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise ConfigError(
                        self._file,
                        "training.ray.address",
                        f"cannot connect to Ray at {self.address!r}: {exc}",
                    ) from None
            self._ray = ray
        return self._ray

    def inventory(self) -> list[NodeCapacity]:
        """Ray's alive nodes: name = node id, CPUs, GPUs, custom resources as labels."""
        ray = self.ray()
        nodes = []
        for node in ray.nodes():
            if not node.get("Alive"):
                continue
            res = node.get("Resources", {})
            nodes.append(
                NodeCapacity(
                    name=node["NodeID"],
                    cpus=int(res.get("CPU", 0)),
                    gpus=tuple(range(int(res.get("GPU", 0)))),
                    host=node.get("NodeManagerAddress", "127.0.0.1"),
                    labels=_labels(res),
                )
            )
        return sorted(nodes, key=lambda n: (n.labels, n.name))

    # -- names -----------------------------------------------------------------------------------

    def _pg_name(self, job: Job) -> str:
        return f"flywheel-{job.id}-a{job.attempt}"

    def _actor_name(self, job: Job, index: int) -> str:
        return f"flywheel-{job.id}-a{job.attempt}-n{index}"

    def _get_pg(self, job: Job) -> Any:
        from ray.util import get_placement_group

        try:
            return get_placement_group(self._pg_name(job))
        except ValueError:
            return None

    def _get_actor(self, job: Job, index: int) -> Any:
        try:
            return self.ray().get_actor(self._actor_name(job, index), namespace=self.namespace)
        except ValueError:
            return None

    # -- the Executor protocol -------------------------------------------------------------------

    def launch(self, job: Job, env: dict[str, str]) -> int:
        ray = self.ray()
        from ray.util.placement_group import placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from flywheel.training._ray_agent import TorchrunAgent

        adir = self.attempt_dir(job)
        if (adir / "started").exists():
            return int((adir / "started").read_text() or 0)
        adir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_dir(job.id).mkdir(parents=True, exist_ok=True)
        slots = list(job.placement or ())
        bundles: list[dict[str, float]] = []
        for slot in slots:
            bundle = {"CPU": float(slot.cpus)}
            if slot.gpus:
                bundle["GPU"] = float(len(slot.gpus))
            bundles.append(bundle)
        pg = self._get_pg(job)
        if pg is None:
            pg = placement_group(
                bundles,
                strategy="STRICT_SPREAD" if len(bundles) > 1 else "PACK",
                name=self._pg_name(job),
                lifetime="detached",
                bundle_label_selector=[{NODE_ID_LABEL: slot.node} for slot in slots],
            )
        if not pg.wait(timeout_seconds=self.placement_timeout):
            ray.util.remove_placement_group(pg)
            raise TrainingError(
                f"Ray could not place job {job.id} attempt {job.attempt} within "
                f"{self.placement_timeout:.0f}s (bundles {bundles}); is the cluster busy?"
            )
        remote = ray.remote(TorchrunAgent)
        actors = []
        for i, bundle in enumerate(bundles):
            actor = self._get_actor(job, i)
            if actor is None:
                actor = remote.options(
                    name=self._actor_name(job, i),
                    namespace=self.namespace,
                    lifetime="detached",
                    num_cpus=bundle["CPU"],
                    num_gpus=bundle.get("GPU", 0),
                    max_restarts=0,
                    max_concurrency=4,
                    scheduling_strategy=PlacementGroupSchedulingStrategy(
                        placement_group=pg, placement_group_bundle_index=i
                    ),
                ).remote(job.id, job.attempt, i)
            actors.append(actor)
        where = ray.get([a.where.remote() for a in actors])
        launch_file = adir / "launch.json"
        if launch_file.exists():  # a previous scheduler got this far: same endpoint, same argv
            record = json.loads(launch_file.read_text(encoding="utf-8"))
        else:
            host = where[0]["ip"]
            port = ray.get(actors[0].free_port.remote(host))
            # Only what the job sets travels; each node keeps its own PATH, HOME, ...
            job_env = {k: v for k, v in env.items() if os.environ.get(k) != v}
            job_env[ENV_STOP_MARKER] = str(adir / "stopped")
            agents = []
            for i, w in enumerate(where):
                agent_env = dict(job_env)
                if slots[i].gpus:
                    agent_env["CUDA_VISIBLE_DEVICES"] = ",".join(
                        str(g) for g in range(len(slots[i].gpus))
                    )
                argv = torchrun_argv(
                    job, node_index=i, port=port, log_dir=adir / f"torchrun-{i}", host=host
                )
                argv = [
                    a if a != "--local-addr=127.0.0.1" else f"--local-addr={w['ip']}" for a in argv
                ]
                agents.append({"node": w["node_id"], "ip": w["ip"], "argv": argv, "env": agent_env})
            record = {"agents": agents, "cwd": job.spec.workdir, "where": where}
            write_json_atomic(launch_file, record)
        pids = ray.get(
            [
                a.start.remote(
                    agent["argv"], agent["env"], record["cwd"], str(adir / f"agent-{i}.log")
                )
                for i, (a, agent) in enumerate(zip(actors, record["agents"], strict=True))
            ]
        )
        (adir / "started").write_text(str(pids[0]))
        return int(pids[0])

    def placement(self, job: Job, attempt: int | None = None) -> list[dict[str, Any]]:
        """Where each job node of an attempt ran: Ray node id, IP and that node's resources."""
        launch_file = self.attempt_dir(job, attempt) / "launch.json"
        if not launch_file.exists():
            return []
        return list(json.loads(launch_file.read_text(encoding="utf-8"))["where"])

    def _agents(self, job: Job) -> list[Any]:
        n = len(job.placement or ()) or job.spec.resources.nodes
        return [self._get_actor(job, i) for i in range(n)]

    def status(self, job: Job) -> ProcessStatus:
        adir = self.attempt_dir(job)
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
        if not (adir / "started").exists():
            return ProcessStatus(ProcessState.NOT_STARTED)
        ray = self.ray()
        from ray.exceptions import GetTimeoutError, RayActorError

        agents = self._agents(job)
        if any(a is None for a in agents):
            return ProcessStatus(ProcessState.LOST, restarts=self.restarts(job))
        try:
            polls = ray.get([a.poll.remote() for a in agents], timeout=30)
        except (RayActorError, GetTimeoutError):
            return ProcessStatus(ProcessState.LOST, restarts=self.restarts(job))
        codes = [p["exit_code"] for p in polls]
        if any(c is None for c in codes):
            return ProcessStatus(ProcessState.RUNNING, restarts=self.restarts(job))
        exit_code = next((c for c in codes if c != 0), 0)
        signalled = (adir / "signalled").exists()
        write_json_atomic(
            status_file,
            {"exit_code": exit_code, "agent_exit_codes": codes, "signalled": signalled},
        )
        return ProcessStatus(
            ProcessState.EXITED,
            exit_code=exit_code,
            signalled=signalled,
            restarts=self.restarts(job),
            stopped=(adir / "stopped").exists(),
        )

    def agent_starts(self, job: Job) -> list[int]:
        """How many times each agent of the running attempt started torchrun (1 = once)."""
        ray = self.ray()
        from ray.exceptions import RayActorError

        agents = self._agents(job)
        if any(a is None for a in agents):
            return []
        try:
            return [int(p["starts"]) for p in ray.get([a.poll.remote() for a in agents])]
        except RayActorError:
            return []

    def signal(self, job: Job, sig: int) -> None:
        ray = self.ray()
        from ray.exceptions import RayActorError

        adir = self.attempt_dir(job)
        if not (adir / "started").exists() or (adir / "status.json").exists():
            return
        (adir / "signalled").touch()
        for actor in self._agents(job):
            if actor is not None:
                with contextlib.suppress(RayActorError):
                    ray.get(actor.signal.remote(int(sig)), timeout=30)

    def release(self, job: Job) -> None:
        """Kill the attempt's actors (and anything of it left on their nodes) and remove its
        placement group: Ray's resources return to the cluster."""
        ray = self.ray()
        from ray.exceptions import GetTimeoutError, RayActorError

        for actor in self._agents(job):
            if actor is None:
                continue
            with contextlib.suppress(RayActorError, GetTimeoutError):
                ray.get(actor.kill_leftovers.remote(), timeout=30)
            ray.kill(actor, no_restart=True)
        pg = self._get_pg(job)
        if pg is not None:
            ray.util.remove_placement_group(pg)
        deadline = time.monotonic() + 30  # removal is asynchronous in the GCS
        while self._get_pg(job) is not None and time.monotonic() < deadline:
            time.sleep(0.05)

    def kill_leftovers(self, job: Job) -> int:
        self.release(job)
        return 0


__all__ = ["RayExecutor", "check_address", "shared_root"]
