"""Scheduling decisions, tested as a pure function (no processes, no database)."""

from __future__ import annotations

import pytest

from flywheel.training import JobState, NodeCapacity, Quota, Resources
from flywheel.training._errors import JobStateError
from flywheel.training._policy import Allocation, Candidate, Slot, can_ever_fit, plan
from flywheel.training._states import check_transition

NODES = [NodeCapacity("a", 4, (0, 1)), NodeCapacity("b", 4, (0, 1))]


def cand(job: str, team: str = "t", prio: int = 50, seq: int = 0, **res: int) -> Candidate:
    return Candidate(job, team, prio, Resources(**res), seq)


def running(
    job: str,
    slots: tuple[Slot, ...],
    prio: int = 50,
    team: str = "t",
    seq: int = 0,
    preemptible: bool = True,
    preempting: bool = False,
) -> Allocation:
    return Allocation(job, team, prio, slots, preemptible, seq, preempting)


def test_admits_by_priority_then_fifo() -> None:
    queue = [
        cand("low", prio=10, seq=1, procs_per_node=4),
        cand("high", prio=90, seq=2, procs_per_node=4),
        cand("mid", prio=50, seq=3, procs_per_node=4),
    ]
    p = plan(NODES, [], queue, {})
    assert [j for j, _ in p.admit] == ["high", "mid"]
    assert "low" in p.waiting


def test_gang_all_or_nothing() -> None:
    # 2 nodes x 3 procs: node a has 4 free, node b only 2 -> the job must not be half placed.
    busy = running("busy", (Slot("b", 2),), prio=90, preemptible=False)
    p = plan(NODES, [busy], [cand("gang", nodes=2, procs_per_node=3)], {})
    assert p.admit == [] and p.preempt == []
    assert p.waiting["gang"] == "not enough free resources"
    # With room on both nodes it gets both at once, one slot per inventory node.
    p = plan(NODES, [], [cand("gang", nodes=2, procs_per_node=3)], {})
    ((_job, slots),) = p.admit
    assert sorted(s.node for s in slots) == ["a", "b"] and all(s.cpus == 3 for s in slots)


def test_gpus_are_assigned_by_id_without_overlap() -> None:
    queue = [
        cand("g1", seq=1, gpus_per_proc=1),
        cand("g2", seq=2, gpus_per_proc=1),
        cand("g3", seq=3, procs_per_node=2, gpus_per_proc=1),
    ]
    p = plan([NodeCapacity("a", 8, (0, 1, 2))], [], queue, {})
    got = {j: s[0].gpus for j, s in p.admit}
    assert got == {"g1": (0,), "g2": (1,)}
    assert "g3" in p.waiting


def test_team_quota_limits_cpus_gpus_and_jobs() -> None:
    quotas = {"small": Quota(cpus=2), "one": Quota(jobs=1)}
    queue = [
        cand("s1", "small", seq=1, procs_per_node=2),
        cand("s2", "small", seq=2),
        cand("o1", "one", seq=3),
        cand("o2", "one", seq=4),
    ]
    p = plan(NODES, [], queue, quotas)
    assert sorted(j for j, _ in p.admit) == ["o1", "s1"]
    assert "quota" in p.waiting["s2"] and "quota" in p.waiting["o2"]


def test_fair_share_interleaves_teams_at_equal_priority() -> None:
    # Team A submitted 4 jobs first; team B one later. B must not wait behind all of A.
    queue = [cand(f"a{i}", "A", seq=i, procs_per_node=2) for i in range(4)]
    queue.append(cand("b0", "B", seq=10, procs_per_node=2))
    p = plan(NODES, [], queue, {})
    assert [j for j, _ in p.admit] == ["a0", "b0", "a1", "a2"]


def test_fair_share_weight() -> None:
    # A already holds 4 CPUs; with weight 4 its share is still below B's unweighted 2 CPUs.
    allocs = [running("ra", (Slot("a", 4),), team="A"), running("rb", (Slot("b", 2),), team="B")]
    queue = [cand("b1", "B", seq=1, procs_per_node=1), cand("a1", "A", seq=2, procs_per_node=1)]
    p = plan(NODES, allocs, queue, {"A": Quota(weight=4)})
    assert next(j for j, _ in p.admit) == "a1"


def test_preemption_picks_lowest_priority_newest_first_and_only_enough() -> None:
    allocs = [
        running("old-low", (Slot("a", 4),), prio=10, seq=1),
        running("new-low", (Slot("b", 4),), prio=10, seq=2),
    ]
    p = plan(NODES, allocs, [cand("urgent", prio=90, seq=3, procs_per_node=4)], {})
    assert p.preempt == [("new-low", "urgent")]
    assert p.admit == []
    # Next round, while new-low is still stopping: no second victim, just wait.
    allocs[1] = running("new-low", (Slot("b", 4),), prio=10, seq=2, preempting=True)
    p = plan(NODES, allocs, [cand("urgent", prio=90, seq=3, procs_per_node=4)], {})
    assert p.preempt == [] and "preempted" in p.waiting["urgent"]


def test_no_preemption_of_equal_priority_or_non_preemptible() -> None:
    allocs = [
        running("eq", (Slot("a", 4),), prio=90),
        running("pinned", (Slot("b", 4),), prio=10, preemptible=False),
    ]
    p = plan(NODES, allocs, [cand("urgent", prio=90, procs_per_node=4)], {})
    assert p.preempt == [] and p.admit == []
    p = plan(
        NODES,
        allocs[:1] + [running("low", (Slot("b", 4),), prio=10)],
        [cand("urgent", prio=90, procs_per_node=4)],
        {},
        preemption=False,
    )
    assert p.preempt == []


def test_blocked_job_is_not_starved_by_equal_priority_but_backfill_of_lower_is_allowed() -> None:
    allocs = [running("r", (Slot("a", 3),), prio=90, preemptible=False)]
    queue = [
        cand("big", prio=50, seq=1, procs_per_node=4, nodes=2),
        cand("same", prio=50, seq=2, procs_per_node=1),
        cand("tiny", prio=10, seq=3, procs_per_node=1),
    ]
    p = plan(NODES, allocs, queue, {})
    assert [j for j, _ in p.admit] == ["tiny"]
    assert "behind a blocked job" in p.waiting["same"]


def test_can_ever_fit_explains() -> None:
    assert can_ever_fit(Resources(procs_per_node=2), NODES, Quota()) is None
    # The reason names the missing resource.
    assert "needs 9 CPUs on one node" in (
        can_ever_fit(Resources(procs_per_node=9), NODES, Quota()) or ""
    )
    assert "needs 3 distinct nodes (one per job node) but the cluster has 2" in (
        can_ever_fit(Resources(nodes=3), NODES, Quota(), spread=True) or ""
    )
    assert can_ever_fit(Resources(nodes=3), NODES, Quota()) is None  # local: agents may share
    assert "quota is 1" in (can_ever_fit(Resources(procs_per_node=2), NODES, Quota(cpus=1)) or "")


def test_state_machine_rejects_illegal_moves() -> None:
    check_transition("j", JobState.RUNNING, JobState.PREEMPTED)
    check_transition("j", JobState.PREEMPTED, JobState.QUEUED)
    with pytest.raises(JobStateError, match="cannot go from succeeded to running"):
        check_transition("j", JobState.SUCCEEDED, JobState.RUNNING)
    with pytest.raises(JobStateError, match="allowed from queued: admitted, cancelled"):
        check_transition("j", JobState.QUEUED, JobState.RUNNING)
