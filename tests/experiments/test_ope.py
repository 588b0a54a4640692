"""Off-policy evaluation against policies whose true value is known."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.experiments import InvalidExperiment, off_policy_estimates
from flywheel.experiments._ope import ips

WEIGHTS = np.array([[0.3, 0.2], [0.5, -0.3], [0.4, 0.0]])  # expected reward = w_k . [1, x]


def _logged(seed: int, n: int) -> dict[str, np.ndarray]:
    """Decisions logged by a context-dependent stochastic policy with known propensities."""
    rng = np.random.default_rng(seed)
    x = np.column_stack([np.ones(n), rng.normal(size=n)])
    logits = np.column_stack([x[:, 1], -x[:, 1], np.zeros(n)])
    logging = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    logging = 0.1 / 3 + 0.9 * logging  # an exploration floor, as the bandits have
    actions = (rng.random(n)[:, None] >= np.cumsum(logging, axis=1)).sum(axis=1)
    expected = x @ WEIGHTS.T
    rewards = (rng.random(n) < expected[np.arange(n), actions]).astype(float)
    # The target: the best arm for each context (deterministic); its true value is known.
    target = np.zeros((n, 3))
    target[np.arange(n), expected.argmax(axis=1)] = 1.0
    true_value = float(expected.max(axis=1).mean())
    return {
        "x": x,
        "actions": actions,
        "rewards": rewards,
        "propensities": logging[np.arange(n), actions],
        "target": target,
        "true": np.array(true_value),
    }


def test_ips_snips_and_dr_cover_the_true_value_of_a_known_policy() -> None:
    data = _logged(seed=1, n=20_000)
    report = off_policy_estimates(
        data["actions"], data["rewards"], data["propensities"], data["target"], data["x"]
    )
    true = float(data["true"])
    print(
        f"true {true:.4f}; IPS {report.ips.value:.4f}±{report.ips.se:.4f}, "
        f"SNIPS {report.snips.value:.4f}, DR {report.doubly_robust.value:.4f}"
        f"±{report.doubly_robust.se:.4f}, logged {report.logged_value.value:.4f}"
    )
    for estimate in (report.ips, report.snips, report.doubly_robust):
        assert estimate.ci_low <= true <= estimate.ci_high
    # the logging policy's own value is clearly different, so the test is not trivial
    assert not report.logged_value.ci_low <= true <= report.logged_value.ci_high
    assert report.doubly_robust.se < report.ips.se  # the reward model removes variance


def test_ips_interval_coverage_over_repeated_logs() -> None:
    hits = 0
    reps = 200
    for seed in range(reps):
        d = _logged(seed=100 + seed, n=2_000)
        rows = np.arange(len(d["actions"]))
        e = ips(d["rewards"], d["propensities"], d["target"][rows, d["actions"]])
        hits += e.ci_low <= float(d["true"]) <= e.ci_high
    assert 0.91 <= hits / reps <= 0.99


def test_replay_is_unbiased_under_uniform_logging() -> None:
    rng = np.random.default_rng(5)
    n = 30_000
    rates = np.array([0.1, 0.3, 0.2])
    actions = rng.integers(0, 3, n)
    rewards = (rng.random(n) < rates[actions]).astype(float)
    target = np.tile([0.0, 1.0, 0.0], (n, 1))
    report = off_policy_estimates(actions, rewards, np.full(n, 1 / 3), target)
    assert report.replay.ci_low <= 0.3 <= report.replay.ci_high
    assert report.replay.n == int((actions == 1).sum())


@pytest.mark.parametrize(
    ("propensities", "target", "field"),
    [
        (np.array([0.0, 0.5]), np.array([[1.0, 0.0], [0.0, 1.0]]), "propensities"),
        (np.array([0.5, 0.5]), np.array([[0.7, 0.7], [0.0, 1.0]]), "target"),
    ],
)
def test_bad_inputs_are_rejected(propensities: np.ndarray, target: np.ndarray, field: str) -> None:
    with pytest.raises(InvalidExperiment, match=field):
        off_policy_estimates(np.array([0, 1]), np.array([1.0, 0.0]), propensities, target)
