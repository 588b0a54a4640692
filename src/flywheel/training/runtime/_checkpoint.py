"""``Checkpointer``: crash-safe checkpoints that make a resumed run bit-identical.

A checkpoint is one plain dict saved with ``torch.save``: model, optimizer and LR-scheduler
state, the RNG states of python, numpy and torch **of every rank** (gathered to rank 0), the
dataset position, the step, and anything extra. Rank 0 writes it:

1. ``ckpt-<step>.pt.tmp`` written, flushed and fsynced, then renamed to ``ckpt-<step>.pt``;
2. ``ckpt-<step>.json`` (step, sha256, size) written the same way, last.

A checkpoint exists only once its manifest does, and is valid only if the file's sha256 matches
it, so a crash at any moment leaves either the previous set or the new one, never a torn file
that gets loaded. ``resume()`` walks the manifests newest first, skips any checkpoint whose
file is missing or fails its checksum (saying so on stderr), and loads the first good one on
every rank. Only the newest ``keep_last`` are kept.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from flywheel.training._errors import CheckpointError
from flywheel.training.runtime._context import JobContext, current, should_stop

_MANIFEST = re.compile(r"^ckpt-(\d{10})\.json$")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _is_fsdp(model: torch.nn.Module) -> bool:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        return False
    return isinstance(model, FSDPModule)


class Checkpointer:
    """Save and resume everything a training loop needs to continue bit for bit.

    Args:
        directory: where checkpoints live (default: the job's checkpoint folder, which all
            attempts of a job share; ``./checkpoints`` outside a scheduled job).
        model, optimizer, scheduler: objects with ``state_dict``/``load_state_dict``.
        dataset: a ``ShardedParquetDataset`` (or anything with ``state_dict``) whose position
            is saved and restored.
        every_steps, every_seconds, keep_last: the policy (default: the job spec's
            ``checkpoint`` section; else every 100 steps, keep 3).
    """

    def __init__(
        self,
        directory: str | Path | None = None,
        *,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        dataset: Any | None = None,
        every_steps: int | None = None,
        every_seconds: float | None = None,
        keep_last: int | None = None,
        context: JobContext | None = None,
    ) -> None:
        self.ctx = context or current()
        policy = self.ctx.spec.get("checkpoint") or {}
        self.directory = Path(directory) if directory is not None else self.ctx.checkpoint_dir
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.dataset = dataset
        self.every_steps = every_steps if every_steps is not None else policy.get("every_steps")
        self.every_seconds = (
            every_seconds if every_seconds is not None else policy.get("every_seconds")
        )
        if self.every_steps is None and self.every_seconds is None:
            self.every_steps = 100
        self.keep_last = keep_last if keep_last is not None else int(policy.get("keep_last", 3))
        self.extra: dict[str, Any] = {}
        self._last_save = time.monotonic()
        self.stopped = False
        self.last_saved_bytes = 0

    # -- state -----------------------------------------------------------------------------------

    def _model_state(self) -> dict[str, Any]:
        if _is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_model_state_dict(self.model, options=opts)
        inner = getattr(self.model, "module", self.model)
        return {k: v.detach().cpu().clone() for k, v in inner.state_dict().items()}

    def _optimizer_state(self) -> dict[str, Any] | None:
        if self.optimizer is None:
            return None
        if _is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            return get_optimizer_state_dict(self.model, self.optimizer, options=opts)
        return self.optimizer.state_dict()

    def _load_model(self, state: dict[str, Any]) -> None:
        if _is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_model_state_dict,
            )

            set_model_state_dict(self.model, state, options=StateDictOptions(full_state_dict=True))
            return
        getattr(self.model, "module", self.model).load_state_dict(state)

    def _load_optimizer(self, state: dict[str, Any] | None) -> None:
        if self.optimizer is None or state is None:
            return
        if _is_fsdp(self.model):
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                set_optimizer_state_dict,
            )

            set_optimizer_state_dict(
                self.model,
                self.optimizer,
                state,
                options=StateDictOptions(full_state_dict=True),
            )
            return
        self.optimizer.load_state_dict(state)

    # -- save ------------------------------------------------------------------------------------

    def save(self, step: int) -> Path | None:
        """Write a checkpoint for ``step``. Collective: every rank must call it.

        Returns the file on rank 0, ``None`` elsewhere.
        """
        rng = rng_state()
        if _is_dist():
            rngs: list[Any] = [None] * dist.get_world_size()
            dist.all_gather_object(rngs, rng)
        else:
            rngs = [rng]
        model_state = self._model_state()
        optimizer_state = self._optimizer_state()
        path: Path | None = None
        if self.ctx.is_main:
            payload = {
                "step": step,
                "model": model_state,
                "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "data": self.dataset.state_dict() if self.dataset is not None else None,
                "rng": rngs,
                "world_size": len(rngs),
                "extra": dict(self.extra),
                "saved_at": time.time(),
            }
            buffer = io.BytesIO()
            torch.save(payload, buffer)
            data = buffer.getvalue()
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self.directory / f"ckpt-{step:010d}.pt"
            _write_atomic(path, data)
            manifest = {
                "step": step,
                "file": path.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
            }
            _write_atomic(path.with_suffix(".json"), json.dumps(manifest).encode())
            _fsync_dir(self.directory)
            self.last_saved_bytes = len(data)
            self._prune()
        if _is_dist():
            dist.barrier()
        self._last_save = time.monotonic()
        return path

    def _prune(self) -> None:
        steps = self.steps()
        for step in steps[: max(0, len(steps) - self.keep_last)]:
            for suffix in (".json", ".pt"):
                (self.directory / f"ckpt-{step:010d}{suffix}").unlink(missing_ok=True)

    def after_step(self, step: int) -> bool:
        """Save when the policy says so, or when a stop was requested; ``True`` means stop now.

        Collective (one small all-reduce): call it on every rank after every optimizer step.
        """
        stop = should_stop()
        due = self.every_steps is not None and step % self.every_steps == 0
        if not due and self.every_seconds is not None:
            elapsed = time.monotonic() - self._last_save >= self.every_seconds
            if _is_dist():  # rank 0's clock decides, so every rank saves at the same step
                flag = torch.tensor([1 if elapsed else 0], dtype=torch.int32)
                dist.broadcast(flag, src=0)
                elapsed = bool(flag.item())
            due = elapsed
        if due or stop:
            self.save(step)
        if stop and self.ctx.is_main:
            marker = os.environ.get("FLYWHEEL_STOP_MARKER")
            if marker:  # tells the scheduler this attempt stopped early, with a checkpoint
                Path(marker).write_text(str(step))
        self.stopped = stop
        return stop

    # -- resume ----------------------------------------------------------------------------------

    def steps(self) -> list[int]:
        """Steps that have a manifest, oldest first (validity not checked)."""
        if not self.directory.is_dir():
            return []
        found = (_MANIFEST.match(p.name) for p in self.directory.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def verify(self, step: int) -> bytes:
        """The verified bytes of checkpoint ``step``; ``CheckpointError`` if missing or corrupt."""
        manifest_path = self.directory / f"ckpt-{step:010d}.json"
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
            data = (self.directory / manifest["file"]).read_bytes()
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"checkpoint {manifest_path.name} unreadable: {exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        if digest != manifest["sha256"] or len(data) != manifest["size"]:
            raise CheckpointError(
                f"checkpoint {manifest['file']} fails its checksum "
                f"(sha256 {digest[:12]}..., expected {manifest['sha256'][:12]}...)"
            )
        return data

    def latest_valid(self) -> tuple[int, bytes] | None:
        """The newest checkpoint that passes its checksum, skipping corrupt ones."""
        for step in reversed(self.steps()):
            try:
                return step, self.verify(step)
            except CheckpointError as exc:
                print(f"flywheel: skipping checkpoint: {exc}", file=sys.stderr, flush=True)
        return None

    def resume(self, on_load: Callable[[dict[str, Any]], None] | None = None) -> int:
        """Load the newest valid checkpoint into every object; return its step (0 if none).

        Collective: rank 0 picks the checkpoint and every rank loads that same one.
        """
        found = self.latest_valid() if self.ctx.is_main else None
        chosen = found[0] if found else -1
        if _is_dist():
            t = torch.tensor([chosen], dtype=torch.int64)
            dist.broadcast(t, src=0)
            chosen = int(t.item())
        if chosen < 0:
            return 0
        data = found[1] if found and found[0] == chosen else self.verify(chosen)
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        self._load_model(payload["model"])
        self._load_optimizer(payload["optimizer"])
        if self.scheduler is not None and payload["scheduler"] is not None:
            self.scheduler.load_state_dict(payload["scheduler"])
        if self.dataset is not None and payload["data"] is not None:
            self.dataset.load_state_dict(payload["data"])
        rngs = payload["rng"]
        if len(rngs) == self.ctx.world_size:
            set_rng_state(rngs[self.ctx.rank])
        self.extra = dict(payload.get("extra") or {})
        if on_load is not None:
            on_load(payload)
        self._last_save = time.monotonic()
        return int(payload["step"])


__all__ = ["Checkpointer", "rng_state", "set_rng_state"]
