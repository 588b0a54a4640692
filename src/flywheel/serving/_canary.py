"""Canary rollouts as a small state machine over gate statistics, with no I/O.

A rollout moves a candidate version through traffic steps (e.g. 5, 25, 50, 100 percent). At each
step the candidate must serve ``step_requests`` requests; the step passes when its error rate
(5xx answers) is at most ``max_error_rate`` and its p99 latency at most ``max_p99_ms``. A step
that fails rolls the rollout back; a step whose errors already exceed the step's whole error
budget rolls back at once, without waiting for the rest of the step. Passing the last step
completes the rollout (the candidate takes all traffic).

Latencies are kept as counts in fixed geometric buckets (``LatencyHistogram``) so that replicas
can add theirs up in the metadata store; p99 is read as the upper bound of its bucket (at most
``BUCKET_RATIO`` above the true value, never below it).
"""

from __future__ import annotations

import bisect
import enum
from dataclasses import dataclass
from typing import Any

BUCKET_RATIO = 1.15
# Upper bounds in milliseconds: 0.05 ms .. ~60 s, then +inf.
BUCKET_BOUNDS_MS: tuple[float, ...] = tuple(0.05 * BUCKET_RATIO**i for i in range(101))


class LatencyHistogram:
    """Latency counts in ``BUCKET_BOUNDS_MS`` buckets (+ one overflow bucket)."""

    __slots__ = ("counts",)

    def __init__(self, counts: list[int] | None = None) -> None:
        size = len(BUCKET_BOUNDS_MS) + 1
        self.counts = list(counts) if counts and len(counts) == size else [0] * size

    def observe(self, ms: float) -> None:
        self.counts[bisect.bisect_left(BUCKET_BOUNDS_MS, ms)] += 1

    def merge(self, other: LatencyHistogram) -> None:
        for i, c in enumerate(other.counts):
            self.counts[i] += c

    @property
    def total(self) -> int:
        return sum(self.counts)

    def quantile_ms(self, q: float) -> float:
        """The upper bound of the bucket holding quantile ``q`` (0 when empty, inf on overflow)."""
        n = self.total
        if n == 0:
            return 0.0
        target = q * n
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= target:
                return BUCKET_BOUNDS_MS[i] if i < len(BUCKET_BOUNDS_MS) else float("inf")
        return float("inf")


class RolloutState(enum.StrEnum):
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    rolled_back = "rolled_back"


class Action(enum.StrEnum):
    hold = "hold"
    advance = "advance"
    complete = "complete"
    rollback = "rollback"


@dataclass(frozen=True)
class CanaryPlan:
    """A rollout's fixed parameters and its current position."""

    rollout_id: str
    baseline: int
    candidate: int
    steps: tuple[int, ...]
    step_requests: int
    max_error_rate: float
    max_p99_ms: float | None
    step: int = 0
    state: RolloutState = RolloutState.running
    reason: str = ""

    @property
    def active(self) -> bool:
        """Whether the rollout still splits traffic (running or paused)."""
        return self.state in (RolloutState.running, RolloutState.paused)

    @property
    def weight(self) -> int:
        """The candidate's current traffic share in percent (a paused rollout keeps its share)."""
        if self.state is RolloutState.succeeded:
            return 100
        if self.state is RolloutState.rolled_back:
            return 0
        return self.steps[self.step]

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "baseline": self.baseline,
            "candidate": self.candidate,
            "steps": list(self.steps),
            "step_requests": self.step_requests,
            "max_error_rate": self.max_error_rate,
            "max_p99_ms": self.max_p99_ms,
            "step": self.step,
            "state": self.state.value,
            "reason": self.reason,
            "weight": self.weight,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CanaryPlan:
        return cls(
            rollout_id=str(d["rollout_id"]),
            baseline=int(d["baseline"]),
            candidate=int(d["candidate"]),
            steps=tuple(int(s) for s in d["steps"]),
            step_requests=int(d["step_requests"]),
            max_error_rate=float(d["max_error_rate"]),
            max_p99_ms=None if d.get("max_p99_ms") is None else float(d["max_p99_ms"]),
            step=int(d.get("step", 0)),
            state=RolloutState(d.get("state", "running")),
            reason=str(d.get("reason", "")),
        )


@dataclass(frozen=True)
class GateStats:
    """What the candidate did in the current step, summed over replicas."""

    requests: int
    errors: int
    latency: LatencyHistogram


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""


def evaluate(plan: CanaryPlan, stats: GateStats) -> Decision:
    """The next move of a running rollout given its current step's statistics."""
    if plan.state is not RolloutState.running:
        return Decision(Action.hold)
    step_label = f"step {plan.step + 1}/{len(plan.steps)} ({plan.weight}%)"
    budget = plan.max_error_rate * plan.step_requests
    if stats.errors > budget:
        rate = stats.errors / max(stats.requests, 1)
        return Decision(
            Action.rollback,
            f"{step_label}: candidate v{plan.candidate} returned {stats.errors} errors in "
            f"{stats.requests} requests (error rate {rate:.3f} > {plan.max_error_rate})",
        )
    if stats.requests < plan.step_requests:
        return Decision(Action.hold)
    rate = stats.errors / stats.requests
    if rate > plan.max_error_rate:
        return Decision(
            Action.rollback,
            f"{step_label}: error rate {rate:.4f} > {plan.max_error_rate} "
            f"over {stats.requests} requests",
        )
    p99 = stats.latency.quantile_ms(0.99)
    if plan.max_p99_ms is not None and p99 > plan.max_p99_ms:
        return Decision(
            Action.rollback,
            f"{step_label}: p99 latency {p99:.1f} ms > {plan.max_p99_ms} ms "
            f"over {stats.requests} requests",
        )
    summary = (
        f"{step_label} passed: {stats.requests} requests, error rate {rate:.4f}, p99 ≤ {p99:.1f} ms"
    )
    if plan.step + 1 >= len(plan.steps):
        return Decision(Action.complete, summary)
    return Decision(Action.advance, summary)


def apply(plan: CanaryPlan, decision: Decision) -> CanaryPlan:
    """The plan after ``decision`` (a new value; plans are immutable)."""
    from dataclasses import replace

    if decision.action is Action.advance:
        return replace(plan, step=plan.step + 1, reason=decision.reason)
    if decision.action is Action.complete:
        return replace(plan, state=RolloutState.succeeded, reason=decision.reason)
    if decision.action is Action.rollback:
        return replace(plan, state=RolloutState.rolled_back, reason=decision.reason)
    return plan


def parse_steps(text: str) -> tuple[int, ...]:
    """``"5,25,50,100"`` -> (5, 25, 50, 100); increasing percentages ending at 100."""
    from flywheel.serving._errors import ServingError

    try:
        steps = tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        raise ServingError(f"canary steps {text!r} must be integers like 5,25,50,100") from None
    if not steps or any(s <= 0 or s > 100 for s in steps):
        raise ServingError(f"canary steps {text!r} must be percentages in 1..100")
    if list(steps) != sorted(set(steps)):
        raise ServingError(f"canary steps {text!r} must increase")
    if steps[-1] != 100:
        steps = (*steps, 100)
    return steps


__all__ = [
    "Action",
    "CanaryPlan",
    "Decision",
    "GateStats",
    "LatencyHistogram",
    "RolloutState",
    "apply",
    "evaluate",
    "parse_steps",
]
