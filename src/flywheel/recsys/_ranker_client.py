"""The ranker at serving time: ``RankerClient`` scores feature rows (``ranker_features``) with the
``recs-ranker`` model served by ``flywheel.serving`` in this process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.recsys._errors import RankerUnavailable, RecsysError
from flywheel.recsys._ranker import DEFAULT_MODEL, RANKER_FEATURES

if TYPE_CHECKING:
    from flywheel.project import Project


@dataclass
class RankerClient:
    """Scores feature rows with the ranker served in this process by ``flywheel.serving``.

    ``endpoint`` is a serving endpoint or a model name (then its ``production`` version).
    ``score`` raises ``RankerUnavailable`` when nothing is served under that name, the model
    fails, or the answer does not come within ``timeout_s``.
    """

    project: Project
    endpoint: str = DEFAULT_MODEL
    _server: Any = field(default=None, repr=False)

    @property
    def server(self) -> Any:
        if self._server is None:
            from flywheel.serving import server_for

            self._server = server_for(self.project)
        return self._server

    def score(
        self, features: np.ndarray, *, user_id: int, timeout_s: float
    ) -> tuple[np.ndarray, str]:
        """(scores per row, "model/version") for ``features`` (rows, len(RANKER_FEATURES))."""
        x = np.ascontiguousarray(features, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != len(RANKER_FEATURES):
            raise RecsysError(
                f"ranker: features must be (rows, {len(RANKER_FEATURES)}), got {x.shape}"
            )
        try:
            pred = self.server.predict_blocking(
                self.endpoint,
                {"features": x},
                routing_key=str(user_id),
                timeout_s=timeout_s,
            )
        except Exception as exc:
            raise RankerUnavailable(
                f"ranker {self.endpoint!r} unavailable: {type(exc).__name__}: {exc}"
            ) from exc
        scores = next(iter(pred.outputs.values()), None)
        if scores is None or len(scores) != len(x):
            raise RankerUnavailable(f"ranker {self.endpoint!r} returned no score per row")
        return np.asarray(scores, dtype=np.float64).reshape(-1), f"{pred.model}/{pred.version}"
