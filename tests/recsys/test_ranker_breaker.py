"""The ranker's circuit breaker in the served pipeline: a ranker that is down (or whose queue is
full) is skipped for a while, but a request the server shed for lack of time (429, expected
wait) or answered late is only that request's fallback — the next request asks the ranker again.

(Once every 200-row ranker call was shed for a wrong expected wait, issue #14, and this breaker
turned each shed into 2 s of fallbacks; that estimate is fixed in serving, see
tests/serving/test_large_requests.py, so a shed is now a rare, per-request event.)"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from flywheel.recsys._errors import RankerUnavailable
from flywheel.recsys._pipeline import Pipeline, RecsysSettings
from flywheel.serving import DeadlineExceeded, InferenceFailed, QueueFull


class FlakyRanker:
    """Raises ``failure`` (as the ranker client does: RankerUnavailable from the serving error)
    on the first call, then scores rows by their negated position (reverses the order)."""

    def __init__(self, failure: Exception) -> None:
        self.failure: Exception | None = failure
        self.calls = 0

    def score(self, features: np.ndarray, *, user_id: int, timeout_s: float) -> tuple[Any, str]:
        self.calls += 1
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise RankerUnavailable(f"ranker unavailable: {failure}") from failure
        return np.arange(len(features), dtype=np.float64), "ranker/1"


def pipeline_with(ranker: FlakyRanker) -> Pipeline:
    pipe = object.__new__(Pipeline)  # only the ranker stage is exercised
    pipe.settings = RecsysSettings(ranker_endpoint="ranker")
    pipe.models = SimpleNamespace(ranker=ranker)  # type: ignore[assignment]
    pipe._ranker_retry_at = 0.0
    pipe._ranker_features = lambda rows, gens, ctx, user_id: np.zeros((len(rows), 3))  # type: ignore[method-assign]
    return pipe


def rank_twice(pipe: Pipeline) -> tuple[list[str], list[int]]:
    fallbacks: list[str] = []
    first = pipe.rank([1, 2, 3], {}, None, 7, 0.05, fallbacks, {})  # type: ignore[arg-type]
    assert first == [1, 2, 3] and fallbacks == ["ranker_unavailable"]
    second = pipe.rank([1, 2, 3], {}, None, 7, 0.05, fallbacks, {})  # type: ignore[arg-type]
    return fallbacks, second


@pytest.mark.parametrize(
    "failure",
    [
        QueueFull("shed", 0.01, reason="expected_wait"),
        DeadlineExceeded("late"),
    ],
    ids=["shed-429", "deadline"],
)
def test_a_shed_or_late_answer_does_not_open_the_breaker(failure: Exception) -> None:
    ranker = FlakyRanker(failure)
    fallbacks, second = rank_twice(pipeline_with(ranker))
    assert ranker.calls == 2
    assert second == [3, 2, 1] and fallbacks == ["ranker_unavailable"]


@pytest.mark.parametrize(
    "failure",
    [InferenceFailed("model crashed"), QueueFull("512 queued", 1.0, reason="queue_full")],
    ids=["failed", "queue-full"],
)
def test_a_failing_ranker_is_skipped_until_the_retry_time(failure: Exception) -> None:
    ranker = FlakyRanker(failure)
    fallbacks, second = rank_twice(pipeline_with(ranker))
    assert ranker.calls == 1  # the breaker is open: no second call
    assert second == [1, 2, 3] and fallbacks == ["ranker_unavailable"] * 2
