"""``ItemIndex``: inner-product nearest-neighbour search over item embeddings, on FAISS.

Below ``exact_threshold`` live items the index is an exact ``IndexFlatIP``; from the threshold
on it is an ``IndexHNSWFlat`` (inner product, ``hnsw_m`` links per node, ``ef_search`` at
query time). The switch happens when an ``add`` crosses the threshold (the graph is built from
the stored vectors then).

Ids are strings (StockCodes). Each added vector gets the next integer label; the index keeps
every vector it ever labelled (``float32``) so it can be rebuilt. **Re-adding an id replaces
its vector**: the old label becomes a tombstone that searches skip (a FAISS ``IDSelector``),
and once tombstones exceed ``max(1000, 10%)`` of the labels the FAISS index is rebuilt from
the live vectors only. Searches never return a tombstone and never return one id twice.

``save(path)`` writes one ``.npz`` file (vectors, ids, tombstones, parameters and the
serialised FAISS index, so an HNSW graph is not rebuilt on load) to a temporary file that is
then renamed over ``path``: a reader sees the old file or the new one, never a torn one.
``ItemIndex.load(path)`` reads it back without unpickling anything.

Thread safety: one lock serialises ``add``, ``search`` and ``save``, so the request path may
search while the event path adds items.
"""

from __future__ import annotations

import io
import json
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.recsys._errors import RecsysError

_FORMAT = "flywheel-item-index/1"


def _faiss() -> Any:
    """The faiss module, imported on first use (its type stubs lack the search parameters)."""
    import faiss

    return faiss


_MIN_REBUILD = 1000  # tombstones tolerated before a rebuild, whatever the index size


class ItemIndex:
    """Item id -> embedding, searched by inner product (see the module docstring).

    Args:
        dim: embedding size (every vector added must have it).
        exact_threshold: below this many live items, exact search (``IndexFlatIP``); at or
            above it, HNSW.
        hnsw_m: links per HNSW node (more: better recall, more memory, slower build).
        ef_search: HNSW candidate list size at query time (raised to ``k`` when smaller).
        ef_construction: HNSW candidate list size while building.
    """

    def __init__(
        self,
        dim: int,
        *,
        exact_threshold: int = 20_000,
        hnsw_m: int = 32,
        ef_search: int = 128,
        ef_construction: int = 80,
    ) -> None:
        for name, value in (
            ("dim", dim),
            ("hnsw_m", hnsw_m),
            ("ef_search", ef_search),
            ("ef_construction", ef_construction),
        ):
            if not isinstance(value, int) or value < 1:
                raise RecsysError(f"ItemIndex: {name} must be a positive integer (got {value!r})")
        if not isinstance(exact_threshold, int) or exact_threshold < 0:
            raise RecsysError(
                f"ItemIndex: exact_threshold must be an integer >= 0 (got {exact_threshold!r})"
            )
        self.dim = dim
        self.exact_threshold = exact_threshold
        self.hnsw_m = hnsw_m
        self.ef_search = ef_search
        self.ef_construction = ef_construction
        self._lock = threading.RLock()
        self._vectors = np.zeros((0, dim), dtype=np.float32)  # one row per label
        self._ids: list[str] = []  # label -> id
        self._alive = np.zeros(0, dtype=bool)  # label -> not a tombstone
        self._label: dict[str, int] = {}  # id -> live label
        self._faiss: Any = None  # built lazily
        self._faiss_labels = np.zeros(0, dtype=np.int64)  # faiss position -> our label
        self._selector: Any = None  # kept alive while FAISS search params point at it
        self._params: Any = None
        self._built_kind = ""  # what the FAISS index was built as ("exact" / "hnsw")

    # -- facts -----------------------------------------------------------------------------------

    def __len__(self) -> int:
        """Live items (re-added ids count once)."""
        return len(self._label)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._label

    @property
    def kind(self) -> str:
        """``"exact"`` or ``"hnsw"``: what a search runs on now."""
        return "hnsw" if len(self) >= self.exact_threshold and len(self) > 0 else "exact"

    @property
    def ids(self) -> list[str]:
        """Live item ids, in the order they were (last) added."""
        with self._lock:
            return [self._ids[i] for i in np.flatnonzero(self._alive).tolist()]

    def vectors(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The stored vectors of ``item_ids`` (zeros for unknown ids) and a mask of the known."""
        with self._lock:
            labels = np.array([self._label.get(str(i), -1) for i in item_ids], dtype=np.int64)
            known = labels >= 0
            out = np.zeros((len(labels), self.dim), dtype=np.float32)
            out[known] = self._vectors[labels[known]]
        return out, known

    # -- writes ----------------------------------------------------------------------------------

    def add(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        """Add (or replace) items. ``vectors``: (len(ids), dim), finite. Within one call a
        repeated id keeps its last vector."""
        ids = [str(i) for i in ids]
        x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise RecsysError(
                f"ItemIndex.add: vectors must have shape (n, {self.dim}), got {list(x.shape)}"
            )
        if x.shape[0] != len(ids):
            raise RecsysError(
                f"ItemIndex.add: {len(ids)} ids but {x.shape[0]} vectors (one vector per id)"
            )
        if not np.isfinite(x).all():
            raise RecsysError("ItemIndex.add: vectors must be finite (found NaN or inf)")
        if not ids:
            return
        # The last occurrence of an id within this call wins.
        last = {item: pos for pos, item in enumerate(ids)}
        keep = np.array(sorted(last.values()), dtype=np.int64)
        ids = [ids[p] for p in keep.tolist()]
        x = x[keep]
        with self._lock:
            replaced = [self._label[i] for i in ids if i in self._label]
            if replaced:
                self._alive[np.array(replaced, dtype=np.int64)] = False
            start = len(self._ids)
            self._vectors = np.concatenate([self._vectors, x])
            self._ids.extend(ids)
            self._alive = np.concatenate([self._alive, np.ones(len(ids), dtype=bool)])
            for offset, item in enumerate(ids):
                self._label[item] = start + offset
            tombstones = len(self._ids) - len(self._label)
            rebuild = (
                self._faiss is None
                or self.kind != self._built_kind
                or tombstones > max(_MIN_REBUILD, len(self._ids) // 10)
            )
            if rebuild:
                self._rebuild()
            else:
                self._faiss.add(x)
                self._faiss_labels = np.concatenate(
                    [self._faiss_labels, np.arange(start, start + len(ids), dtype=np.int64)]
                )
                self._update_selector()

    def _rebuild(self) -> None:
        """Build the FAISS index from the live vectors only (drops every tombstone)."""
        faiss = _faiss()

        live = np.flatnonzero(self._alive).astype(np.int64)
        kind = self.kind
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            index.hnsw.efSearch = self.ef_search
        else:
            index = faiss.IndexFlatIP(self.dim)
        if len(live):
            index.add(np.ascontiguousarray(self._vectors[live]))
        self._faiss = index
        self._faiss_labels = live
        self._built_kind = kind
        self._update_selector()

    def _update_selector(self) -> None:
        """Search parameters that skip FAISS positions whose label is a tombstone."""
        faiss = _faiss()

        dead = np.flatnonzero(~self._alive[self._faiss_labels]).astype(np.int64)
        if len(dead) == 0:
            self._selector, self._params = None, None
            return
        batch = faiss.IDSelectorBatch(dead)
        selector = faiss.IDSelectorNot(batch)
        if self._built_kind == "hnsw":
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=self.ef_search)
        else:
            params = faiss.SearchParameters(sel=selector)
        self._selector, self._params = (batch, selector), params

    # -- reads -----------------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, k: int) -> tuple[list[list[str]], np.ndarray]:
        """The ``k`` items with the largest inner product with each query row.

        Returns (ids, scores): ``ids[r]`` is a list of at most ``k`` item ids, best first
        (shorter when the index holds fewer items); ``scores`` is (n, k) float32, ``-inf``
        where ``ids[r]`` has no entry.
        """
        q = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32))
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise RecsysError(
                f"ItemIndex.search: queries must have shape (n, {self.dim}), got {list(q.shape)}"
            )
        if not isinstance(k, int) or k < 1:
            raise RecsysError(f"ItemIndex.search: k must be a positive integer (got {k!r})")
        scores = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
        with self._lock:
            if len(self) == 0 or q.shape[0] == 0:
                return [[] for _ in range(q.shape[0])], scores
            kk = min(k, len(self))
            params = self._params
            if self._built_kind == "hnsw":
                faiss = _faiss()

                if params is None:
                    params = faiss.SearchParametersHNSW(efSearch=max(self.ef_search, kk))
                else:
                    params.efSearch = max(self.ef_search, kk)
            dist, pos = self._faiss.search(q, kk, params=params)
            ids: list[list[str]] = []
            for r in range(q.shape[0]):
                valid = pos[r] >= 0
                labels = self._faiss_labels[pos[r][valid]]
                ids.append([self._ids[label] for label in labels.tolist()])
                scores[r, : int(valid.sum())] = dist[r][valid]
        return ids, scores

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the index to ``path`` (one ``.npz`` file), atomically; returns the path."""
        faiss = _faiss()

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if self._faiss is None:
                self._rebuild()
            meta = {
                "format": _FORMAT,
                "dim": self.dim,
                "exact_threshold": self.exact_threshold,
                "hnsw_m": self.hnsw_m,
                "ef_search": self.ef_search,
                "ef_construction": self.ef_construction,
                "built_kind": self._built_kind,
            }
            arrays: dict[str, Any] = {
                "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
                "vectors": self._vectors,
                "ids": np.array(self._ids, dtype=np.str_),
                "alive": self._alive,
                "faiss_labels": self._faiss_labels,
                "faiss": faiss.serialize_index(self._faiss),
            }
            buf = io.BytesIO()
            np.savez(buf, allow_pickle=False, **arrays)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ItemIndex:
        """Read an index written by ``save`` (``RecsysError`` when it is not one)."""
        faiss = _faiss()

        path = Path(path)
        if not path.is_file():
            raise RecsysError(f"ItemIndex.load: {path} does not exist")
        try:
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(bytes(npz["meta"]).decode())
                arrays = {k: npz[k] for k in npz.files if k != "meta"}
        except (OSError, ValueError, KeyError) as exc:
            raise RecsysError(f"ItemIndex.load: {path} is not an item index ({exc})") from exc
        if meta.get("format") != _FORMAT:
            raise RecsysError(
                f"ItemIndex.load: {path} has format {meta.get('format')!r}, expected {_FORMAT!r}"
            )
        index = cls(
            int(meta["dim"]),
            exact_threshold=int(meta["exact_threshold"]),
            hnsw_m=int(meta["hnsw_m"]),
            ef_search=int(meta["ef_search"]),
            ef_construction=int(meta["ef_construction"]),
        )
        index._vectors = np.ascontiguousarray(arrays["vectors"], dtype=np.float32)
        index._ids = [str(i) for i in arrays["ids"].tolist()]
        index._alive = arrays["alive"].astype(bool)
        index._label = {index._ids[label]: label for label in np.flatnonzero(index._alive).tolist()}
        index._faiss = faiss.deserialize_index(arrays["faiss"])
        index._faiss_labels = arrays["faiss_labels"].astype(np.int64)
        index._built_kind = str(meta["built_kind"])
        if index._faiss.ntotal != len(index._faiss_labels):
            raise RecsysError(f"ItemIndex.load: {path} is inconsistent (FAISS size differs)")
        if index._built_kind == "hnsw":
            index._faiss.hnsw.efSearch = index.ef_search
        index._update_selector()
        return index


__all__ = ["ItemIndex"]
