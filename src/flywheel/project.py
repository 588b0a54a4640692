"""A project: its config plus the shared stores opened from it, lazily and once.

Systems take a ``Project`` (or the pieces they need from it) instead of reading config
themselves; the HTTP layer keeps one on ``app.state.project`` and hands it to routes through
the ``current_project`` dependency.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fastapi import Request

from flywheel.artifacts import ArtifactStore, open_artifact_store
from flywheel.config import CONFIG_ENV_VAR, FlywheelConfig, load_config
from flywheel.metadata import Database

T = TypeVar("T")


class Project:
    """One Flywheel project. Opening it touches nothing; ``db`` and ``artifacts`` open on use."""

    def __init__(self, config: FlywheelConfig) -> None:
        self.config = config
        self._db: Database | None = None
        self._artifacts: ArtifactStore | None = None
        self._attached: dict[str, Any] = {}
        self._prepared = False
        self._attach_lock = threading.Lock()

    @classmethod
    def open(cls, path: str | Path | None = None) -> Project:
        """Load ``flywheel.yaml`` (see ``load_config``) and wrap it."""
        return cls(load_config(path))

    @property
    def root(self) -> Path:
        return self.config.root

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.config.metadata_url)
        return self._db

    @property
    def artifacts(self) -> ArtifactStore:
        if self._artifacts is None:
            self._artifacts = open_artifact_store(self.config.artifacts_url)
        return self._artifacts

    def prepare(self) -> None:
        """Create the local folders and bring the metadata schema up to date."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.config.offline_store_path.mkdir(parents=True, exist_ok=True)
        self.db.upgrade()

    def attached(self, key: str, create: Callable[[], T]) -> T:
        """The object a system keeps for this project under ``key``, created on first use.

        This is where per-project, per-process state lives (serving's inference server, ...):
        it lives and dies with the project, which the app keeps on its state, so nothing is
        held in a module-level registry. ``create`` runs at most once per key.
        """
        with self._attach_lock:
            if key not in self._attached:
                self._attached[key] = create()
            value: T = self._attached[key]
            return value

    def detach(self, key: str) -> Any:
        """Forget the object attached under ``key`` and return it (None if there is none)."""
        with self._attach_lock:
            return self._attached.pop(key, None)

    def prepare_once(self) -> None:
        """``prepare`` the first time it is called on this object; nothing after that."""
        with self._attach_lock:
            if not self._prepared:
                self.prepare()
                self._prepared = True

    def close(self) -> None:
        if self._db is not None:
            self._db.dispose()
            self._db = None

    def __repr__(self) -> str:
        return f"Project({self.config.project!r}, root={str(self.root)!r})"


_DEFAULTS: dict[tuple[str | None, str, str | None], Project] = {}
_DEFAULTS_LOCK = threading.Lock()


def default_project(path: str | Path | None = None, *, for_writing: bool = False) -> Project:
    """The project of the module-level helpers (``registry.load``, ``tracking.start_run``,
    ``experiments.assign``, ...): ``path``, else ``$FLYWHEEL_CONFIG``, else found from the cwd.

    Opened once per (config, cwd, path) and reused. Reading never touches the schema; the first
    helper that writes (``for_writing=True``) creates the folders and brings the schema up to
    date, once per project.
    """
    key = (os.environ.get(CONFIG_ENV_VAR), os.getcwd(), None if path is None else str(path))
    with _DEFAULTS_LOCK:
        project = _DEFAULTS.get(key)
        if project is None:
            project = _DEFAULTS[key] = Project.open(path)
    if for_writing:
        project.prepare_once()
    return project


def current_project(request: Request) -> Project:
    """FastAPI dependency: the project the app serves."""
    project: Project = request.app.state.project
    return project


__all__ = ["Project", "current_project", "default_project"]
