"""ItemIndex: exact vs HNSW agreement, replace-on-re-add, save/load, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flywheel.recsys import ItemIndex, RecsysError


def _vectors(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Clustered unit vectors (closer to real embeddings than uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    x = centres[rng.integers(0, 20, n)] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


def test_exact_index_is_brute_force_and_hnsw_agrees_on_recall() -> None:
    x = _vectors(3_000, 16)
    ids = [f"item{i}" for i in range(len(x))]
    q = _vectors(200, 16, seed=1)
    exact = ItemIndex(16)
    exact.add(ids, x)
    hnsw = ItemIndex(16, exact_threshold=1_000, hnsw_m=16, ef_search=64)
    hnsw.add(ids, x)
    assert exact.kind == "exact" and hnsw.kind == "hnsw"
    assert len(exact) == len(hnsw) == 3_000

    got, scores = exact.search(q, 10)
    want = _brute_force(x, q, 10)
    for r in range(len(q)):
        assert got[r] == [ids[i] for i in want[r]]
        np.testing.assert_allclose(scores[r], (q[r] @ x[want[r]].T), rtol=1e-5, atol=1e-6)
    assert np.all(np.diff(scores, axis=1) <= 1e-7)  # best first

    approx, _ = hnsw.search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, got, strict=True)])
    assert recall >= 0.95
    assert all(len(set(row)) == len(row) == 10 for row in approx)


def test_exact_threshold_switches_to_hnsw_when_crossed() -> None:
    x = _vectors(600, 8)
    index = ItemIndex(8, exact_threshold=500)
    index.add([str(i) for i in range(400)], x[:400])
    assert index.kind == "exact"
    index.add([str(i) for i in range(400, 600)], x[400:])
    assert index.kind == "hnsw" and len(index) == 600
    ids, _ = index.search(x[450:451], 1)
    assert ids == [["450"]]


@pytest.mark.parametrize("threshold", [10**6, 0], ids=["exact", "hnsw"])
def test_re_adding_an_id_replaces_its_vector(threshold: int) -> None:
    x = _vectors(500, 8)
    ids = [f"i{i}" for i in range(500)]
    index = ItemIndex(8, exact_threshold=threshold)
    index.add(ids, x)
    target = x[7]
    assert index.search(target, 1)[0] == [["i7"]]
    # Move i3 onto i7's spot: i3 wins the query now, and i3 appears once.
    index.add(["i3"], target[None, :] * 1.01)
    found, _ = index.search(target, 5)
    assert found[0][:2] == ["i3", "i7"] and found[0].count("i3") == 1
    assert len(index) == 500
    stored, known = index.vectors(["i3", "missing"])
    np.testing.assert_allclose(stored[0], target * 1.01, rtol=1e-6)
    assert known.tolist() == [True, False]
    # Within one call the last vector of a repeated id wins.
    index.add(["new", "new"], np.stack([x[0], x[1]]))
    np.testing.assert_allclose(index.vectors(["new"])[0][0], x[1])


def test_many_replacements_trigger_a_rebuild_and_stay_correct() -> None:
    x = _vectors(300, 8)
    ids = [str(i) for i in range(300)]
    index = ItemIndex(8)
    index.add(ids, x)
    rng = np.random.default_rng(3)
    moved = _vectors(300, 8, seed=9)
    for round_ in range(5):  # 1,500 replacements: past the tombstone limit; x last
        index.add(ids, moved if round_ % 2 else x)
    final = x
    q = final[rng.integers(0, 300, 20)]
    got, _ = index.search(q, 3)
    want = _brute_force(final, q, 3)
    assert got == [[ids[i] for i in row] for row in want]
    assert len(index) == 300


def test_fewer_items_than_k_and_empty_index() -> None:
    index = ItemIndex(4)
    ids, scores = index.search(np.ones((2, 4)), 3)
    assert ids == [[], []] and np.isneginf(scores).all()
    index.add(["a", "b"], np.eye(4, dtype=np.float32)[:2])
    ids, scores = index.search(np.eye(4, dtype=np.float32)[:1], 5)
    assert ids == [["a", "b"]]
    assert scores.shape == (1, 5) and np.isneginf(scores[0, 2:]).all()


@pytest.mark.parametrize("threshold", [10**6, 0], ids=["exact", "hnsw"])
def test_save_load_round_trip(tmp_path: Path, threshold: int) -> None:
    x = _vectors(400, 8)
    ids = [f"p{i}" for i in range(400)]
    index = ItemIndex(8, exact_threshold=threshold, hnsw_m=8, ef_search=32)
    index.add(ids, x)
    index.add(["p1"], x[2:3])  # a tombstone survives the round trip too
    path = index.save(tmp_path / "sub" / "index.npz")
    assert [p.name for p in path.parent.iterdir()] == ["index.npz"]  # no temp file left
    loaded = ItemIndex.load(path)
    assert len(loaded) == len(index) == 400
    assert (loaded.kind, loaded.hnsw_m, loaded.ef_search) == (index.kind, 8, 32)
    q = _vectors(30, 8, seed=5)
    assert loaded.search(q, 7)[0] == index.search(q, 7)[0]
    np.testing.assert_array_equal(loaded.search(q, 7)[1], index.search(q, 7)[1])
    assert sorted(loaded.ids) == sorted(ids)
    # The loaded index keeps working.
    loaded.add(["fresh"], x[9:10] * 2)
    assert loaded.search(x[9], 1)[0] == [["fresh"]]


def test_bad_input_is_refused_with_the_reason(tmp_path: Path) -> None:
    index = ItemIndex(4)
    with pytest.raises(RecsysError, match=r"shape \(n, 4\)"):
        index.add(["a"], np.ones((1, 3)))
    with pytest.raises(RecsysError, match="2 ids but 1 vectors"):
        index.add(["a", "b"], np.ones((1, 4)))
    with pytest.raises(RecsysError, match="finite"):
        index.add(["a"], np.array([[np.nan, 0, 0, 0]]))
    with pytest.raises(RecsysError, match="k must be"):
        index.search(np.ones((1, 4)), 0)
    with pytest.raises(RecsysError, match="dim must be"):
        ItemIndex(0)
    with pytest.raises(RecsysError, match="does not exist"):
        ItemIndex.load(tmp_path / "nothing.npz")
    (tmp_path / "junk.npz").write_bytes(b"not an index")
    with pytest.raises(RecsysError, match="not an item index"):
        ItemIndex.load(tmp_path / "junk.npz")
