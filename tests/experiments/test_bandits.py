"""Bandit policies in seeded simulations with known reward rates, run the way production runs
them: arms drawn from the policy's cached probabilities, state updated in batches of rewards."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.experiments import BanditConfig, BanditState, InvalidExperiment, PreparedPolicy
from flywheel.experiments._bandits import choose_arm, choose_arms, context_vector

BERNOULLI_RATES = np.array([0.04, 0.06, 0.08, 0.10, 0.12])


def _config(policy: str, arms: int, **extra: object) -> BanditConfig:
    return BanditConfig.from_dict(
        {"policy": policy, "arms": [f"arm{i}" for i in range(arms)], **extra}
    )


def simulate_bernoulli(policy: str, seed: int, horizon: int = 10_000, batch: int = 50) -> float:
    """Cumulative regret of ``policy`` on the 5 Bernoulli arms; rewards arrive per batch."""
    rng = np.random.default_rng(seed)
    config = _config(policy, len(BERNOULLI_RATES))
    state = BanditState.initial(config)
    regret = 0.0
    for step in range(0, horizon, batch):
        probabilities = PreparedPolicy(config, state, seed=seed * 100_000 + step).probabilities()
        arms = choose_arms(np.tile(probabilities, (batch, 1)), rng.random(batch))
        rewards = (rng.random(batch) < BERNOULLI_RATES[arms]).astype(float)
        regret += float((BERNOULLI_RATES.max() - BERNOULLI_RATES[arms]).sum())
        state = state.updated(arms, rewards)
    return regret


def test_thompson_beats_ucb1_and_epsilon_greedy_on_5_bernoulli_arms() -> None:
    seeds = range(4)
    regret = {
        policy: float(np.mean([simulate_bernoulli(policy, s) for s in seeds]))
        for policy in ("thompson", "ucb1", "epsilon_greedy")
    }
    print(f"cumulative regret over 10,000 pulls (mean of 4 seeds): {regret}")
    assert regret["thompson"] < regret["ucb1"]
    assert regret["thompson"] < regret["epsilon_greedy"]
    # and it really learns: far below uniform random play (0.04 per pull)
    assert regret["thompson"] < 0.25 * 0.04 * 10_000


def test_thompson_finds_the_best_arm() -> None:
    config = _config("thompson", 5)
    rng = np.random.default_rng(1)
    state = BanditState.initial(config)
    for step in range(200):
        p = PreparedPolicy(config, state, seed=step).probabilities()
        arms = choose_arms(np.tile(p, (50, 1)), rng.random(50))
        state = state.updated(arms, (rng.random(50) < BERNOULLI_RATES[arms]).astype(float))
    final = PreparedPolicy(config, state, seed=0).probabilities()
    assert int(np.argmax(final)) == 4
    assert final[4] > 0.8


def test_gaussian_thompson_finds_the_best_arm() -> None:
    means = np.array([10.0, 12.0, 11.0])
    config = _config("thompson", 3, reward="gaussian")
    rng = np.random.default_rng(2)
    state = BanditState.initial(config)
    for step in range(100):
        p = PreparedPolicy(config, state, seed=step).probabilities()
        arms = choose_arms(np.tile(p, (20, 1)), rng.random(20))
        state = state.updated(arms, rng.normal(means[arms], 5.0))
    final = PreparedPolicy(config, state, seed=0).probabilities()
    assert int(np.argmax(final)) == 1


@pytest.mark.parametrize("policy", ["thompson", "ucb1", "epsilon_greedy"])
def test_minimum_exploration_share_keeps_every_arm_alive(policy: str) -> None:
    config = _config(policy, 4, min_exploration=0.02)
    state = BanditState.initial(config).updated(
        np.array([0] * 1000 + [1, 2, 3] * 100), np.array([1.0] * 1000 + [0.0] * 300)
    )
    p = PreparedPolicy(config, state, seed=0).probabilities()
    assert p.sum() == pytest.approx(1.0)
    assert p.min() >= 0.02 - 1e-12
    assert int(np.argmax(p)) == 0


def test_batch_update_equals_one_by_one_and_state_round_trips() -> None:
    config = _config("linucb", 3, context=["x"])
    rng = np.random.default_rng(3)
    arms = rng.integers(0, 3, 50)
    rewards = rng.random(50)
    contexts = np.column_stack([np.ones(50), rng.normal(size=50)])
    batched = BanditState.initial(config).updated(arms, rewards, contexts)
    single = BanditState.initial(config)
    for i in range(50):
        single = single.updated(arms[i : i + 1], rewards[i : i + 1], contexts[i : i + 1])
    assert np.allclose(batched.gram, single.gram)
    assert np.allclose(batched.xty, single.xty)
    assert np.allclose(batched.reward_sum, single.reward_sum)
    back = BanditState.from_dict(batched.to_dict())
    assert np.allclose(back.gram, batched.gram) and back.arms == batched.arms


def _contextual_simulation(policy: str, seed: int, horizon: int = 6_000, batch: int = 25) -> float:
    """Rewards depend on the context: arm k is best in its own region of x."""
    rng = np.random.default_rng(seed)
    d = 3
    weights = np.array([[0.5, 0.4, 0.0], [0.5, -0.4, 0.0], [0.5, 0.0, 0.4]])  # (K, d incl. 1)
    k = len(weights)
    contextual = policy in ("linucb", "lin_thompson")
    extra = {"context": ["x1", "x2"], "alpha": 0.5} if contextual else {}
    config = _config(policy, k, **extra)
    state = BanditState.initial(config)
    regret = 0.0
    for step in range(0, horizon, batch):
        x = np.column_stack([np.ones(batch), rng.normal(size=(batch, d - 1))])
        policy_now = PreparedPolicy(config, state, seed=seed * 100_000 + step)
        p = policy_now.probabilities_batch(x if contextual else None)
        arms = choose_arms(p, rng.random(batch))
        expected = x @ weights.T  # (B, K)
        rewards = expected[np.arange(batch), arms] + rng.normal(0, 0.5, size=batch)
        regret += float((expected.max(axis=1) - expected[np.arange(batch), arms]).sum())
        state = state.updated(arms, rewards, x if contextual else None)
    return regret


def test_linucb_and_linear_thompson_beat_non_contextual_policies_on_contextual_rewards() -> None:
    regret = {
        p: float(np.mean([_contextual_simulation(p, s) for s in range(2)]))
        for p in ("linucb", "lin_thompson", "thompson", "ucb1", "epsilon_greedy")
    }
    print(f"contextual regret over 6,000 pulls: {regret}")
    best_plain = min(regret["ucb1"], regret["epsilon_greedy"])
    assert regret["linucb"] < 0.5 * best_plain
    assert regret["lin_thompson"] < 0.5 * best_plain


def test_context_vector_and_errors() -> None:
    config = _config("linucb", 2, context=["age", "mobile"])
    assert context_vector(config, {"age": 30, "mobile": True}).tolist() == [1.0, 30.0, 1.0]
    with pytest.raises(InvalidExperiment, match=r"context\.age"):
        context_vector(config, {"mobile": 1})
    with pytest.raises(InvalidExperiment, match="needs a context"):
        PreparedPolicy(config, BanditState.initial(config)).probabilities()


def test_choose_arm_matches_vectorised_choice() -> None:
    p = np.array([0.2, 0.5, 0.3])
    us = np.linspace(0.0, 0.999, 200)
    assert [choose_arm(p, float(u)) for u in us] == choose_arms(np.tile(p, (200, 1)), us).tolist()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"policy": "nope", "arms": ["a", "b"]}, "policy"),
        ({"policy": "thompson", "arms": ["a"]}, "arms"),
        ({"policy": "thompson", "arms": ["a", "a"]}, "arms"),
        ({"policy": "linucb", "arms": ["a", "b"]}, "context"),
        ({"policy": "ucb1", "arms": ["a", "b"], "context": ["x"]}, "context"),
        ({"policy": "thompson", "arms": ["a", "b"], "min_exploration": 0.5}, "min_exploration"),
        ({"policy": "thompson", "arms": ["a", "b"], "reward": "poisson"}, "reward"),
    ],
)
def test_bandit_config_errors_name_the_field(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidExperiment, match=f"bandit.{field}"):
        BanditConfig.from_dict(data)


def test_linucb_single_context_path_matches_the_batch_path() -> None:
    config = _config("linucb", 3, context=["a", "b"])
    rng = np.random.default_rng(8)
    x = np.column_stack([np.ones(200), rng.normal(size=(200, 2))])
    state = BanditState.initial(config).updated(rng.integers(0, 3, 200), rng.random(200), x)
    policy = PreparedPolicy(config, state)
    batch = policy.probabilities_batch(x[:20])
    for i in range(20):
        assert np.allclose(policy.probabilities(x[i]), batch[i])
