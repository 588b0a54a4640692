"""Module-level helpers (``experiments.assign(...)``) on a per-process default client.

The default ``Experiments`` is opened on first use for the project found from
``$FLYWHEEL_CONFIG`` or the current directory (like ``flywheel.tracking.start_run``) and reused,
so ``assign`` stays on the in-process fast path. ``close_default()`` flushes and forgets it.
"""

from __future__ import annotations

import atexit
from collections.abc import Iterable, Mapping
from typing import Any

from flywheel.experiments._client import Assignment, Experiments
from flywheel.project import Project, default_project


def default_experiments() -> Experiments:
    """The process's ``Experiments`` for the project of ``$FLYWHEEL_CONFIG`` / the cwd."""
    project = default_project(for_writing=True)  # assign logs exposures
    return project.attached("experiments.default", lambda: _open(project))


def _open(project: Project) -> Experiments:
    client = Experiments(project)
    atexit.register(client.close)  # flush buffered exposures at interpreter exit
    return client


def close_default() -> None:
    """Flush and close the default client of the current default project (if one is open)."""
    client = default_project().detach("experiments.default")
    if isinstance(client, Experiments):
        atexit.unregister(client.close)
        client.close()


def assign(name: str, unit_id: str, context: Mapping[str, Any] | None = None) -> Assignment:
    """``Experiments.assign`` on the default client (logs an exposure)."""
    return default_experiments().assign(name, unit_id, context)


def log_reward(name: str, unit_id: str, reward: float, *, decision_id: str | None = None) -> int:
    """``Experiments.log_reward`` on the default client."""
    return default_experiments().log_reward(name, unit_id, reward, decision_id=decision_id)


def log_events(events: Iterable[Mapping[str, Any]]) -> int:
    """``Experiments.log_events`` on the default client."""
    return default_experiments().log_events(events)


__all__ = ["assign", "close_default", "default_experiments", "log_events", "log_reward"]
