from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flywheel.recsys import RecsysError, TextEmbedder, embed_texts

TEXTS = ["RED CERAMIC MUG", "BLUE CERAMIC MUG", "VANILLA SCENTED CANDLE", "SCENTED CANDLE"]


def test_tfidf_vectors_are_normalised_and_meaningful(tmp_path: Path) -> None:
    vectors, method = embed_texts(TEXTS, "tfidf", cache_dir=tmp_path)
    assert method == "tfidf" and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[2, 0]
    cached = list(tmp_path.glob("text-tfidf-*.npy"))
    assert len(cached) == 1
    again, _ = embed_texts(TEXTS, "tfidf", cache_dir=tmp_path)
    np.testing.assert_array_equal(again, vectors)


def test_unknown_method_is_refused() -> None:
    with pytest.raises(RecsysError, match="unknown"):
        embed_texts(TEXTS, "word2vec")  # type: ignore[arg-type]
    with pytest.raises(RecsysError, match="unknown"):
        TextEmbedder("bert")  # type: ignore[arg-type]


def test_embedder_remembers_texts() -> None:
    emb = TextEmbedder("tfidf")
    first = emb(TEXTS[:2])
    assert first.shape[0] == 2 and emb.method_used == "tfidf"
    both = emb(TEXTS)
    assert both.shape[0] == 4


@pytest.mark.slow
def test_minilm_loads_offline_from_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    vectors, method = embed_texts(TEXTS, "minilm")
    assert method == "minilm" and vectors.shape == (4, 384)
    sim = vectors @ vectors.T
    assert sim[2, 3] > sim[2, 0]
