"""The Ray executor on a real 2-node Ray cluster on 127.0.0.1 (no mock): placement on distinct
nodes, DDP to the same bits as plain torchrun, SIGKILL of a rank → torchrun restart resuming from
a checkpoint, cancel and preemption releasing the placement group, a scheduler killed with -9
re-adopting the Ray job, and a job that can never fit refused at submit naming the resource."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.errors import ConfigError
from flywheel.project import Project
from flywheel.registry import Registry
from flywheel.training import JobSpec, JobState, JobStore, Resources, Scheduler
from flywheel.training._errors import QuotaError
from flywheel.training._ray import RayExecutor
from flywheel.training._ray_cluster import LocalRayCluster
from flywheel.training._service import TrainingService
from tests.conftest import make_project
from tests.training.conftest import WORKLOADS

pytest.importorskip("ray")  # the `ray` extra; `make test` installs it, so CI runs these

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TRAIN = str(WORKLOADS / "ddp_train.py")
SRC = str(Path(__file__).resolve().parents[2] / "src")
TESTS_ROOT = str(Path(__file__).resolve().parents[2])


def _free_block() -> int:
    """A base port in 16300..16399 (the Ray range) whose first port is free."""
    for base in (16300, 16340):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", base))
            except OSError:
                continue
            return base
    raise AssertionError("no free Ray port block in 16300-16399")


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalRayCluster]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, TESTS_ROOT, env.get("PYTHONPATH")) if p)
    c = LocalRayCluster(_free_block(), [{"node_a": 1}, {"node_b": 1}], env=env)
    c.start()
    try:
        yield c
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        c.stop()


@pytest.fixture(scope="module")
def ray_project(
    cluster: LocalRayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Project]:
    root = tmp_path_factory.mktemp("rayproj")
    shared = tmp_path_factory.mktemp("shared")
    proj = make_project(
        root,
        artifacts=f"file://{shared}",
        training={"executor": "ray", "ray": {"address": cluster.address}, "poll_interval": 0.2},
    )
    yield proj
    proj.close()


@pytest.fixture(scope="module")
def scheduler(ray_project: Project) -> Scheduler:
    return Scheduler(ray_project)


def _full(ray_mod: object) -> dict[str, float]:
    keys = ("CPU", "node_a", "node_b")
    avail = ray_mod.available_resources()  # type: ignore[attr-defined]
    return {k: avail.get(k, 0.0) for k in keys}


def wait_released(timeout: float = 60) -> dict[str, float]:
    import ray

    want = {"CPU": 2.0, "node_a": 1.0, "node_b": 1.0}
    deadline = time.monotonic() + timeout
    while _full(ray) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    return _full(ray)


def run_until(
    s: Scheduler, job_id: str, states: tuple[JobState, ...], timeout: float = 300
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s.tick()
        if s.store.get(job_id).state in states:
            return
        time.sleep(0.2)
    logs = "\n".join(TrainingService(s.project).logs(job_id).values())
    raise AssertionError(f"job not {states} in {timeout}s: {s.store.get(job_id)}\n{logs[-3000:]}")


def spec(name: str, out: Path, data: Path, **kw: object) -> JobSpec:
    env = kw.pop("env", {})
    return JobSpec(
        name=name,
        entrypoint=TRAIN,
        dataset=str(data),
        resources=Resources(nodes=2, procs_per_node=1),
        env={"OUT": str(out), "EPOCHS": "1", "OMP_NUM_THREADS": "1", **env},  # type: ignore[dict-item]
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def reference_digest(parquet_file: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Final weights of an uninterrupted 2-process run under plain torchrun (exit checked)."""
    out = tmp_path_factory.mktemp("ref") / "digest"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EPOCHS": "1", "DATA": str(parquet_file),
           "OUT": str(out), "CKPT_DIR": str(out.parent / "ck")}  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
         "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0", TRAIN],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out.read_text()


def test_local_artifact_path_is_refused(tmp_path: Path) -> None:
    proj = make_project(tmp_path / "p", training={"executor": "ray"})
    try:
        with pytest.raises(ConfigError, match=r"artifacts: .*local path.*file:///"):
            RayExecutor(proj.config)
    finally:
        proj.close()


def test_a_malformed_ray_address_is_refused_naming_the_field(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    proj = make_project(
        tmp_path / "p",
        artifacts=f"file://{shared}",
        training={"executor": "ray", "ray": {"address": "http://head:8265"}},
    )
    try:
        with pytest.raises(ConfigError, match=r"training\.ray\.address.*ray://host:port"):
            RayExecutor(proj.config)
    finally:
        proj.close()


def test_ray_client_address_sees_the_same_cluster(cluster: LocalRayCluster, tmp_path: Path) -> None:
    """``training.ray.address: ray://host:port`` (Ray Client, what a laptop uses to reach a
    remote head) gives the same inventory; in a subprocess, as one process has one Ray driver."""
    shared = tmp_path / "shared"
    client = f"ray://127.0.0.1:{cluster.base_port + 1}"  # the head's --ray-client-server-port
    proj = make_project(
        tmp_path / "p",
        artifacts=f"file://{shared}",
        training={"executor": "ray", "ray": {"address": client}},
    )
    proj.close()
    code = (
        "import sys\n"
        "from flywheel.config import load_config\n"
        "from flywheel.training._ray import RayExecutor\n"
        "print(sorted(n.labels for n in RayExecutor(load_config(sys.argv[1])).inventory()))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "p")],
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[('node_a',), ('node_b',)]"


def test_inventory_is_the_ray_cluster_and_never_fitting_job_is_refused(
    scheduler: Scheduler,
) -> None:
    assert sorted(n.labels for n in scheduler.inventory) == [("node_a",), ("node_b",)]
    assert [n.cpus for n in scheduler.inventory] == [1, 1]
    with pytest.raises(QuotaError, match=r"needs 3 distinct nodes .* the cluster has 2"):
        scheduler.check_fits(JobSpec(name="big", entrypoint=TRAIN, resources=Resources(nodes=3)))
    with pytest.raises(QuotaError, match=r"needs 2 CPUs on one node .* largest node has 1 CPUs"):
        scheduler.check_fits(
            JobSpec(name="wide", entrypoint=TRAIN, resources=Resources(procs_per_node=2))
        )
    with pytest.raises(QuotaError, match="needs 1 GPUs on one node"):
        scheduler.check_fits(
            JobSpec(name="gpu", entrypoint=TRAIN, resources=Resources(gpus_per_proc=1))
        )


def test_ddp_on_two_ray_nodes_matches_torchrun_and_registers(
    scheduler: Scheduler, parquet_file: Path, reference_digest: str, tmp_path: Path
) -> None:
    out = tmp_path / "digest"
    job = scheduler.store.submit(spec("ray-ddp", out, parquet_file, register="ray-model"))
    run_until(scheduler, job.id, (JobState.SUCCEEDED, JobState.FAILED))
    done = scheduler.store.get(job.id)
    files = TrainingService(scheduler.project).logs(job.id)
    assert done.state is JobState.SUCCEEDED, "\n".join(files.values())[-3000:]
    assert {"node0/agent.log", "node1/agent.log"} <= set(files)
    executor = scheduler.executor
    assert isinstance(executor, RayExecutor)
    where = executor.placement(done)
    # Each rank's agent ran on a different Ray node: one carries node_a, the other node_b.
    assert len({w["node_id"] for w in where}) == 2
    assert sorted(lbl for w in where for lbl in w["resources"] if lbl.startswith("node_")) == [
        "node_a",
        "node_b",
    ]
    # The plan's nodes (Flywheel's accounting) are the nodes Ray placed the bundles on.
    assert [s.node for s in done.placement] == [w["node_id"] for w in where] or not done.placement
    assert out.read_text() == reference_digest
    mv = Registry(scheduler.project).get_version("ray-model", 1)
    assert mv.tags.get("job_id") == job.id and mv.run_id
    graph = Registry(scheduler.project).lineage("ray-model", 1)
    assert {n.kind for n in graph.nodes} >= {"model_version", "run"}
    assert wait_released() == {"CPU": 2.0, "node_a": 1.0, "node_b": 1.0}


def test_sigkill_of_a_rank_resumes_from_checkpoint_bit_identical(
    scheduler: Scheduler, parquet_file: Path, reference_digest: str, tmp_path: Path
) -> None:
    out = tmp_path / "digest"
    job = scheduler.store.submit(
        spec("ray-crash", out, parquet_file, max_restarts=2,
             env={"CRASH_AT_STEP": "8", "CRASH_RANK": "1"})
    )  # fmt: skip
    run_until(scheduler, job.id, (JobState.SUCCEEDED, JobState.FAILED))
    done = scheduler.store.get(job.id)
    logs = "\n".join(TrainingService(scheduler.project).logs(job.id).values())
    assert done.state is JobState.SUCCEEDED, logs[-3000:]
    assert done.attempt == 1 and done.restarts == 1
    # Rank 0's restarted worker (its node's agent did not count the restart, so it logs
    # restart=0 into the same file) resumed from the step-5 checkpoint, not from scratch.
    starts = [int(line.split("start step=")[1].split()[0]) for line in logs.splitlines()
              if "start step=" in line]  # fmt: skip
    assert starts and max(starts) == 5, logs[-3000:]
    assert out.read_text() == reference_digest
    assert wait_released() == {"CPU": 2.0, "node_a": 1.0, "node_b": 1.0}


def test_lost_node_agent_requeues_and_resumes_from_checkpoint(
    scheduler: Scheduler, parquet_file: Path, reference_digest: str, tmp_path: Path
) -> None:
    """Node loss: the actor holding node 1's torchrun agent is killed with -9 mid-training. The
    attempt is LOST, its placement group released, and a new attempt (a new placement on the
    nodes alive) resumes from the checkpoint to the same bits as an uninterrupted run."""
    out = tmp_path / "digest"
    job = scheduler.store.submit(spec("ray-node-loss", out, parquet_file,
                                      env={"STEP_SLEEP": "0.2"}))  # fmt: skip
    executor = scheduler.executor
    assert isinstance(executor, RayExecutor)
    checkpoints = executor.checkpoint_dir(job.id)
    deadline = time.monotonic() + 240
    while not list(checkpoints.glob("ckpt-*.json")) and time.monotonic() < deadline:
        scheduler.tick()
        time.sleep(0.2)
    assert list(checkpoints.glob("ckpt-*.json")), "no checkpoint before the node loss"
    first = scheduler.store.get(job.id)
    os.kill(int(executor.placement(first)[1]["pid"]), signal.SIGKILL)  # node 1's agent actor
    run_until(scheduler, job.id, (JobState.SUCCEEDED, JobState.FAILED))
    done = scheduler.store.get(job.id)
    logs = "\n".join(TrainingService(scheduler.project).logs(job.id).values())
    assert done.state is JobState.SUCCEEDED, logs[-3000:]
    assert done.attempt == 2  # a new attempt, newly placed
    events = [e for e in scheduler.store.events(job.id) if "lost" in (e.reason or "")]
    assert events, [e.reason for e in scheduler.store.events(job.id)]
    starts = [int(line.split("start step=")[1].split()[0]) for line in logs.splitlines()
              if "start step=" in line]  # fmt: skip
    assert starts and min(starts) >= 5, logs[-3000:]  # attempt 2 resumed, never from scratch
    assert out.read_text() == reference_digest
    assert wait_released() == {"CPU": 2.0, "node_a": 1.0, "node_b": 1.0}


def _wait_metrics(s: Scheduler, job_id: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not s.store.metrics(job_id) and time.monotonic() < deadline:
        s.tick()
        time.sleep(0.2)
    assert s.store.metrics(job_id), "\n".join(TrainingService(s.project).logs(job_id).values())


def test_cancel_and_preemption_release_the_placement_group(
    scheduler: Scheduler, parquet_file: Path, tmp_path: Path
) -> None:
    import ray

    slow = {"STEP_SLEEP": "0.3", "CKPT_EVERY": "1000"}
    job = scheduler.store.submit(spec("ray-cancel", tmp_path / "c", parquet_file, env=slow))
    _wait_metrics(scheduler, job.id)
    assert _full(ray)["CPU"] == 0.0  # both bundles held while it runs
    scheduler.store.request_cancel(job.id)
    run_until(scheduler, job.id, (JobState.CANCELLED,), timeout=120)
    assert wait_released() == {"CPU": 2.0, "node_a": 1.0, "node_b": 1.0}

    low = scheduler.store.submit(
        spec("ray-low", tmp_path / "l", parquet_file, priority=10, env=slow)
    )
    _wait_metrics(scheduler, low.id)
    high = scheduler.store.submit(
        spec("ray-high", tmp_path / "h", parquet_file, priority=90,
             env={"EPOCHS": "1", "STEP_SLEEP": "0"})
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while scheduler.store.get(low.id).preemptions == 0 and time.monotonic() < deadline:
        scheduler.tick()
        time.sleep(0.2)
    first = "\n".join(TrainingService(scheduler.project).logs(low.id, attempt=1).values())
    assert scheduler.store.get(low.id).preemptions == 1, first[-3000:]
    assert "stopping at step" in first  # checkpointed on SIGTERM through the actor
    run_until(scheduler, high.id, (JobState.SUCCEEDED, JobState.FAILED))
    assert scheduler.store.get(high.id).state is JobState.SUCCEEDED
    scheduler.store.request_cancel(low.id)
    run_until(scheduler, low.id, (JobState.CANCELLED, JobState.SUCCEEDED), timeout=240)
    assert wait_released() == {"CPU": 2.0, "node_a": 1.0, "node_b": 1.0}


def _start_scheduler(project: Project, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([SRC, os.environ.get("PYTHONPATH", "")])}
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "scheduler", "run", "--interval", "0.2",
             "--config", str(project.root / "flywheel.yaml")],
            stdout=fh, stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip


def test_scheduler_kill9_readopts_the_ray_job_without_relaunch(
    ray_project: Project, scheduler: Scheduler, parquet_file: Path, tmp_path: Path
) -> None:
    store = JobStore(ray_project.db)
    job = store.submit(spec("ray-adopt", tmp_path / "a", parquet_file, env={"STEP_SLEEP": "0.1"}))
    log = tmp_path / "scheduler.log"
    first = _start_scheduler(ray_project, log)
    try:
        deadline = time.monotonic() + 240
        while not store.metrics(job.id) and time.monotonic() < deadline:
            assert first.poll() is None, log.read_text()
            time.sleep(0.2)
        assert store.get(job.id).state is JobState.RUNNING, log.read_text()
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    executor = scheduler.executor
    assert isinstance(executor, RayExecutor)
    assert executor.status(store.get(job.id)).state.value == "running"  # outlived its scheduler
    second = _start_scheduler(ray_project, log)
    try:
        deadline = time.monotonic() + 240
        while not store.get(job.id).state.terminal and time.monotonic() < deadline:
            time.sleep(0.3)
            if store.get(job.id).state is JobState.RUNNING and not store.get(job.id).state.terminal:
                with_starts = executor.agent_starts(store.get(job.id))
                assert with_starts == [1, 1] or with_starts == []
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=60)
    done = store.get(job.id)
    logs = "\n".join(TrainingService(ray_project).logs(job.id).values())
    assert done.state is JobState.SUCCEEDED, log.read_text()[-2000:] + logs[-2000:]
    assert done.attempt == 1  # never relaunched
    assert logs.count("start step=0") == 1  # rank 0 logs: torchrun started once, never again
    assert wait_released() == {"CPU": 2.0, "node_a": 1.0, "node_b": 1.0}
