"""Agent evaluation: trajectory modes, fact scoring, and a suite logged as a tracking run."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from flywheel.agent import (
    DEFAULT_RULES,
    ChurnSeed,
    PolicyChatModel,
    build_agent,
    load_suite,
    log_suite,
    run_blocking,
    run_suite_blocking,
    trajectory_matches,
)
from flywheel.auth import Principal, Role
from flywheel.config import AgentConfig
from flywheel.errors import FlywheelError
from flywheel.project import Project
from flywheel.serving.llm import ScriptedChatPolicy
from flywheel.tracking import Tracker
from tests.agent.test_agent import QUESTION, _api


@pytest.mark.parametrize(
    ("mode", "actual", "ok"),
    [
        ("exact", ["a", "b"], True),
        ("exact", ["b", "a"], False),
        ("same_set", ["b", "a", "a"], True),
        ("same_set", ["a"], False),
        ("in_order", ["a", "x", "b"], True),
        ("in_order", ["b", "a"], False),
        ("subset", ["a"], True),
        ("subset", ["a", "x"], False),
        ("superset", ["a", "x", "b"], True),
        ("superset", ["a", "x"], False),
    ],
)
def test_trajectory_modes(mode: Any, actual: list[str], ok: bool) -> None:
    assert trajectory_matches(mode, actual, ["a", "b"]) is ok


def test_suite_scores_answers_and_trajectories_and_logs_a_run(
    seeded: tuple[Project, ChurnSeed], tmp_path: Path
) -> None:
    project, seed = seeded
    suite_file = tmp_path / "suite.yaml"
    suite_file.write_text(
        f"""
name: churn-ops
cases:
  - question: "{QUESTION}"
    facts: ["churn version {seed.production_version} is in production", "AUC {seed.production_auc}",
            "{seed.features[0]}"]
    tools: [resolve_model, get_run, describe_feature_object]
    trajectory: exact
  - question: "{QUESTION}"
    facts: ["AUC {seed.staging_auc}"]
    tools: [get_run, resolve_model]
    trajectory: in_order
  - question: "Which models are registered?"
    facts: ["churn"]
    tools: [list_models, get_model]
    trajectory: subset
""",
        encoding="utf-8",
    )
    suite = load_suite(suite_file)

    async def ask(question: str) -> dict[str, Any]:
        from flywheel.auth import TokenStore

        token = TokenStore(project.db).create("reader", "eval")[1]
        chat = PolicyChatModel(ScriptedChatPolicy(DEFAULT_RULES), "flywheel-ops")
        agent = build_agent(
            chat,
            _api(project, token),
            Principal("t", "t", Role.reader),
            AgentConfig(),
            allow_writes=False,
            scripted=True,
        )
        events = [e async for e in agent.run(question)]
        return events[-1]

    async def from_a_running_loop() -> Any:
        # As after Playwright's sync API in the same process: this thread has a running loop,
        # where a plain asyncio.run() raises; the suite must still run.
        return run_suite_blocking(suite, ask)

    result = run_blocking(from_a_running_loop())
    first, second, third = result.cases
    assert first.passed and first.trajectory_ok and first.fact_recall == 1.0
    # The staging AUC is not what production has: the fact is missing; order is wrong.
    assert second.facts_missing == [f"AUC {seed.staging_auc}"] and second.trajectory_ok is False
    assert third.passed
    metrics = result.metrics()
    assert metrics["answer_accuracy"] == pytest.approx(2 / 3)
    assert metrics["trajectory_accuracy"] == pytest.approx(2 / 3)
    run_id = log_suite(project, result)
    run = Tracker(project).get_run(run_id)
    assert run.experiment == "agent-eval" and run.params["suite"] == "churn-ops"
    assert run.metrics["answer_accuracy"].last == pytest.approx(2 / 3)
    assert run.metrics["case_passed"].count == 3


def test_run_blocking_with_and_without_a_running_loop() -> None:
    async def where() -> tuple[int, str]:
        await asyncio.sleep(0)
        return 42, threading.current_thread().name

    async def nested() -> tuple[int, str]:
        return run_blocking(where())

    results: dict[str, Any] = {}

    def body() -> None:  # a thread of its own: no loop runs there, whatever the main thread has
        results["plain"] = run_blocking(where())
        results["nested"] = asyncio.run(nested())

    thread = threading.Thread(target=body, name="no-loop")
    thread.start()
    thread.join()
    assert results["plain"] == (42, "no-loop")  # no running loop: run right here
    value, where_ran = results["nested"]  # a running loop: run on a worker thread
    assert value == 42 and where_ran.startswith("flywheel-eval")


def test_bad_suite_names_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncases:\n  - question: q\n    trajectory: sideways\n")
    with pytest.raises(FlywheelError, match=r"bad.yaml: cases.0.trajectory: Input should be"):
        load_suite(bad)
