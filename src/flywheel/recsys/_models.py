"""The learned models a recommender process uses, kept current from the registry.

* the **two-tower retriever** (``TwoTowerRetriever``): the version of ``two_tower_model`` in
  stage ``production``, else its newest version; reloaded in the background when that changes,
  with the items added while serving re-added to its index;
* the **ranker**: served by ``flywheel.serving`` in this process (``RankerClient`` over the
  serving endpoint or model ``ranker_endpoint``: promote, canary and rollback there apply here).

Neither is required: without them the request path uses its other generators and the blended
retrieval order, and counts the ``index_missing`` / ``ranker_unavailable`` fallbacks.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flywheel.project import Project
    from flywheel.recsys._state import OnlineState

log = logging.getLogger(__name__)


def newest_version(project: Project, model: str) -> int | None:
    """The production version of ``model``, else its newest version, else ``None``."""
    from flywheel.registry import ModelNotFound, Registry

    reg = Registry(project)
    try:
        return reg.stage_version(model, "production")
    except ModelNotFound:
        pass
    try:
        versions = reg.list_versions(model)
    except ModelNotFound:
        return None
    return max((v.version for v in versions), default=None)


class ModelHandles:
    """The current retriever and ranker client (swapped atomically by ``refresh``)."""

    def __init__(
        self,
        project: Project,
        *,
        two_tower_model: str | None,
        ranker_endpoint: str | None,
    ) -> None:
        self.project = project
        self.two_tower_model = two_tower_model
        self.ranker_endpoint = ranker_endpoint
        self.retriever: Any | None = None  # TwoTowerRetriever
        self.retriever_version: int | None = None
        self.ranker: Any | None = None  # RankerClient
        self._lock = threading.Lock()
        if ranker_endpoint:
            try:
                from flywheel.recsys._ranker_client import RankerClient
            except ImportError:  # the ranker module is not part of this build
                log.warning("recsys: no ranker module; ranking uses the retrieval order")
            else:
                self.ranker = RankerClient(project, endpoint=ranker_endpoint)

    def refresh(self, state: OnlineState) -> bool:
        """Load a newer two-tower version if there is one; True when the retriever changed.
        Errors are logged and leave the current retriever in place."""
        if not self.two_tower_model:
            return False
        try:
            version = newest_version(self.project, self.two_tower_model)
            if version is None or version == self.retriever_version:
                return False
            from flywheel.recsys._two_tower_serve import TwoTowerRetriever

            retriever = TwoTowerRetriever.load(self.project, self.two_tower_model, version)
            with state.lock:
                fresh = [row for row, _ in state.new_items]
            if fresh:
                retriever.add_items(
                    [state.item_ids[r] for r in fresh],
                    [state.descriptions[r] for r in fresh],
                    [str(state.categories[r]) for r in fresh],
                    [state.prices[r] for r in fresh],
                )
        except Exception as exc:  # keep serving with what we have
            log.warning("recsys: could not load %s: %s", self.two_tower_model, exc)
            return False
        with self._lock:
            self.retriever, self.retriever_version = retriever, version
        log.info("recsys: two-tower %s/%s loaded", self.two_tower_model, version)
        return True

    def close(self) -> None:
        """Stop the private serving loop the ranker client used when no app loop ran (tests,
        scripts); under ``flywheel up`` the server lives on the app's loop and is left alone."""
        server = getattr(self.ranker, "_server", None)
        if server is not None:
            try:
                server.stop_blocking()
            except Exception as exc:  # shutting down anyway
                log.warning("recsys: stopping the ranker's serving loop failed: %s", exc)
