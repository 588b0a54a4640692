"""The resource inventory: which nodes exist, with how many CPUs and which GPUs.

With ``training.nodes`` unset in ``flywheel.yaml`` the inventory is this machine: the CPUs this
process may run on (``os.sched_getaffinity``) and the GPUs that ``nvidia-smi`` lists, else
those ``torch.cuda`` sees (only where a driver device exists or torch is already imported).
CPU-only machines simply have no GPUs. Discovery runs once per scheduler start, never at import.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from flywheel.config import TrainingConfig
from flywheel.training._policy import NodeCapacity, Quota

LOCAL_NODE = "local"


def local_cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def discover_gpus(timeout: float = 10.0) -> tuple[int, ...]:
    """GPU indices on this machine: ``nvidia-smi`` first, then ``torch.cuda``; ``()`` if none."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run(
                [smi, "--query-gpu=index", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            ).stdout
            ids = tuple(int(line.strip()) for line in out.splitlines() if line.strip().isdigit())
            if ids:
                return ids
        except (OSError, subprocess.SubprocessError, ValueError):
            pass
    if "torch" not in sys.modules and not Path("/dev/nvidia0").exists():
        return ()  # no driver: do not pay for importing torch just to learn that
    try:
        import torch

        if torch.cuda.is_available():
            return tuple(range(torch.cuda.device_count()))
    except Exception:  # a broken CUDA install means "no GPUs", not a crash
        return ()
    return ()


def inventory_from_config(config: TrainingConfig) -> list[NodeCapacity]:
    """The nodes the scheduler may place jobs on."""
    if not config.nodes:
        return [NodeCapacity(LOCAL_NODE, local_cpu_count(), discover_gpus())]
    nodes = []
    for node in config.nodes:
        gpus = tuple(range(node.gpus)) if isinstance(node.gpus, int) else tuple(node.gpus)
        nodes.append(NodeCapacity(node.name, node.cpus, gpus, node.host))
    return nodes


def quotas_from_config(config: TrainingConfig) -> tuple[dict[str, Quota], Quota]:
    """Per-team quotas and the default for teams not listed."""

    def convert(q: TrainingConfig.Quota) -> Quota:
        return Quota(cpus=q.cpus, gpus=q.gpus, jobs=q.jobs, weight=q.weight)

    return {team: convert(q) for team, q in config.quotas.items()}, convert(config.default_quota)


__all__ = [
    "LOCAL_NODE",
    "discover_gpus",
    "inventory_from_config",
    "local_cpu_count",
    "quotas_from_config",
]
