"""Agent evaluation: a suite of questions against known state, scored and logged as a run.

A suite (YAML)::

    name: churn-ops
    cases:
      - question: Which version of churn is in production, what was its AUC, and which
          features does it use?
        facts: ["churn version 2", "AUC 0.873", "customer_stats@v1:tenure_days"]
        tools: [resolve_model, get_run, describe_feature_object]
        trajectory: exact        # exact | same_set | in_order | subset | superset

Answers are scored by facts (each fact must appear verbatim in the answer; the case's fact
score is the share found, and it passes when all are). Trajectories compare the tools the
agent called, in order, with ``tools``:

- ``exact``: the same calls in the same order; ``same_set``: the same tools, any order/count;
- ``in_order``: the expected tools appear in this order (other calls may come between);
- ``subset``: every call made is one of the expected tools; ``superset``: every expected tool
  was called.

The suite is logged as a tracking run in experiment ``agent-eval`` with metrics
``answer_accuracy``, ``fact_recall``, ``trajectory_accuracy``, ``mean_steps`` and token totals,
one step per case for the per-case metrics, so a regression shows on the runs page.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from flywheel.errors import FlywheelError

TrajectoryMode = Literal["exact", "same_set", "in_order", "subset", "superset"]
EVAL_EXPERIMENT = "agent-eval"
_T = TypeVar("_T")


class EvalCase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(min_length=1, max_length=4000)
    facts: list[str] = []
    tools: list[str] | None = None
    trajectory: TrajectoryMode = "exact"


class EvalSuite(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    cases: list[EvalCase] = Field(min_length=1)


def load_suite(path: Path) -> EvalSuite:
    """Parse a suite file; ``FlywheelError`` naming the file, field and reason when invalid."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise FlywheelError(f"{path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise FlywheelError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        return EvalSuite.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "(top level)"
        raise FlywheelError(f"{path}: {where}: {err.get('msg', 'invalid')}") from None


def trajectory_matches(mode: TrajectoryMode, actual: list[str], expected: list[str]) -> bool:
    """Whether the tools called (``actual``, in order) match ``expected`` under ``mode``."""
    if mode == "exact":
        return actual == expected
    if mode == "same_set":
        return set(actual) == set(expected)
    if mode == "subset":
        return set(actual) <= set(expected)
    if mode == "superset":
        return set(actual) >= set(expected)
    it = iter(actual)  # in_order: expected is a subsequence of actual
    return all(any(a == e for a in it) for e in expected)


@dataclass
class CaseResult:
    question: str
    answer: str
    tools_called: list[str]
    facts_found: list[str]
    facts_missing: list[str]
    trajectory_ok: bool | None
    steps: int
    input_tokens: int
    output_tokens: int
    trace_id: str | None

    @property
    def fact_recall(self) -> float:
        total = len(self.facts_found) + len(self.facts_missing)
        return 1.0 if total == 0 else len(self.facts_found) / total

    @property
    def passed(self) -> bool:
        return not self.facts_missing and self.trajectory_ok is not False


@dataclass
class SuiteResult:
    suite: str
    model: str
    cases: list[CaseResult] = field(default_factory=list)
    run_id: str | None = None

    def metrics(self) -> dict[str, float]:
        n = len(self.cases)
        judged = [c for c in self.cases if c.trajectory_ok is not None]
        return {
            "answer_accuracy": sum(not c.facts_missing for c in self.cases) / n,
            "fact_recall": sum(c.fact_recall for c in self.cases) / n,
            "trajectory_accuracy": (
                sum(bool(c.trajectory_ok) for c in judged) / len(judged) if judged else 1.0
            ),
            "pass_rate": sum(c.passed for c in self.cases) / n,
            "mean_steps": sum(c.steps for c in self.cases) / n,
            "input_tokens": float(sum(c.input_tokens for c in self.cases)),
            "output_tokens": float(sum(c.output_tokens for c in self.cases)),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "model": self.model,
            "run_id": self.run_id,
            "metrics": self.metrics(),
            "cases": [
                {**c.__dict__, "fact_recall": c.fact_recall, "passed": c.passed} for c in self.cases
            ],
        }


AskFunction = Callable[[str], Awaitable[dict[str, Any]]]


def score_case(case: EvalCase, answer: dict[str, Any]) -> CaseResult:
    """Score one ``answer`` event (``/agent/ask``'s last event) against ``case``."""
    text = str(answer.get("answer", ""))
    called = [e["tool"] for e in answer.get("evidence", [])]
    usage = answer.get("usage", {})
    return CaseResult(
        question=case.question,
        answer=text,
        tools_called=called,
        facts_found=[f for f in case.facts if f in text],
        facts_missing=[f for f in case.facts if f not in text],
        trajectory_ok=(
            None if case.tools is None else trajectory_matches(case.trajectory, called, case.tools)
        ),
        steps=int(answer.get("steps", 0)),
        input_tokens=int(usage.get("input_tokens", 0)),
        output_tokens=int(usage.get("output_tokens", 0)),
        trace_id=answer.get("trace_id"),
    )


async def run_suite(suite: EvalSuite, ask: AskFunction) -> SuiteResult:
    """Ask every case's question through ``ask`` and score the answers."""
    result = SuiteResult(suite.name, "")
    for case in suite.cases:
        answer = await ask(case.question)
        result.model = result.model or str(answer.get("model", ""))
        result.cases.append(score_case(case, answer))
    return result


def run_blocking(coroutine: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coroutine`` to completion from synchronous code and return its result.

    ``asyncio.run`` refuses to start when this thread already has a running event loop (a
    notebook, an async framework, or Playwright's sync API, which leaves its loop set in the
    main thread); then the coroutine runs on a fresh loop in a worker thread instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flywheel-eval") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def run_suite_blocking(suite: EvalSuite, ask: AskFunction) -> SuiteResult:
    """``run_suite`` from synchronous code, whether or not this thread has a running loop."""
    return run_blocking(run_suite(suite, ask))


def log_suite(project: Any, result: SuiteResult) -> str:
    """Log the result as a tracking run in ``agent-eval``; returns the run id."""
    from flywheel.tracking import Tracker

    run = Tracker(project).start_run(
        EVAL_EXPERIMENT,
        params={"suite": result.suite, "model": result.model, "cases": len(result.cases)},
        tags={"kind": "agent-eval"},
        run_name=f"{result.suite}-{result.model}",
        log_system_info=False,
    )
    for step, case in enumerate(result.cases):
        run.log_metric("case_fact_recall", case.fact_recall, step=step)
        run.log_metric("case_passed", float(case.passed), step=step)
    run.log_metrics(result.metrics())
    run.end()
    result.run_id = run.id
    return str(run.id)
