"""Running the one ASGI app under uvicorn: what every ``serve`` command shares.

``flywheel up``, ``flywheel serve``, ``flywheel features serve`` and ``flywheel recs serve`` differ
only in the systems they mount; all of them serve ``flywheel.api.create_app_from_env`` (several
worker processes need an import string, and find the project and the systems through
``$FLYWHEEL_CONFIG`` and ``$FLYWHEEL_SYSTEMS``).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from flywheel.api import SYSTEMS_ENV_VAR
from flywheel.config import CONFIG_ENV_VAR, CONFIG_FILENAME
from flywheel.project import Project

APP_FACTORY = "flywheel.api:create_app_from_env"


def run_server(
    project: Project,
    *,
    config: Path | None,
    systems: Sequence[str] | None,
    host: str,
    port: int,
    workers: int,
    log_level: str,
    access_log: bool = True,
    sum_metrics: bool = False,
) -> None:
    """Serve ``systems`` of ``project`` (None: all) with ``workers`` processes until stopped.

    One worker serves the already-open project in this process; several run the app factory.
    With ``sum_metrics``, each worker writes its own Prometheus metrics file and ``/metrics``
    sums them (Prometheus' multiprocess mode).
    """
    import uvicorn

    config_path = Path(config) if config is not None else project.config.root / CONFIG_FILENAME
    os.environ[CONFIG_ENV_VAR] = str(config_path.resolve())
    if workers == 1:
        from flywheel.api import create_server_app

        uvicorn.run(
            create_server_app(project, systems),
            host=host,
            port=port,
            log_level=log_level,
            access_log=access_log,
        )
        return
    if systems is None:
        os.environ.pop(SYSTEMS_ENV_VAR, None)
    else:
        os.environ[SYSTEMS_ENV_VAR] = ",".join(systems)
    if sum_metrics and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        folder = tempfile.mkdtemp(prefix="prometheus-", dir=project.config.state_dir)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    uvicorn.run(
        APP_FACTORY,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=access_log,
    )


__all__ = ["APP_FACTORY", "run_server"]
