"""The two-tower at serving time: ``TwoTowerRetriever`` (a registered version: user and item
embeddings, a FAISS ``ItemIndex`` over every catalogue item, items added while serving) and the
files the training job registers (``item_embeddings_npz``, ``catalogue_frame``)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flywheel.recsys._errors import RecsysError
from flywheel.recsys._index import ItemIndex
from flywheel.recsys._two_tower import (
    CONFIG_KEY,
    FORMAT,
    MODEL_NAME,
    TwoTowerModel,
    item_embeddings,
    user_embeddings,
)
from flywheel.recsys._two_tower_features import ItemEncoding

if TYPE_CHECKING:
    import pandas as pd

    from flywheel.project import Project

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
