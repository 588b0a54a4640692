"""The scheduler's reconcile loop over the real metadata store (SQLite and Postgres), with a fake
executor: every decision is checked without starting a process."""

from __future__ import annotations

import signal

import pytest

from flywheel.project import Project
from flywheel.training import (
    JobSpec,
    JobState,
    JobStateError,
    JobStore,
    NodeCapacity,
    Quota,
    QuotaError,
    Resources,
    Scheduler,
    TickReport,
)
from tests.training.conftest import FakeExecutor

pytestmark = pytest.mark.integration  # real Postgres via any_project


def spec(name: str, prio: int = 50, procs: int = 1, team: str = "t", **kw: object) -> JobSpec:
    return JobSpec(
        name=name,
        entrypoint="pkg.train:main",
        priority=prio,
        team=team,
        resources=Resources(procs_per_node=procs),
        **kw,  # type: ignore[arg-type]
    )


def sched(project: Project, ex: FakeExecutor, cpus: int = 4, **kw: object) -> Scheduler:
    return Scheduler(
        project,
        executor=ex,
        inventory=[NodeCapacity("local", cpus)],
        grace_period=0,
        **kw,  # type: ignore[arg-type]
    )


def test_lifecycle_success_and_failure(any_project: Project, fake_executor: FakeExecutor) -> None:
    s = sched(any_project, fake_executor)
    ok = s.store.submit(spec("ok"))
    bad = s.store.submit(spec("bad"))
    report = s.tick()
    assert sorted(report.launched) == sorted([ok.id, bad.id])
    assert s.store.get(ok.id).state is JobState.RUNNING
    env = fake_executor.envs[ok.id]
    assert env["FLYWHEEL_JOB_ID"] == ok.id and env["OMP_NUM_THREADS"] == "1"
    fake_executor.exit(ok, 0)
    fake_executor.exit(bad, 3)
    s.tick()
    assert s.store.get(ok.id).state is JobState.SUCCEEDED
    failed = s.store.get(bad.id)
    assert failed.state is JobState.FAILED and failed.exit_code == 3
    assert [e.to_state for e in s.store.events(ok.id)] == [
        JobState.QUEUED,
        JobState.ADMITTED,
        JobState.RUNNING,
        JobState.SUCCEEDED,
    ]


def test_quota_and_priority_order(any_project: Project, fake_executor: FakeExecutor) -> None:
    s = sched(any_project, fake_executor, quotas={"capped": Quota(cpus=1)})
    low = s.store.submit(spec("low", prio=10, procs=2))
    capped1 = s.store.submit(spec("c1", prio=90, team="capped"))
    capped2 = s.store.submit(spec("c2", prio=90, team="capped"))
    high = s.store.submit(spec("high", prio=80, procs=2))
    report = s.tick()
    assert set(report.launched) == {capped1.id, high.id}
    assert "quota" in report.waiting[capped2.id]
    assert low.id in report.waiting
    with pytest.raises(QuotaError, match="quota is 1"):
        s.check_fits(spec("toobig", team="capped", procs=2))


def test_gang_job_is_never_partly_placed(any_project: Project, fake_executor: FakeExecutor) -> None:
    nodes = [NodeCapacity("a", 2), NodeCapacity("b", 2)]
    s = Scheduler(any_project, executor=fake_executor, inventory=nodes)
    small = s.store.submit(spec("small"))
    s.tick()
    gang = s.store.submit(
        JobSpec(name="gang", entrypoint="m:f", resources=Resources(nodes=2, procs_per_node=2))
    )
    s.tick()
    waiting = s.store.get(gang.id)
    assert waiting.state is JobState.QUEUED and waiting.placement == ()
    fake_executor.exit(small, 0)
    s.tick()
    placed = s.store.get(gang.id)
    assert placed.state is JobState.RUNNING
    assert sorted(slot.node for slot in placed.placement) == ["a", "b"]


def test_cancel_queued_and_running(any_project: Project, fake_executor: FakeExecutor) -> None:
    s = sched(any_project, fake_executor, cpus=1)
    running = s.store.submit(spec("r"))
    queued = s.store.submit(spec("q"))
    s.tick()
    assert s.store.request_cancel(queued.id).state is JobState.CANCELLED
    s.store.request_cancel(running.id)
    s.tick()
    assert fake_executor.sigterms(running.id) == 1
    s.tick()  # grace period 0: escalates to SIGKILL
    assert (running.id, signal.SIGKILL) in fake_executor.signals
    fake_executor.exit(running.id, -15)
    s.tick()
    assert s.store.get(running.id).state is JobState.CANCELLED
    with pytest.raises(JobStateError, match="already cancelled"):
        s.store.request_cancel(running.id)


def test_preemption_requeues_and_resumes_next_attempt(
    any_project: Project, fake_executor: FakeExecutor
) -> None:
    s = sched(any_project, fake_executor, cpus=2)
    low = s.store.submit(spec("low", prio=10, procs=2))
    s.tick()
    high = s.store.submit(spec("high", prio=90, procs=2))
    report = s.tick()
    assert report.preempting == [low.id]
    assert fake_executor.sigterms(low.id) == 1
    assert s.store.get(high.id).state is JobState.QUEUED  # waits for the room
    s.tick()
    assert fake_executor.sigterms(low.id) == 1  # not signalled twice, no second victim
    fake_executor.exit(low.id, 0, stopped=True)  # it checkpointed and exited
    report = s.tick()
    assert report.finished[low.id] is JobState.PREEMPTED
    assert high.id in report.launched
    low_now = s.store.get(low.id)
    assert low_now.state is JobState.QUEUED and low_now.preemptions == 1
    fake_executor.exit(high.id, 0)
    s.tick()
    low_now = s.store.get(low.id)
    assert low_now.state is JobState.RUNNING and low_now.attempt == 2
    assert fake_executor.launched.count((low.id, 2)) == 1
    states = [e.to_state for e in s.store.events(low.id)]
    assert states[-3:] == [JobState.QUEUED, JobState.ADMITTED, JobState.RUNNING]
    assert JobState.PREEMPTED in states


def test_job_that_finished_before_preemption_succeeds(
    any_project: Project, fake_executor: FakeExecutor
) -> None:
    s = sched(any_project, fake_executor, cpus=2)
    low = s.store.submit(spec("low", prio=10, procs=2))
    s.tick()
    s.store.submit(spec("high", prio=90, procs=2))
    assert s.tick().preempting == [low.id]
    fake_executor.exit(low.id, 0)  # it ended on its own, without stopping early
    assert s.tick().finished[low.id] is JobState.SUCCEEDED
    assert s.store.get(low.id).preemptions == 0


def test_restarted_scheduler_adopts_and_never_relaunches(
    any_project: Project, fake_executor: FakeExecutor
) -> None:
    first = sched(any_project, fake_executor)
    job = first.store.submit(spec("long"))
    first.tick()
    assert fake_executor.launched == [(job.id, 1)]
    # The scheduler dies; its job keeps running. A new one starts on the same database.
    second = sched(any_project, fake_executor)
    second.tick()
    second.tick()
    assert fake_executor.launched == [(job.id, 1)]
    assert second.store.get(job.id).state is JobState.RUNNING
    fake_executor.exit(job, 0)
    second.tick()
    assert second.store.get(job.id).state is JobState.SUCCEEDED


def test_launched_but_unrecorded_job_is_adopted(
    any_project: Project, fake_executor: FakeExecutor
) -> None:
    """Killed between launching a process and recording it: the next scheduler adopts it."""
    s = sched(any_project, fake_executor)
    job = s.store.submit(spec("x"))
    s._schedule(TickReport())  # plan and admit only, as if killed before launching
    admitted = s.store.get(job.id)
    assert admitted.state is JobState.ADMITTED
    fake_executor.launch(admitted, {})  # the process started, then the scheduler died
    report = sched(any_project, fake_executor).tick()
    assert report.adopted == [job.id] and report.launched == []
    assert len(fake_executor.launched) == 1


def test_lost_job_is_requeued_once(any_project: Project, fake_executor: FakeExecutor) -> None:
    s = sched(any_project, fake_executor)
    job = s.store.submit(spec("x"))
    s.tick()
    fake_executor.lose(job.id, 1)
    report = s.tick()
    assert report.requeued == [job.id]
    again = s.store.get(job.id)
    assert again.state is JobState.RUNNING and again.attempt == 2
    assert fake_executor.launched == [(job.id, 1), (job.id, 2)]


def test_many_jobs_admitted_in_one_tick(project: Project, fake_executor: FakeExecutor) -> None:
    s = sched(project, fake_executor, cpus=1000)
    store = JobStore(project.db)
    ids = {store.submit(spec(f"j{i}", team=f"t{i % 3}")).id for i in range(100)}
    report = s.tick()
    assert set(report.launched) == ids


def test_store_per_round_only_for_multi_node_jobs(project: Project) -> None:
    """A single-node job's workers use the agent's rendezvous store (up before they start;
    ``runtime.init`` adds the per-restart prefix); only agents on several nodes, which count
    restarts independently, get a fresh store per round, hosted by worker rank 0 (whose peers
    wait for it with a connect backoff, on every start and restart)."""
    ex = FakeExecutor()
    s = sched(project, ex, cpus=4)
    one = s.store.submit(spec("one-node", procs=2))
    two = s.store.submit(
        JobSpec(name="two-nodes", entrypoint="pkg.train:main",
                resources=Resources(nodes=2, procs_per_node=1))
    )  # fmt: skip
    assert "TORCH_DISABLE_SHARE_RDZV_TCP_STORE" not in s.job_env(one)
    assert s.job_env(two)["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] == "1"
