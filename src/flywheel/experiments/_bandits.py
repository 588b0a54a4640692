"""Bandit policies as pure functions of sufficient statistics (no I/O, no clock).

State (``BanditState``) is additive: per arm the number of rewarded pulls, the sum and the sum
of squares of rewards, and for contextual policies the ridge-regression Gram matrix
``A = prior * I + sum x x^T`` and vector ``b = sum r x``. Updating is adding a batch, so the
same state can be updated from a batch of reward events or one event at a time, by any process,
in any order.

``PreparedPolicy`` turns a state into assignment probabilities, computed once per state version
(Thompson sampling's probability that each arm is best is estimated from 4,000 posterior draws
at preparation time; LinUCB precomputes ``A^-1`` and ``theta``), so the hot path only draws one
arm from a cached probability vector. Every policy returns *propensities*: the probability with
which each arm is chosen, mixed with the ``min_exploration`` floor per arm, which is what
off-policy evaluation needs.

Policies: Thompson sampling with a Beta-Bernoulli or Gaussian posterior, UCB1 (Auer et al.
2002), epsilon-greedy, LinUCB (Li et al. 2010, disjoint arms) and linear Thompson sampling
(Agrawal & Goyal 2013).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from flywheel.experiments._definition import BanditConfig, PolicyKind
from flywheel.experiments._errors import InvalidExperiment

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

THOMPSON_DRAWS = 4_000  # posterior draws estimating P(arm is best); error ~ 1/sqrt(4000) ~ 1.6%
LIN_THOMPSON_DRAWS = 256  # per context


@dataclass
class BanditState:
    """Additive sufficient statistics of a bandit (see the module docstring)."""

    arms: tuple[str, ...]
    pulls: FloatArray
    reward_sum: FloatArray
    reward_sq: FloatArray
    gram: FloatArray | None = None  # (K, d, d)
    xty: FloatArray | None = None  # (K, d)
    version: int = 0

    @classmethod
    def initial(cls, config: BanditConfig) -> BanditState:
        k = len(config.arms)
        gram = xty = None
        if config.policy.contextual:
            d = len(config.context) + 1
            gram = np.tile(np.eye(d) * config.prior, (k, 1, 1))
            xty = np.zeros((k, d))
        return cls(config.arms, np.zeros(k), np.zeros(k), np.zeros(k), gram, xty, 0)

    @property
    def means(self) -> FloatArray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.pulls > 0, self.reward_sum / np.maximum(self.pulls, 1e-300), 0.0)

    def updated(
        self, arms: IntArray, rewards: FloatArray, contexts: FloatArray | None = None
    ) -> BanditState:
        """A new state with a batch of ``(arm index, reward[, context])`` added."""
        arms = np.asarray(arms, dtype=np.int64)
        rewards = np.asarray(rewards, dtype=np.float64)
        k = len(self.arms)
        pulls = self.pulls + np.bincount(arms, minlength=k)
        reward_sum = self.reward_sum + np.bincount(arms, weights=rewards, minlength=k)
        reward_sq = self.reward_sq + np.bincount(arms, weights=rewards**2, minlength=k)
        gram, xty = self.gram, self.xty
        if gram is not None and xty is not None:
            if contexts is None:
                raise InvalidExperiment("context", "a contextual bandit needs a context per reward")
            x = np.asarray(contexts, dtype=np.float64)
            onehot = np.zeros((arms.size, k))
            onehot[np.arange(arms.size), arms] = 1.0
            gram = gram + np.einsum("bk,bd,be->kde", onehot, x, x)
            xty = xty + np.einsum("bk,b,bd->kd", onehot, rewards, x)
        return BanditState(self.arms, pulls, reward_sum, reward_sq, gram, xty, self.version + 1)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "arms": list(self.arms),
            "pulls": self.pulls.tolist(),
            "reward_sum": self.reward_sum.tolist(),
            "reward_sq": self.reward_sq.tolist(),
            "version": self.version,
        }
        if self.gram is not None and self.xty is not None:
            out["gram"] = self.gram.tolist()
            out["xty"] = self.xty.tolist()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BanditState:
        gram = data.get("gram")
        xty = data.get("xty")
        return cls(
            tuple(data["arms"]),
            np.asarray(data["pulls"], float),
            np.asarray(data["reward_sum"], float),
            np.asarray(data["reward_sq"], float),
            None if gram is None else np.asarray(gram, float),
            None if xty is None else np.asarray(xty, float),
            int(data.get("version", 0)),
        )


def context_vector(config: BanditConfig, context: Mapping[str, Any] | None) -> FloatArray:
    """The feature vector ``[1, context[f] for f in config.context]`` (intercept first)."""
    values = [1.0]
    for name in config.context:
        value = None if context is None else context.get(name)
        if isinstance(value, bool):
            value = float(value)
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise InvalidExperiment(
                f"context.{name}", f"the bandit needs a finite number here, got {value!r}"
            )
        values.append(float(value))
    return np.array(values)


def _argmax_share(scores: FloatArray) -> FloatArray:
    """Rows of ``scores`` -> one-hot of the maximum, ties split evenly."""
    best = scores >= scores.max(axis=-1, keepdims=True)
    share: FloatArray = best / best.sum(axis=-1, keepdims=True)
    return share


class PreparedPolicy:
    """A policy bound to one state: assignment probabilities without touching the database.

    Args:
        config: the bandit's configuration.
        state: its current sufficient statistics.
        seed: seeds the Monte-Carlo estimates, so the same state gives the same propensities.
    """

    def __init__(self, config: BanditConfig, state: BanditState, seed: int = 0) -> None:
        self.config = config
        self.state = state
        self.k = len(config.arms)
        self._rng = np.random.default_rng(seed)
        self._fixed: FloatArray | None = None
        if config.policy.contextual:
            assert state.gram is not None and state.xty is not None  # by BanditState.initial
            self._gram_inv = np.linalg.inv(state.gram)
            self._theta = np.einsum("kde,ke->kd", self._gram_inv, state.xty)
            if config.policy is PolicyKind.lin_thompson:
                sym = (self._gram_inv + np.transpose(self._gram_inv, (0, 2, 1))) / 2
                self._chol = np.linalg.cholesky(sym)
        else:
            self._fixed = self._with_floor(self._noncontextual())

    def _with_floor(self, p: FloatArray) -> FloatArray:
        floor = self.config.min_exploration
        out: FloatArray = floor + (1.0 - self.k * floor) * p
        return out

    def _noncontextual(self) -> FloatArray:
        s = self.state
        policy = self.config.policy
        untried = s.pulls <= 0
        if policy is PolicyKind.thompson:
            draws = self._posterior_draws(THOMPSON_DRAWS)
            wins = np.bincount(draws.argmax(axis=1), minlength=self.k)
            return np.asarray(wins / wins.sum(), float)
        if untried.any():  # UCB1 and epsilon-greedy try every arm first
            return np.asarray(untried / untried.sum(), float)
        if policy is PolicyKind.ucb1:
            total = s.pulls.sum()
            scores = s.means + self.config.alpha * np.sqrt(2.0 * np.log(total) / s.pulls)
            return _argmax_share(scores)
        eps = self.config.epsilon
        return eps / self.k + (1.0 - eps) * _argmax_share(s.means)

    def _posterior_draws(self, m: int) -> FloatArray:
        s = self.state
        if self.config.reward == "bernoulli":
            successes = np.clip(s.reward_sum, 0.0, s.pulls)
            a = self.config.prior + successes
            b = self.config.prior + s.pulls - successes
            return self._rng.beta(a, b, size=(m, self.k))
        # Gaussian: mean ~ N(sum / (n + prior), sigma^2 / (n + prior)), sigma^2 per arm shrunk
        # towards the variance pooled over all arms (1.0 before there is any data).
        n = s.pulls
        total = n.sum()
        if total > 1:
            pooled_mean = s.reward_sum.sum() / total
            pooled_var = max(s.reward_sq.sum() / total - pooled_mean**2, 1e-12)
        else:
            pooled_var = 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            dev = np.where(n > 0, s.reward_sq - s.reward_sum**2 / np.maximum(n, 1e-300), 0.0)
        var = (np.maximum(dev, 0.0) + self.config.prior * pooled_var) / (n + self.config.prior)
        mean = s.reward_sum / (n + self.config.prior)
        sd = np.sqrt(var / (n + self.config.prior))
        return self._rng.normal(mean, sd, size=(m, self.k))

    def probabilities(self, context: FloatArray | None = None) -> FloatArray:
        """Propensity of every arm, ``(K,)``, for one context vector (or none)."""
        if self._fixed is not None:
            return self._fixed
        if context is None:
            raise InvalidExperiment("context", "this bandit is contextual and needs a context")
        if self.config.policy is PolicyKind.linucb:  # the hot path: three small products
            gram_inv_x = self._gram_inv @ context  # (K, d)
            widths = (gram_inv_x @ context).tolist()
            means = (self._theta @ context).tolist()
            alpha = self.config.alpha
            scores = [
                m + alpha * math.sqrt(max(w, 0.0)) for m, w in zip(means, widths, strict=True)
            ]
            top = max(scores)
            best = [s >= top for s in scores]
            floor = self.config.min_exploration
            share = (1.0 - self.k * floor) / sum(best)
            return np.array([floor + share * b for b in best])
        return self.probabilities_batch(context[None, :])[0]

    def probabilities_batch(self, contexts: FloatArray | None) -> FloatArray:
        """Propensities ``(B, K)`` for a batch of context vectors ``(B, d)``."""
        if self._fixed is not None:
            rows = 1 if contexts is None else len(contexts)
            return np.tile(self._fixed, (rows, 1))
        if contexts is None:
            raise InvalidExperiment("context", "this bandit is contextual and needs contexts")
        x = np.asarray(contexts, float)
        mean = x @ self._theta.T  # (B, K)
        if self.config.policy is PolicyKind.linucb:
            width = np.sqrt(np.maximum(np.einsum("bd,kde,be->bk", x, self._gram_inv, x), 0.0))
            return self._with_floor(_argmax_share(mean + self.config.alpha * width))
        # Linear Thompson: theta_k ~ N(theta_k, alpha^2 A_k^-1); P(arm best) per context by MC.
        m = LIN_THOMPSON_DRAWS
        z = self._rng.standard_normal((m, self.k, x.shape[1]))
        noise = np.einsum("kde,mke->mkd", self._chol, z) * self.config.alpha  # (M, K, d)
        scores = mean[None, :, :] + np.einsum("bd,mkd->mbk", x, noise)  # (M, B, K)
        wins = np.zeros((x.shape[0], self.k))
        best = scores.argmax(axis=2)  # (M, B)
        for arm in range(self.k):
            wins[:, arm] = (best == arm).sum(axis=0)
        return self._with_floor(wins / m)


def choose_arms(probabilities: FloatArray, uniforms: FloatArray) -> IntArray:
    """Arm indices drawn from rows of ``probabilities`` with the given uniforms in [0, 1)."""
    cdf = np.cumsum(np.atleast_2d(probabilities), axis=1)
    cdf[:, -1] = 1.0 + 1e-12
    u = np.atleast_1d(uniforms)[:, None]
    return np.asarray((u >= cdf).sum(axis=1), dtype=np.int64)


def choose_arm(probabilities: Sequence[float] | FloatArray, u: float) -> int:
    """One arm index from a probability vector with the uniform ``u`` in [0, 1)."""
    total = 0.0
    last = len(probabilities) - 1
    for index, p in enumerate(probabilities):
        total += float(p)
        if u < total:
            return index
    return last


__all__ = [
    "LIN_THOMPSON_DRAWS",
    "THOMPSON_DRAWS",
    "BanditState",
    "PreparedPolicy",
    "choose_arm",
    "choose_arms",
    "context_vector",
]
