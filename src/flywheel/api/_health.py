"""Store health probes for ``/healthz``: each returns ``(ok, detail)`` and never raises."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from flywheel.errors import FlywheelError
from flywheel.project import Project

Probe = Callable[[Project], tuple[bool, str]]


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def probe_metadata(project: Project) -> tuple[bool, str]:
    try:
        project.db.ping()
        pending = project.db.pending_revisions()
        heads = project.db.head_revisions()
    except FlywheelError as exc:
        return False, str(exc)
    except Exception as exc:
        return False, _first_line(exc)
    if pending:
        return False, f"schema is behind ({', '.join(sorted(pending))}); run `flywheel db upgrade`"
    return True, f"{project.db.dialect}, schema at {len(heads)} head(s)"


def probe_artifacts(project: Project) -> tuple[bool, str]:
    try:
        backend = project.artifacts.backend
        local = getattr(backend, "root", None)
        if isinstance(local, Path):
            if not os.access(local, os.W_OK):
                return False, f"{local} is not writable"
            return True, str(local)
        backend.exists("blobs/health-probe")
        return True, backend.url
    except Exception as exc:
        return False, _first_line(exc)


def probe_url(url: str) -> tuple[bool, str]:
    """Reachability of a store URL: open a SQLite file's folder, or PING a Redis server."""
    scheme = urlsplit(url).scheme if "://" in url else ""
    try:
        if scheme == "sqlite":
            path = url.split(":///", 1)[1].split("?", 1)[0]
            folder = Path(path).parent
            if not folder.exists():
                return False, f"folder {folder} does not exist; run `flywheel init`"
            if Path(path).exists():
                with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
                    conn.execute("SELECT 1")
            return True, f"sqlite {path}"
        if scheme in ("redis", "rediss"):
            from flywheel._resp import redis_from_url

            client = redis_from_url(url, socket_timeout=1, socket_connect_timeout=1)
            try:
                client.ping()
            finally:
                client.close()
            return True, f"redis {urlsplit(url).hostname}:{urlsplit(url).port or 6379}"
        folder = Path(url[len("file://") :] if scheme == "file" else url)
        if not folder.exists():
            return False, f"folder {folder} does not exist; run `flywheel init`"
        return True, str(folder)
    except Exception as exc:
        return False, _first_line(exc)


PROBES: dict[str, Probe] = {
    "metadata": probe_metadata,
    "artifacts": probe_artifacts,
    "online_store": lambda p: probe_url(p.config.online_store_url),
    "event_log": lambda p: probe_url(p.config.event_log_url),
    "offline_store": lambda p: probe_url(str(p.config.offline_store_path)),
}


def health_report(project: Project) -> dict[str, object]:
    """``{"status": "ok"|"degraded", "stores": {name: {"ok": bool, "detail": str}}}``."""
    stores = {}
    for name, probe in PROBES.items():
        ok, detail = probe(project)
        stores[name] = {"ok": ok, "detail": detail}
    healthy = all(s["ok"] for s in stores.values())
    return {
        "status": "ok" if healthy else "degraded",
        "project": project.config.project,
        "stores": stores,
    }
