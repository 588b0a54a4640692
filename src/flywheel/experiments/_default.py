"""Module-level helpers (``experiments.assign(...)``) on a per-process default client.

The default ``Experiments`` is opened on first use for the project found from
``$FLYWHEEL_CONFIG`` or the current directory (like ``flywheel.tracking.start_run``) and reused,
so ``assign`` stays on the in-process fast path. ``close_default()`` flushes and forgets it.
"""

from __future__ import annotations

import atexit
import os
import threading
from collections.abc import Iterable, Mapping
from typing import Any

from flywheel.config import CONFIG_ENV_VAR
from flywheel.experiments._client import Assignment, Experiments

_clients: dict[tuple[str | None, str], Experiments] = {}
_lock = threading.Lock()


def default_experiments() -> Experiments:
    """The process's ``Experiments`` for the project of ``$FLYWHEEL_CONFIG`` / the cwd."""
    key = (os.environ.get(CONFIG_ENV_VAR), os.getcwd())
    client = _clients.get(key)
    if client is None:
        with _lock:
            client = _clients.get(key)
            if client is None:
                from flywheel.project import Project

                project = Project.open(key[0])
                project.prepare()
                client = Experiments(project)
                if not _clients:
                    atexit.register(close_default)
                _clients[key] = client
    return client


def close_default() -> None:
    """Flush and close every default client (runs at interpreter exit)."""
    with _lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
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
