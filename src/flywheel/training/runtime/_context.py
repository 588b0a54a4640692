"""``init()``: join the job's process group and learn who this worker is.

Reads what ``torchrun`` and the scheduler put in the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``FLYWHEEL_JOB_SPEC``, ...); works the same under a bare ``torchrun`` and as a
single plain process (world size 1, no process group).

**Why a per-attempt store prefix.** By default torchrun's c10d rendezvous shares one TCPStore
across all restart attempts of a job, and ``init_process_group`` writes its keys there without
any per-attempt prefix; a worker of attempt 2 may then read the address of a peer from dead
attempt 1 and gloo fails with ``connectFullMesh failed ... Connection refused``
(pytorch/pytorch#135712). When the store is shared (``TORCHELASTIC_USE_AGENT_STORE=True``) we
therefore build the process group on ``PrefixStore("flywheel/<run id>/restart<n>", store)``.
That is how single-node jobs run: the agent's store is up before any worker starts, so no rank
waits on a connect backoff. For multi-node jobs the scheduler sets
``TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1``, a fresh store every rendezvous round (the prefix alone
is not enough there: agents count restarts independently). ``benchmarks/training_bench.py``
measures stock torchrun, the prefix alone and scheduled jobs.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

_STOP = {"requested": False}
PREFIX_ENV = "FLYWHEEL_ATTEMPT_STORE_PREFIX"  # "0" turns the per-attempt prefix off (benchmarks)


@dataclass
class JobContext:
    """Who and where this worker is, and what its job asked for."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None
    job_id: str | None = None
    attempt: int = 0
    restart: int = 0
    spec: dict[str, Any] = field(default_factory=dict)
    checkpoint_dir: Path = Path("checkpoints")
    dataset_files: list[str] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, registers and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def hyperparameters(self) -> dict[str, Any]:
        return dict(self.spec.get("hyperparameters") or {})


_CURRENT: dict[str, JobContext] = {}


def current() -> JobContext:
    """The context ``init()`` returned (``init()`` is called on first use)."""
    return _CURRENT.get("ctx") or init()


def _request_stop(_signum: int, _frame: Any) -> None:
    # Preemption or cancel: finish the current step, checkpoint, exit (see should_stop()).
    _STOP["requested"] = True


def _store_for_attempt(world_size: int, timeout: timedelta) -> Any | None:
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    if os.environ.get(PREFIX_ENV, "1") == "0":
        return None
    store = dist.TCPStore(
        host_name=os.environ["MASTER_ADDR"],
        port=int(os.environ["MASTER_PORT"]),
        world_size=world_size,
        is_master=False,
        timeout=timeout,
    )
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "run")
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"flywheel/{run_id}/restart{restart}", store)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def init(
    backend: str | None = None, *, seed: int | None = None, timeout_s: float = 300
) -> JobContext:
    """Join the process group (gloo on CPU, nccl on GPU) and return this worker's context.

    Safe to call twice (returns the same context). Installs a SIGTERM handler so that a
    preemption or cancel lets the training loop checkpoint before exiting (``should_stop``).
    """
    if "ctx" in _CURRENT:
        return _CURRENT["ctx"]
    rank = int(os.environ.get("RANK", "0"))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and bool(os.environ.get("CUDA_VISIBLE_DEVICES", "x"))
    if backend is None:
        backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        timeout = timedelta(seconds=timeout_s)
        store = _store_for_attempt(world_size, timeout)
        if store is not None:
            dist.init_process_group(
                backend, store=store, rank=rank, world_size=world_size, timeout=timeout
            )
        else:
            dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=timeout)
    signal.signal(signal.SIGTERM, _request_stop)
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        _die_with_agent()
    spec = json.loads(os.environ.get("FLYWHEEL_JOB_SPEC") or "{}")
    dataset = os.environ.get("FLYWHEEL_DATASET") or ""
    ctx = JobContext(
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
        device=device,
        backend=backend if world_size > 1 else None,
        job_id=os.environ.get("FLYWHEEL_JOB_ID"),
        attempt=int(os.environ.get("FLYWHEEL_JOB_ATTEMPT", "0")),
        restart=int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")),
        spec=spec,
        checkpoint_dir=Path(os.environ.get("FLYWHEEL_CHECKPOINT_DIR") or "checkpoints"),
        dataset_files=json.loads(dataset) if dataset.startswith("[") else [],
    )
    if seed is not None:
        seed_everything(seed)
    _CURRENT["ctx"] = ctx
    relayed = bool(os.environ.get("FLYWHEEL_METRICS_FILE"))  # the scheduler stores metrics
    if rank == 0 and ctx.job_id and os.environ.get("FLYWHEEL_CONFIG") and not relayed:
        # Import the metadata/tracking stack while the process group warms up, not at the
        # first log_metrics() call, where every other rank would wait for it.
        threading.Thread(target=_warm_reporting, name="flywheel-warmup", daemon=True).start()
    return ctx


def _warm_reporting() -> None:
    try:
        from flywheel.training.runtime import _report

        _report.warm_up()
    except Exception:  # a warm-up only; the real call reports any error
        return


def _die_with_agent() -> None:
    """Exit with the torchrun agent: workers run in sessions of their own and would otherwise
    outlive an agent killed with -9 (and train on beside a requeued attempt)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def should_stop() -> bool:
    """Whether any rank was asked to stop (SIGTERM). Collective: every rank must call it."""
    flag = 1 if _STOP["requested"] else 0
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = torch.tensor([flag], dtype=torch.int32)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        flag = int(t.item())
    return bool(flag)


def wrap(model: torch.nn.Module, strategy: str = "ddp") -> torch.nn.Module:
    """Move ``model`` to this worker's device and make it data-parallel.

    ``"ddp"``: DistributedDataParallel (gradients all-reduced, a full copy per process).
    ``"fsdp"``: fully sharded (parameters, gradients and optimizer state split across ranks),
    for models that do not fit one device. With one process the model is returned as is.
    """
    if strategy not in ("ddp", "fsdp"):
        raise ValueError(f"strategy must be 'ddp' or 'fsdp', got {strategy!r}")
    ctx = current()
    model = model.to(ctx.device)
    if not ctx.distributed:
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def shutdown() -> None:
    """Leave the process group (call at the end of training)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _CURRENT.pop("ctx", None)


def log(message: str) -> None:
    """Print ``message`` from rank 0 only (to stdout, which torchrun captures per rank)."""
    if current().is_main:
        print(message, flush=True)
        sys.stdout.flush()


__all__ = [
    "JobContext",
    "current",
    "init",
    "log",
    "seed_everything",
    "should_stop",
    "shutdown",
    "wrap",
]
