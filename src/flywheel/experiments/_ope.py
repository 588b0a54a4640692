"""Offline (off-policy) evaluation: what reward would a new policy have earned on logged data?

Every logged decision carries the probability (propensity) with which the logging policy chose
its arm, so a target policy ``pi`` can be evaluated without running it:

* **replay** (Li et al. 2011): keep the decisions where the target's (sampled) arm equals the
  logged arm and average their rewards; unbiased when logging was uniformly random;
* **IPS**: ``mean(pi(a|x) / mu(a|x) * r)``, unbiased whenever ``mu > 0`` where ``pi > 0``;
* **SNIPS**: IPS normalised by the mean weight: a little bias, much less variance;
* **doubly robust** (Dudik, Langford, Li 2011): a reward model ``q(x, a)`` plus an IPS
  correction of its residual, ``sum_a pi(a|x) q(x, a) + w (r - q(x, a_logged))``; unbiased if
  either the propensities or the model are right. The model (per-arm ridge regression on the
  context, or per-arm means) is cross-fitted over two folds so no decision is scored by a model
  that saw its own reward.

Each estimate comes with a standard error and a normal confidence interval.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from flywheel.experiments._errors import AnalysisError, InvalidExperiment

if TYPE_CHECKING:
    from flywheel.experiments._bandits import PreparedPolicy
    from flywheel.experiments._client import ExperimentInfo
    from flywheel.experiments._store import ExperimentStore

FloatArray = npt.NDArray[np.float64]
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A policy-value estimate with its standard error and (1 - alpha) interval."""

    value: float
    se: float
    ci_low: float
    ci_high: float
    n: int

    def to_dict(self) -> dict[str, Any]:
        return {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in self.__dict__.items()
        }


def _estimate(per_sample: FloatArray, z: float = Z95) -> Estimate:
    n = per_sample.size
    if n == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), float("nan"), 0)
    value = float(per_sample.mean())
    se = float(per_sample.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return Estimate(value, se, value - z * se, value + z * se, n)


def ips(rewards: FloatArray, propensities: FloatArray, target_of_logged: FloatArray) -> Estimate:
    """Inverse propensity scoring; ``target_of_logged`` is ``pi(logged arm | x)``."""
    w = np.asarray(target_of_logged, float) / np.asarray(propensities, float)
    return _estimate(w * np.asarray(rewards, float))


def snips(rewards: FloatArray, propensities: FloatArray, target_of_logged: FloatArray) -> Estimate:
    """Self-normalised IPS with its delta-method standard error."""
    w = np.asarray(target_of_logged, float) / np.asarray(propensities, float)
    r = np.asarray(rewards, float)
    n = r.size
    if n < 2 or w.sum() <= 0:
        return Estimate(float("nan"), float("nan"), float("nan"), float("nan"), n)
    value = float((w * r).sum() / w.sum())
    influence = w * (r - value) / w.mean()
    se = float(influence.std(ddof=1) / np.sqrt(n))
    return Estimate(value, se, value - Z95 * se, value + Z95 * se, n)


def doubly_robust(
    rewards: FloatArray,
    actions: npt.NDArray[np.int64],
    propensities: FloatArray,
    target: FloatArray,
    q_hat: FloatArray,
) -> Estimate:
    """Doubly-robust estimate; ``target`` and ``q_hat`` are ``(N, K)``."""
    rows = np.arange(len(actions))
    w = target[rows, actions] / propensities
    per_sample = (target * q_hat).sum(axis=1) + w * (rewards - q_hat[rows, actions])
    return _estimate(per_sample)


def replay(
    rewards: FloatArray,
    actions: npt.NDArray[np.int64],
    target: FloatArray,
    rng: np.random.Generator,
) -> Estimate:
    """Replay: the mean reward where the target's sampled arm matches the logged arm."""
    cdf = np.cumsum(target, axis=1)
    cdf[:, -1] = 1.0 + 1e-12
    sampled = (rng.random(len(actions))[:, None] >= cdf).sum(axis=1)
    return _estimate(rewards[sampled == actions])


def fit_reward_model(
    actions: npt.NDArray[np.int64],
    rewards: FloatArray,
    contexts: FloatArray | None,
    k: int,
    ridge: float = 1.0,
    folds: int = 2,
    seed: int = 0,
) -> FloatArray:
    """Cross-fitted ``q(x, a)`` for every decision and arm, ``(N, K)``.

    Per-arm ridge regression on the contexts (with intercept) when given, else per-arm means.
    """
    n = len(actions)
    x = np.ones((n, 1)) if contexts is None else np.asarray(contexts, float)
    fold = np.random.default_rng(seed).integers(0, folds, size=n)
    q = np.zeros((n, k))
    global_mean = float(rewards.mean()) if n else 0.0
    for f in range(folds):
        train, test = fold != f, fold == f
        for arm in range(k):
            sel = train & (actions == arm)
            xs, rs = x[sel], rewards[sel]
            if rs.size == 0:
                q[test, arm] = global_mean
                continue
            # Shrink towards the global mean: ridge on (r - mean).
            gram = xs.T @ xs + ridge * np.eye(x.shape[1])
            beta = np.linalg.solve(gram, xs.T @ (rs - global_mean))
            q[test, arm] = global_mean + x[test] @ beta
    return q


@dataclass(frozen=True)
class OffPolicyReport:
    """Estimates of a target policy's mean reward from logged decisions."""

    experiment: str
    target: str
    decisions: int
    logged_value: Estimate
    replay: Estimate
    ips: Estimate
    snips: Estimate
    doubly_robust: Estimate

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "target": self.target,
            "decisions": self.decisions,
            "logged_value": self.logged_value.to_dict(),
            "replay": self.replay.to_dict(),
            "ips": self.ips.to_dict(),
            "snips": self.snips.to_dict(),
            "doubly_robust": self.doubly_robust.to_dict(),
        }


def off_policy_estimates(
    actions: npt.NDArray[np.int64],
    rewards: FloatArray,
    propensities: FloatArray,
    target: FloatArray,
    contexts: FloatArray | None = None,
    *,
    experiment: str = "",
    target_name: str = "",
    seed: int = 0,
) -> OffPolicyReport:
    """Every estimator at once for logged ``(action, reward, propensity[, context])`` rows.

    Args:
        actions: logged arm indices ``(N,)``.
        rewards: observed rewards ``(N,)``.
        propensities: the logging policy's probability of each logged arm ``(N,)``, all > 0.
        target: the target policy's arm probabilities for each decision ``(N, K)``.
        contexts: context vectors ``(N, d)`` for the reward model (optional).
    """
    actions = np.asarray(actions, dtype=np.int64)
    rewards = np.asarray(rewards, float)
    propensities = np.asarray(propensities, float)
    target = np.asarray(target, float)
    if not (len(actions) == len(rewards) == len(propensities) == len(target)):
        raise InvalidExperiment("logged data", "actions, rewards, propensities differ in length")
    if len(actions) < 2:
        raise AnalysisError("off-policy evaluation needs at least 2 logged decisions with rewards")
    if np.any(propensities <= 0) or np.any(propensities > 1):
        raise InvalidExperiment("propensities", "must be in (0, 1]")
    if target.ndim != 2 or np.any(target < 0) or not np.allclose(target.sum(axis=1), 1.0):
        raise InvalidExperiment("target", "must be (N, K) rows of probabilities summing to 1")
    k = target.shape[1]
    if actions.min() < 0 or actions.max() >= k:
        raise InvalidExperiment("actions", f"must be arm indices in [0, {k})")
    rows = np.arange(len(actions))
    q_hat = fit_reward_model(actions, rewards, contexts, k, seed=seed)
    return OffPolicyReport(
        experiment=experiment,
        target=target_name,
        decisions=len(actions),
        logged_value=_estimate(rewards),
        replay=replay(rewards, actions, target, np.random.default_rng(seed)),
        ips=ips(rewards, propensities, target[rows, actions]),
        snips=snips(rewards, propensities, target[rows, actions]),
        doubly_robust=doubly_robust(rewards, actions, propensities, target, q_hat),
    )


def evaluate_logged(
    store: ExperimentStore,
    info: ExperimentInfo,
    target: str | Callable[..., Any],
    *,
    policy: PreparedPolicy | None = None,
) -> OffPolicyReport:
    """Evaluate ``target`` on the decisions logged for ``info`` that have rewards
    (``"current"`` is the bandit's ``policy``)."""
    import json

    spec = info.spec
    arms = spec.arms
    index = {a: i for i, a in enumerate(arms)}
    with store.db.read() as conn:
        rows = [r for r in store.logged_decisions(conn, spec.name) if r.variant in index]
    if len(rows) < 2:
        raise AnalysisError(
            f"experiment {spec.name!r} has {len(rows)} rewarded decisions; "
            "off-policy evaluation needs at least 2 (log rewards with their decision_id)"
        )
    actions = np.asarray([index[r.variant] for r in rows], dtype=np.int64)
    rewards = np.asarray([float(r.reward) for r in rows])
    propensities = np.asarray([float(r.propensity) for r in rows])
    contexts = None
    if all(r.context for r in rows):
        contexts = np.asarray([json.loads(r.context) for r in rows], float)
    n, k = len(rows), len(arms)
    if callable(target):
        probs = np.asarray(target(contexts, n), float)
        name = getattr(target, "__name__", "callable")
    elif target == "uniform":
        probs, name = np.full((n, k), 1.0 / k), "uniform"
    elif target == "current":
        if spec.bandit is None or policy is None:
            raise InvalidExperiment("target", "'current' needs a bandit experiment", spec.name)
        probs, name = policy.probabilities_batch(contexts), "current"
        if probs.shape[0] != n:
            probs = np.tile(probs[0], (n, 1))
    elif isinstance(target, str) and target.startswith("arm:") and target[4:] in index:
        probs = np.zeros((n, k))
        probs[:, index[target[4:]]] = 1.0
        name = target
    else:
        raise InvalidExperiment(
            "target",
            f"{target!r} is not 'uniform', 'current' or 'arm:NAME' with NAME in {list(arms)}",
        )
    return off_policy_estimates(
        actions, rewards, propensities, probs, contexts, experiment=spec.name, target_name=name
    )


__all__ = [
    "Estimate",
    "OffPolicyReport",
    "doubly_robust",
    "evaluate_logged",
    "fit_reward_model",
    "ips",
    "off_policy_estimates",
    "replay",
    "snips",
]
