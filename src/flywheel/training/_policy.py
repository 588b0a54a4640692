"""Scheduling decisions as a pure function: who is admitted where, and who is preempted.

``plan(inventory, allocations, queue, quotas)`` looks at a snapshot and returns a ``Plan``; it
does no I/O, so every rule below is unit-tested without processes or a database.

Rules, in order:

* **Priority first.** A job with a higher ``priority`` is considered before any lower one.
* **Fair share within a priority.** Among equal priorities, the team with the smallest dominant
  share (max of its CPU and GPU fraction of the inventory, divided by its ``weight``) goes
  next (Dominant Resource Fairness); ties go to the oldest submission. Shares are updated as
  jobs are admitted within one plan, so a burst from one team interleaves with the others.
* **Quotas.** A team never holds more CPUs, GPUs or running jobs than its quota; a job that
  would exceed it waits (it is not a candidate for preemption either).
* **Gang scheduling.** All ``nodes x procs_per_node`` processes of a job are placed at once
  (each job node on one inventory node, with its CPUs and specific GPU ids) or the job is
  not admitted at all: nothing is ever partly allocated.
* **Preemption.** A job that fits its quota but not the free inventory may preempt running,
  preemptible jobs of strictly lower priority (lowest priority first, newest first) if freeing
  them makes it fit. Resources of jobs already being preempted count as freed, so a waiting
  job never triggers a second round of preemptions for the same room.
* **Backfill without starvation.** Once a job is blocked, only jobs of strictly lower priority
  may still be admitted in that plan, and only into room the blocked job could not use anyway.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from flywheel.training._spec import Resources


@dataclass(frozen=True)
class NodeCapacity:
    """One machine of the inventory: its name, CPU count and GPU ids."""

    name: str
    cpus: int
    gpus: tuple[int, ...] = ()
    host: str = "127.0.0.1"
    # Custom resources of the node (Ray), shown in the inventory; not used for placement.
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Slot:
    """What one job node got: the inventory node, CPU count and GPU ids."""

    node: str
    cpus: int
    gpus: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, object]:
        return {"node": self.node, "cpus": self.cpus, "gpus": list(self.gpus)}

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Slot:
        gpus = d.get("gpus") or []
        assert isinstance(gpus, list)  # our own stored data, not user input
        cpus = d["cpus"]
        assert isinstance(cpus, int)
        return cls(node=str(d["node"]), cpus=cpus, gpus=tuple(int(g) for g in gpus))


@dataclass(frozen=True)
class Allocation:
    """A job holding resources (admitted or running)."""

    job_id: str
    team: str
    priority: int
    slots: tuple[Slot, ...]
    preemptible: bool = True
    seq: int = 0
    preempting: bool = False

    @property
    def cpus(self) -> int:
        return sum(s.cpus for s in self.slots)

    @property
    def gpus(self) -> int:
        return sum(len(s.gpus) for s in self.slots)


@dataclass(frozen=True)
class Candidate:
    """A queued job asking for resources."""

    job_id: str
    team: str
    priority: int
    resources: Resources
    seq: int


@dataclass(frozen=True)
class Quota:
    """A team's limits (``None``: unlimited) and its fair-share weight."""

    cpus: int | None = None
    gpus: int | None = None
    jobs: int | None = None
    weight: float = 1.0


@dataclass
class Plan:
    """What to do now: jobs to admit (with their slots), jobs to preempt, and why others wait."""

    admit: list[tuple[str, tuple[Slot, ...]]] = field(default_factory=list)
    preempt: list[tuple[str, str]] = field(default_factory=list)  # (victim, for job)
    waiting: dict[str, str] = field(default_factory=dict)  # job id -> reason


class _Free:
    """Free CPUs and GPU ids per node (mutable working copy)."""

    def __init__(self, nodes: Sequence[NodeCapacity], spread: bool = False) -> None:
        # spread: job nodes must be on distinct inventory nodes (Ray's STRICT_SPREAD).
        self.spread = spread
        self.order = [n.name for n in nodes]
        self.cpus = {n.name: n.cpus for n in nodes}
        self.gpus = {n.name: list(n.gpus) for n in nodes}

    def copy(self) -> _Free:
        other = _Free([], self.spread)
        other.order = list(self.order)
        other.cpus = dict(self.cpus)
        other.gpus = {k: list(v) for k, v in self.gpus.items()}
        return other

    def take(self, slots: Iterable[Slot]) -> None:
        for s in slots:
            if s.node not in self.cpus:
                continue  # a node removed from the inventory while a job still ran there
            self.cpus[s.node] -= s.cpus
            self.gpus[s.node] = [g for g in self.gpus[s.node] if g not in s.gpus]

    def give(self, slots: Iterable[Slot]) -> None:
        for s in slots:
            if s.node not in self.cpus:
                continue
            self.cpus[s.node] += s.cpus
            self.gpus[s.node] = sorted({*self.gpus[s.node], *s.gpus})

    def contains(self, slots: Iterable[Slot]) -> bool:
        """Whether all of ``slots`` are free here."""
        trial = self.copy()
        for s in slots:
            if s.node not in trial.cpus or trial.cpus[s.node] < s.cpus:
                return False
            if any(g not in trial.gpus[s.node] for g in s.gpus):
                return False
            trial.take([s])
        return True

    def place(self, res: Resources) -> tuple[Slot, ...] | None:
        """Gang placement: every job node on an inventory node, or ``None``.

        Job nodes go to distinct inventory nodes when there are enough; otherwise several job
        nodes may share one inventory node (several agents on one machine). Best fit: the node
        with the least room that still fits, to keep big holes for big jobs.
        """
        need_cpus = res.procs_per_node * res.cpus_per_proc
        need_gpus = res.procs_per_node * res.gpus_per_proc
        trial = self.copy()
        slots: list[Slot] = []
        used: set[str] = set()
        for _ in range(res.nodes):
            fits = [
                n
                for n in trial.order
                if trial.cpus[n] >= need_cpus and len(trial.gpus[n]) >= need_gpus
            ]
            if not fits:
                return None
            fresh = [n for n in fits if n not in used] or ([] if self.spread else fits)
            if not fresh:
                return None
            node = min(
                fresh, key=lambda n: (trial.cpus[n], len(trial.gpus[n]), trial.order.index(n))
            )
            slot = Slot(node, need_cpus, tuple(trial.gpus[node][:need_gpus]))
            trial.take([slot])
            slots.append(slot)
            used.add(node)
        return tuple(slots)


def total_capacity(nodes: Sequence[NodeCapacity]) -> tuple[int, int]:
    return sum(n.cpus for n in nodes), sum(len(n.gpus) for n in nodes)


def can_ever_fit(
    res: Resources, nodes: Sequence[NodeCapacity], quota: Quota, *, spread: bool = False
) -> str | None:
    """Why a job can never run here (too big for the inventory or its quota), or ``None``.

    The reason names the missing resource: distinct nodes, CPUs or GPUs on one node.
    """
    if _Free(nodes, spread).place(res) is None:
        cpus, gpus = total_capacity(nodes)
        need_cpus = res.procs_per_node * res.cpus_per_proc
        need_gpus = res.procs_per_node * res.gpus_per_proc
        max_cpus = max((n.cpus for n in nodes), default=0)
        max_gpus = max((len(n.gpus) for n in nodes), default=0)
        if spread and res.nodes > len(nodes):
            return (
                f"needs {res.nodes} distinct nodes (one per job node) but the cluster has "
                f"{len(nodes)}"
            )
        if need_cpus > max_cpus:
            return (
                f"needs {need_cpus} CPUs on one node ({res.procs_per_node} proc(s) x "
                f"{res.cpus_per_proc}) but the largest node has {max_cpus} CPUs"
            )
        if need_gpus > max_gpus:
            return f"needs {need_gpus} GPUs on one node but the largest node has {max_gpus} GPUs"
        return (
            f"needs {res.nodes} node(s) x {res.procs_per_node} proc(s) "
            f"({res.cpus} CPUs, {res.gpus} GPUs) but the inventory has {len(nodes)} node(s), "
            f"{cpus} CPUs, {gpus} GPUs"
        )
    if quota.cpus is not None and res.cpus > quota.cpus:
        return f"needs {res.cpus} CPUs but the team's quota is {quota.cpus}"
    if quota.gpus is not None and res.gpus > quota.gpus:
        return f"needs {res.gpus} GPUs but the team's quota is {quota.gpus}"
    return None


def plan(
    nodes: Sequence[NodeCapacity],
    allocations: Sequence[Allocation],
    queue: Sequence[Candidate],
    quotas: Mapping[str, Quota],
    default_quota: Quota = Quota(),
    *,
    preemption: bool = True,
    spread: bool = False,
) -> Plan:
    """Decide admissions and preemptions for one scheduling round (pure; see module doc).

    ``spread``: every job node on a distinct inventory node (the Ray executor's placement).
    """
    result = Plan()
    free = _Free(nodes, spread)
    for a in allocations:
        free.take(a.slots)
    total_cpus, total_gpus = total_capacity(nodes)
    usage: dict[str, list[int]] = {}  # team -> [cpus, gpus, jobs]
    for a in allocations:
        u = usage.setdefault(a.team, [0, 0, 0])
        u[0] += a.cpus
        u[1] += a.gpus
        u[2] += 1
    # Room that pending preemptions will free; counted as available when planning preemptions.
    releasing = free.copy()
    for a in allocations:
        if a.preempting:
            releasing.give(a.slots)
    victims_pool = sorted(
        (a for a in allocations if a.preemptible and not a.preempting),
        key=lambda a: (a.priority, -a.seq),
    )

    def quota_of(team: str) -> Quota:
        return quotas.get(team, default_quota)

    def share(team: str) -> float:
        u = usage.get(team, [0, 0, 0])
        dominant = max(
            u[0] / total_cpus if total_cpus else 0.0, u[1] / total_gpus if total_gpus else 0.0
        )
        return dominant / max(quota_of(team).weight, 1e-9)

    def _consider(best: Candidate, blocked_priority: int | None) -> int | None:
        if blocked_priority is not None and best.priority >= blocked_priority:
            result.waiting[best.job_id] = "behind a blocked job of equal or higher priority"
            return blocked_priority
        res = best.resources
        q = quota_of(best.team)
        u = usage.get(best.team, [0, 0, 0])
        over = (
            (q.cpus is not None and u[0] + res.cpus > q.cpus)
            or (q.gpus is not None and u[1] + res.gpus > q.gpus)
            or (q.jobs is not None and u[2] + 1 > q.jobs)
        )
        if over:
            result.waiting[best.job_id] = f"team {best.team!r} is at its quota"
            return blocked_priority
        slots = free.place(res)
        if slots is not None and blocked_priority is not None and not releasing.contains(slots):
            slots = None  # backfill only into room no blocked or preempting job is counting on
        if slots is not None:
            free.take(slots)
            releasing.take(slots)
            result.admit.append((best.job_id, slots))
            u = usage.setdefault(best.team, [0, 0, 0])
            u[0] += res.cpus
            u[1] += res.gpus
            u[2] += 1
            return blocked_priority
        # Does not fit now. Will it once running preemptions finish, or with more of them?
        if releasing.place(res) is not None:
            result.waiting[best.job_id] = "waiting for preempted jobs to release resources"
        elif preemption:
            chosen: list[Allocation] = []
            trial = releasing.copy()
            for victim in victims_pool:
                if victim.priority >= best.priority:
                    break
                trial.give(victim.slots)
                chosen.append(victim)
                if trial.place(res) is not None:
                    break
            if chosen and trial.place(res) is not None:
                for victim in chosen:
                    victims_pool.remove(victim)
                    result.preempt.append((victim.job_id, best.job_id))
                    releasing.give(victim.slots)
                slots_after = releasing.place(res)
                assert slots_after is not None  # guaranteed by the check above
                releasing.take(slots_after)  # reserve that room for this job
                result.waiting[best.job_id] = "preempting lower-priority jobs"
            else:
                result.waiting[best.job_id] = "not enough free resources"
        else:
            result.waiting[best.job_id] = "not enough free resources"
        if blocked_priority is None:
            blocked_priority = best.priority
        return blocked_priority

    # priority -> team -> that team's candidates, oldest last (so pop() takes the oldest).
    buckets: dict[int, dict[str, list[Candidate]]] = {}
    for c in sorted(queue, key=lambda c: -c.seq):
        buckets.setdefault(c.priority, {}).setdefault(c.team, []).append(c)
    blocked_priority: int | None = None
    for level in sorted(buckets, reverse=True):
        teams = buckets[level]
        while teams:
            team = min(teams, key=lambda t: (share(t), teams[t][-1].seq))
            best = teams[team].pop()
            if not teams[team]:
                del teams[team]
            blocked_priority = _consider(best, blocked_priority)
    return result


__all__ = [
    "Allocation",
    "Candidate",
    "NodeCapacity",
    "Plan",
    "Quota",
    "Slot",
    "can_ever_fit",
    "plan",
    "total_capacity",
]
