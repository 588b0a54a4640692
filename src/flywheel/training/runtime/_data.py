"""``ShardedParquetDataset``: an IterableDataset over Parquet files, split by rank and worker.

The data of one epoch is one deterministic stream: the row groups of all files in an order
shuffled with ``seed + epoch``, each row group's rows shuffled with the same seed. The stream
is cut into global batches of ``batch_size`` rows (the last partial batch is dropped); global
batch ``g`` belongs to rank ``g % world_size``, so every rank gets the same number of batches
(DDP needs that). Inside a rank, DataLoader worker ``w`` of ``K`` produces that rank's batches
``w, w + K, ...``; the DataLoader yields them round-robin, so the order a rank sees is the same
whatever ``num_workers`` is.

The position is a count of this rank's batches consumed in the current epoch;
``state_dict()`` / ``load_state_dict()`` carry it through a checkpoint, and iteration resumes at
the next batch, bit for bit. Count consumption in the training process: iterate the dataset
directly (``num_workers=0``) or through ``dataset.loader(num_workers=K)``.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

Batch = dict[str, torch.Tensor]


class ShardedParquetDataset(IterableDataset[Batch]):
    """Batches (``{column: tensor}``) from Parquet files, for one rank of a distributed job.

    Args:
        files: Parquet files (a training dataset's ``.files``, or ``ctx.dataset_files``).
        batch_size: rows per batch, per rank.
        columns: columns to read (default all); numeric columns become tensors.
        shuffle: shuffle row-group order and rows within a row group, per epoch.
        seed: base seed; epoch ``e`` uses ``seed + e``.
        rank, world_size: default from the process group / environment.
        transform: optional function applied to each batch (in the worker).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        batch_size: int,
        *,
        columns: Sequence[str] | None = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        transform: Callable[[Batch], Any] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not files:
            raise ValueError("ShardedParquetDataset needs at least one Parquet file")
        import os

        self.files = [str(f) for f in files]
        self.batch_size = batch_size
        self.columns = list(columns) if columns is not None else None
        self.shuffle = shuffle
        self.seed = seed
        self.rank = int(os.environ.get("RANK", "0")) if rank is None else rank
        self.world_size = (
            int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
        )
        self.transform = transform
        self.epoch = 0
        self.position = 0  # this rank's batches consumed in ``epoch``
        self._row_groups: list[tuple[int, int, int]] | None = None  # (file, row group, rows)

    # -- layout ----------------------------------------------------------------------------------

    def _layout(self) -> list[tuple[int, int, int]]:
        if self._row_groups is None:
            import pyarrow.parquet as pq

            groups = []
            for fi, path in enumerate(self.files):
                meta = pq.ParquetFile(path).metadata
                for gi in range(meta.num_row_groups):
                    groups.append((fi, gi, meta.row_group(gi).num_rows))
            self._row_groups = groups
        return self._row_groups

    @property
    def num_rows(self) -> int:
        return sum(n for _, _, n in self._layout())

    def __len__(self) -> int:
        """Batches per rank per epoch."""
        return (self.num_rows // self.batch_size) // self.world_size

    # -- position --------------------------------------------------------------------------------

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` (keeps the position when it is the epoch already in progress)."""
        if epoch != self.epoch:
            self.epoch = epoch
            self.position = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])

    # -- iteration -------------------------------------------------------------------------------

    def _order(self) -> tuple[list[int], list[int]]:
        """Row-group order of this epoch and the cumulative row counts along it."""
        groups = self._layout()
        order = list(range(len(groups)))
        if self.shuffle:
            np.random.default_rng(self.seed + self.epoch).shuffle(order)
        cumulative = [0]
        for g in order:
            cumulative.append(cumulative[-1] + groups[g][2])
        return order, cumulative

    def _batch_indices(self, start: int) -> Iterator[int]:
        """This worker's rank-local batch indices from ``start`` on."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        # The DataLoader takes one batch from each worker in turn, starting at worker 0.
        return iter(range(start + worker, len(self), workers))

    def __iter__(self) -> Iterator[Batch]:
        import pyarrow.parquet as pq

        groups = self._layout()
        order, cumulative = self._order()
        cache: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        files: dict[int, Any] = {}

        def rows_of(slot: int) -> dict[str, np.ndarray]:
            if slot in cache:
                cache.move_to_end(slot)
                return cache[slot]
            fi, gi, n = groups[order[slot]]
            if fi not in files:
                files[fi] = pq.ParquetFile(self.files[fi])
            table = files[fi].read_row_group(gi, columns=self.columns)
            data = {name: table.column(name).to_numpy() for name in table.column_names}
            if self.shuffle:
                perm = np.random.default_rng([self.seed + self.epoch, order[slot]]).permutation(n)
                data = {k: v[perm] for k, v in data.items()}
            cache[slot] = data
            if len(cache) > 2:
                cache.popitem(last=False)
            return data

        in_main = get_worker_info() is None
        for local in self._batch_indices(self.position):
            g = local * self.world_size + self.rank
            lo, hi = g * self.batch_size, (g + 1) * self.batch_size
            parts: list[dict[str, np.ndarray]] = []
            while lo < hi:
                slot = bisect.bisect_right(cumulative, lo) - 1
                take = min(hi, cumulative[slot + 1]) - lo
                offset = lo - cumulative[slot]
                data = rows_of(slot)
                parts.append({k: v[offset : offset + take] for k, v in data.items()})
                lo += take
            batch = {
                k: torch.from_numpy(np.ascontiguousarray(np.concatenate([p[k] for p in parts])))
                for k in parts[0]
                if np.issubdtype(parts[0][k].dtype, np.number) or parts[0][k].dtype == np.bool_
            }
            out = self.transform(batch) if self.transform is not None else batch
            if in_main:
                self.position = local + 1
            yield out

    def loader(self, num_workers: int = 0, **kwargs: Any) -> Iterator[Any]:
        """Iterate through a ``DataLoader`` with ``num_workers`` processes, counting position."""
        if num_workers == 0:
            yield from self
            return
        dl: DataLoader[Batch] = DataLoader(self, batch_size=None, num_workers=num_workers, **kwargs)
        start = self.position
        for i, batch in enumerate(dl):
            self.position = start + i + 1
            yield batch


__all__ = ["ShardedParquetDataset"]
