"""Environment facts (shared ground): who runs this, at which git commit, on what host, at which
distributed rank. Tracking records them on a run; the registry records the actor of a stage
change and the code commit of a version.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any


def git_commit(path: str | Path | None = None) -> tuple[str | None, bool]:
    """The HEAD commit of the git checkout holding ``path`` (default: cwd), and whether it is dirty.

    ``(None, False)`` outside a checkout or when git is missing.
    """
    cwd = str(path or os.getcwd())
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=5
        )
        if head.returncode != 0:
            return None, False
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return head.stdout.strip(), bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, False


def current_user() -> str:
    """The login name of this process's user (the uid as text when it has no name)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def distributed_rank() -> tuple[int, int]:
    """``(rank, world_size)`` under ``torch.distributed`` or a ``torchrun`` environment.

    torch is only consulted when the caller already imported it (importing it costs seconds).
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None:
        try:
            if dist.is_available() and dist.is_initialized():
                return int(dist.get_rank()), int(dist.get_world_size())
        except (RuntimeError, ValueError):
            pass
    try:
        return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 0, 1


def system_info() -> dict[str, Any]:
    """Host, OS, Python and the versions of the ML libraries already imported."""
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "pid": os.getpid(),
        "argv": sys.argv[:20],
    }
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        info["memory_gib"] = round(pages * page_size / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    packages = {}
    for module in ("numpy", "torch", "tensorflow", "sklearn", "lightgbm", "onnxruntime"):
        mod = sys.modules.get(module)
        version = getattr(mod, "__version__", None) if mod is not None else None
        if isinstance(version, str):
            packages[module] = version
    info["packages"] = packages
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(RuntimeError, AttributeError):
            info["cuda_devices"] = int(torch.cuda.device_count())
    return info


__all__ = ["current_user", "distributed_rank", "git_commit", "system_info"]
