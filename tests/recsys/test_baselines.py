"""Baselines reproduce BASELINES.md on OR-T1 (deterministic ones to 1e-4, iALS to 0.01)."""

from __future__ import annotations

import numpy as np
import pytest

from flywheel.recsys import (
    EASE,
    IALS,
    ItemKNN,
    MostPopular,
    Recommender,
    RecsysError,
    RepeatFrequency,
    Split,
    _baselines,
    evaluate_view,
)

# BASELINES.md: R@20, N@20, HR@20 for "all", then for "new-only".
REFERENCE = {
    "MostPop": (0.0607, 0.0876, 0.6385, 0.0373, 0.0397, 0.3675),
    "RepeatFreq": (0.2559, 0.3351, 0.9075, 0.0373, 0.0397, 0.3675),
    "ItemKNN-cosine": (0.1273, 0.1744, 0.7188, 0.0709, 0.0716, 0.4654),
    "EASE λ=500": (0.1950, 0.2595, 0.8343, 0.1062, 0.1048, 0.6076),
    "iALS f=64": (0.2098, 0.2766, 0.8601, 0.0935, 0.0960, 0.5750),
}


def _row(model: Recommender, split: Split) -> tuple[float, ...]:
    a = evaluate_view(model.score, split, "all")
    n = evaluate_view(model.score, split, "new-only")
    assert (a.users, n.users) == (1_394, 1_287)
    return (a.recall, a.ndcg, a.hit_rate, n.recall, n.ndcg, n.hit_rate)


@pytest.mark.parametrize(
    "model", [MostPopular(), RepeatFrequency(), ItemKNN(), EASE(500)], ids=lambda m: m.name
)
def test_deterministic_baselines_reproduce_the_reference(
    model: Recommender, real_split: Split
) -> None:
    got = _row(model.fit(real_split.train), real_split)
    np.testing.assert_allclose(got, REFERENCE[model.name], atol=1e-4)


@pytest.mark.slow
def test_ials_reproduces_the_reference_within_its_noise(real_split: Split) -> None:
    got = _row(IALS().fit(real_split.train), real_split)
    np.testing.assert_allclose(got, REFERENCE["iALS f=64"], atol=0.01)


def test_models_score_every_item(small_split: Split) -> None:
    users = small_split.test_users[:7]
    for model in (MostPopular(), RepeatFrequency(), ItemKNN(), EASE(50), IALS(factors=8)):
        assert isinstance(model, Recommender)
        scores = model.fit(small_split.train).score(users)
        assert scores.shape == (7, small_split.train.n_items)
        assert np.isfinite(scores).all()
    # RepeatFreq puts the user's own items first.
    rf = RepeatFrequency().fit(small_split.train)
    u = int(users[0])
    own = set(small_split.train.X[u].indices.tolist())
    order = np.argsort(-rf.score(np.array([u]))[0])
    assert set(order[: len(own)].tolist()) == own


def test_refusals(small_split: Split, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RecsysError, match="before fit"):
        MostPopular().score(np.array([0]))
    with pytest.raises(RecsysError, match="lambda"):
        EASE(0)
    monkeypatch.setattr(_baselines, "MAX_DENSE_ITEMS", 10)
    with pytest.raises(RecsysError, match="dense item x item"):
        EASE(10).fit(small_split.train)
