"""Metrics relayed by the scheduler (rank 0 opens no database) and the scheduler's doorbell."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from flywheel.project import Project
from flywheel.tracking import Tracker
from flywheel.training import JobSpec, JobState, JobStore
from flywheel.training._doorbell import Doorbell, ring
from flywheel.training._policy import Slot
from flywheel.training._relay import MetricsRelay, append_metrics, read_new_points

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _running_job(store: JobStore) -> str:
    job = store.submit(JobSpec(name="relayed", entrypoint="m:f", hyperparameters={"lr": 0.1}))
    store.transition(job.id, JobState.QUEUED, JobState.ADMITTED, placement=[Slot("n", 1)])
    store.transition(job.id, JobState.ADMITTED, JobState.RUNNING)
    return job.id


def test_a_partial_last_line_waits_for_the_next_read(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    append_metrics(path, 1, {"loss": 0.5})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write('{"step": 2, "val')  # rank 0 is mid-write
    points, offset = read_new_points(path)
    assert points == [(1, {"loss": 0.5})]
    assert offset == len(json.dumps({"step": 1, "values": {"loss": 0.5}})) + 1


def test_relay_stores_each_point_once_in_the_job_series_and_the_run(project: Project) -> None:
    store = JobStore(project.db)
    relay = MetricsRelay(project, store)
    job_id = _running_job(store)
    run_id = relay.start(store.get(job_id))
    assert store.get(job_id).run_id == run_id
    path = project.config.state_dir / "metrics.jsonl"
    append_metrics(path, 5, {"loss": 0.5, "acc": 0.25})
    append_metrics(path, 10, {"loss": 0.25})
    assert relay.ingest(store.get(job_id), path) == 2
    assert relay.ingest(store.get(job_id), path) == 0  # the read position is kept
    append_metrics(path, 15, {"loss": 0.125})
    # A restarted scheduler (a new relay) carries on from the recorded position.
    assert MetricsRelay(project, store).ingest(store.get(job_id), path) == 1
    assert store.metrics(job_id, "loss") == [("loss", 5, 0.5), ("loss", 10, 0.25),
                                             ("loss", 15, 0.125)]  # fmt: skip
    tracker = Tracker(project)
    history = tracker.metric_history(run_id, "loss")
    assert [(p.step, p.value) for p in history] == [(5, 0.5), (10, 0.25), (15, 0.125)]
    assert tracker.get_run(run_id).status == "running"
    assert tracker.get_run(run_id).params == {"lr": "0.1"}
    relay.end(store.get(job_id), "failed")
    assert tracker.get_run(run_id).status == "failed"


def test_rank0_log_metrics_writes_the_file_without_the_metadata_stack(
    project: Project, tmp_path: Path
) -> None:
    """What keeps a scheduled job as fast as raw torchrun: no project, SQLAlchemy or tracking
    import in the worker (about a second of CPU per attempt, issue 17 item 20)."""
    path = tmp_path / "metrics.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": SRC,
        "FLYWHEEL_JOB_ID": "job-1",
        "FLYWHEEL_CONFIG": str(project.config.root / "flywheel.yaml"),
        "FLYWHEEL_METRICS_FILE": str(path),
    }
    code = (
        "import sys, time\n"
        "from flywheel.training import runtime as rt\n"
        "rt.init()\n"
        "rt.log_metrics(3, loss=0.5)\n"
        "time.sleep(0.5)\n"  # room for any background warm-up to import what it would
        "heavy = ('sqlalchemy', 'flywheel.project', 'flywheel.tracking', 'flywheel.metadata')\n"
        "print(sorted(m for m in heavy if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert read_new_points(path)[0] == [(3, {"loss": 0.5})]


def test_doorbell_wakes_the_listener_from_another_process(tmp_path: Path) -> None:
    path = tmp_path / "doorbell"
    assert ring(path) is False  # nobody listens: a no-op
    bell = Doorbell(path)
    try:
        code = "import sys; from flywheel.training._doorbell import ring; print(ring(sys.argv[1]))"
        env = {**os.environ, "PYTHONPATH": SRC}
        done = subprocess.run(
            [sys.executable, "-c", code, str(path)], env=env, capture_output=True, text=True
        )
        assert done.stdout.strip() == "True", done.stderr
        assert bell.wait(600) is True  # returns at once: it was rung (else False after 600 s)
        bell.ring()
        assert bell.wait(600) is True
        assert bell.wait(0) is False  # drained: nothing pending
    finally:
        bell.close()
    assert ring(path) is False  # the listener is gone
