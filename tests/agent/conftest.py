"""Fixtures of the agent tests: a project with the seeded churn state, an in-process API."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from flywheel.agent import ChurnSeed, seed_churn
from flywheel.project import Project
from flywheel.telemetry import disable_tracing
from tests.conftest import make_project

AGENT_SYSTEMS = ["features", "tracking", "registry", "telemetry", "agent"]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Project, ChurnSeed]]:
    """One seeded project per test module (seeding trains and registers two models)."""
    root: Path = tmp_path_factory.mktemp("agent") / "proj"
    project = make_project(root, auth={"required": True})
    seed = seed_churn(project)
    yield project, seed
    project.close()


@pytest.fixture(autouse=True)
def _tracing_off() -> Iterator[None]:
    disable_tracing()
    yield
    disable_tracing()
