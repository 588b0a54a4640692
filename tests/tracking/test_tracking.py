"""Runs, params, tags, buffered metrics, artifacts and reads, on SQLite and real PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from flywheel.project import Project
from flywheel.tracking import ParamConflict, RunNotFound, Tracker, TrackingError

pytestmark = pytest.mark.integration


def test_run_records_params_tags_metrics_and_system_info(any_project: Project) -> None:
    tracker = Tracker(any_project)
    with tracker.start_run("exp", params={"lr": 0.01, "layers": [2, 3]}, tags={"team": "a"}) as run:
        for step in range(100):
            run.log_metric("loss", 1.0 / (step + 1), step=step)
        run.log_metrics({"acc": 0.5, "auc": 0.7}, step=3)
        run.log_params({"epochs": 5})
        run.set_tags({"stage": "dev"})
    info = tracker.get_run(run.id)
    assert info.status == "finished" and info.end_time is not None
    assert info.params == {"lr": "0.01", "layers": "[2, 3]", "epochs": "5"}
    assert info.tags == {"team": "a", "stage": "dev"}
    assert info.metrics["loss"].count == 100
    assert info.metrics["loss"].last == pytest.approx(0.01)
    assert info.metrics["loss"].min == pytest.approx(0.01) and info.metrics["loss"].max == 1.0
    assert info.latest_metrics["acc"] == 0.5
    assert info.system["python"] and info.git_commit
    history = tracker.metric_history(run.id, "loss")
    assert [p.step for p in history] == list(range(100))
    thinned = tracker.metric_history(run.id, "loss", max_points=10)
    assert len(thinned) == 10 and thinned[0].step == 0 and thinned[-1].step == 99
    assert [p.step for p in tracker.metric_history(run.id, "loss", max_points=1)] == [99]
    assert [r.id for r in tracker.list_runs("exp")] == [run.id]
    assert tracker.list_experiments()[0]["runs"] == 1


def test_default_steps_count_up_per_key(project: Project) -> None:
    tracker = Tracker(project)
    with tracker.start_run("exp") as run:
        for v in (3.0, 2.0, 1.0):
            run.log_metric("loss", v)
        run.log_metric("acc", 0.1)
    assert [(p.step, p.value) for p in tracker.metric_history(run.id, "loss")] == [
        (0, 3.0),
        (1, 2.0),
        (2, 1.0),
    ]
    assert [p.step for p in tracker.metric_history(run.id, "acc")] == [0]


def test_buffered_metrics_survive_an_exception_in_the_block(any_project: Project) -> None:
    tracker = Tracker(any_project)
    with pytest.raises(RuntimeError, match="boom"):
        with tracker.start_run("exp", batch_size=1000) as run:
            for step in range(25_000):
                run.log_metric("loss", float(step), step=step)
            raise RuntimeError("boom")
    info = tracker.get_run(run.id)
    assert info.status == "failed"
    assert info.metrics["loss"].count == 25_000
    assert info.metrics["loss"].last == 24_999.0


def test_keyboard_interrupt_marks_the_run_killed(project: Project) -> None:
    tracker = Tracker(project)
    with pytest.raises(KeyboardInterrupt):
        with tracker.start_run("exp") as run:
            run.log_metric("x", 1.0)
            raise KeyboardInterrupt
    assert tracker.get_run(run.id).status == "killed"
    assert tracker.get_run(run.id).metrics["x"].count == 1


def test_params_are_immutable_and_ended_runs_refuse_logging(project: Project) -> None:
    tracker = Tracker(project)
    run = tracker.start_run("exp", params={"lr": 0.1})
    run.log_params({"lr": 0.1})  # same value: fine
    with pytest.raises(ParamConflict, match="lr"):
        run.log_params({"lr": 0.2})
    run.end()
    with pytest.raises(TrackingError, match="finished"):
        run.log_metric("loss", 1.0)
    with pytest.raises(TrackingError, match="metric key"):
        tracker.start_run("exp").log_metric("", 1.0)
    with pytest.raises(TrackingError, match="64 bits"):
        tracker.start_run("exp").log_metric("loss", 1.0, step=2**63)


def test_non_zero_rank_logs_nothing_unless_all_ranks(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    tracker = Tracker(project)
    with tracker.start_run("dist") as run:
        run.log_metric("loss", 1.0)
        run.log_params({"a": 1})
    assert not run.active
    with pytest.raises(RunNotFound):
        tracker.get_run(run.id)
    with tracker.start_run("dist", all_ranks=True) as run:
        run.log_metric("loss", 1.0)
    assert tracker.get_run(run.id).tags["rank"] == "1"


def test_artifacts_are_stored_and_verified(project: Project, tmp_path: Path) -> None:
    tracker = Tracker(project)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a.txt").write_text("alpha")
    (tmp_path / "out" / "b.txt").write_text("beta")
    (tmp_path / "config.json").write_text("{}")
    with tracker.start_run("exp") as run:
        assert run.log_artifact(tmp_path / "config.json") == ["config.json"]
        assert run.log_artifact(tmp_path / "out", name="outputs") == [
            "outputs/a.txt",
            "outputs/b.txt",
        ]
        run.log_dict({"k": 1}, "summary.json")
    info = tracker.get_run(run.id)
    assert [a.name for a in info.artifacts] == [
        "config.json",
        "outputs/a.txt",
        "outputs/b.txt",
        "summary.json",
    ]
    assert tracker.artifact_bytes(run.id, "outputs/b.txt") == b"beta"
    dest = tracker.download_artifact(run.id, "outputs/a.txt", tmp_path / "dl" / "a.txt")
    assert dest.read_text() == "alpha"


def test_compare_runs_side_by_side(project: Project) -> None:
    tracker = Tracker(project)
    with tracker.start_run("exp", params={"lr": 0.1}) as a:
        a.log_metric("loss", 0.5)
        a.log_metric("loss", 0.3)
    with tracker.start_run("exp", params={"lr": 0.2, "wd": 1}) as b:
        b.log_metric("auc", 0.9)
    table = tracker.compare_runs([a.id, b.id])
    assert table["params"] == {"lr": ["0.1", "0.2"], "wd": [None, "1"]}
    assert table["metrics"]["loss"][0]["last"] == 0.3 and table["metrics"]["loss"][1] is None
    assert table["metrics"]["loss"][0]["min"] == 0.3
    with pytest.raises(RunNotFound):
        tracker.compare_runs([a.id, "nope"])


def test_metric_summaries_merge_across_batches(any_project: Project) -> None:
    tracker = Tracker(any_project)
    with tracker.start_run("exp", batch_size=100) as run:
        for step in range(250):
            run.log_metric("x", float(step), step=step)
        run.flush()
        run.log_metric("x", -1.0, step=10)  # an older step: the new min, not the last value
        run.log_metric("x", float("nan"), step=3)
        run.log_metric("y", 5.0)
    summary = tracker.get_run(run.id).metrics["x"]
    assert (summary.last, summary.last_step) == (249.0, 249)
    assert (summary.min, summary.max, summary.count) == (-1.0, 249.0, 252)
    assert len(tracker.metric_history(run.id, "x")) == 252
    assert tracker.latest_metrics(run.id) == {"x": 249.0, "y": 5.0}


def test_list_runs_filters_by_status_and_orders_by_a_metric(any_project: Project) -> None:
    tracker = Tracker(any_project)
    ids = {}
    for name, auc in (("a", 0.7), ("b", 0.9), ("c", None), ("d", 0.8)):
        with tracker.start_run("search", run_name=name) as run:
            if auc is not None:
                run.log_metric("auc", auc)
        ids[name] = run.id
    running = tracker.start_run("search", run_name="live")
    best_first = [r.name for r in tracker.list_runs("search", order_by="-auc")]
    assert best_first[:3] == ["b", "d", "a"] and set(best_first[3:]) == {"c", "live"}
    assert [r.name for r in tracker.list_runs("search", order_by="auc")][:3] == ["a", "d", "b"]
    assert [r.name for r in tracker.list_runs("search", status="running")] == ["live"]
    assert len(tracker.list_runs("search", limit=2)) == 2
    with pytest.raises(TrackingError, match="status"):
        tracker.list_runs(status="paused")
    running.end("killed")


def test_resume_run_continues_steps_after_a_restart(project: Project) -> None:
    tracker = Tracker(project)
    run = tracker.start_run("resume")
    for loss in (0.9, 0.8):
        run.log_metric("loss", loss)
    run.end("killed")  # the job was preempted
    resumed = tracker.resume_run(run.id)
    assert tracker.get_run(run.id).status == "running"
    resumed.log_metric("loss", 0.7)
    resumed.end()
    assert [(p.step, p.value) for p in tracker.metric_history(run.id, "loss")] == [
        (0, 0.9),
        (1, 0.8),
        (2, 0.7),
    ]
    assert tracker.get_run(run.id).status == "finished"
    with pytest.raises(RunNotFound):
        tracker.resume_run("nope")


@pytest.mark.slow
def test_a_run_left_open_is_flushed_and_finished_at_interpreter_exit(project: Project) -> None:
    import os
    import subprocess
    import sys

    script = (
        "from flywheel import tracking\n"
        "run = tracking.start_run('atexit')\n"
        "for i in range(10_000):\n"
        "    run.log_metric('loss', float(i))\n"
        "print(run.id)\n"
    )
    env = {**os.environ, "FLYWHEEL_CONFIG": str(project.root / "flywheel.yaml")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    info = Tracker(project).get_run(done.stdout.strip())
    assert info.status == "finished" and info.metrics["loss"].count == 10_000
