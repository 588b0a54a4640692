"""What every command needs to find its project or its server; imported by each group module."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flywheel.cli._client import DEFAULT_URL, ApiClient
from flywheel.config import CONFIG_ENV_VAR, load_config
from flywheel.project import Project

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help=f"flywheel.yaml to use (default: ${CONFIG_ENV_VAR}, then ./ upward)."
    ),
]
UrlOption = Annotated[
    str, typer.Option("--url", help="Server to act on; the token comes from $FLYWHEEL_TOKEN.")
]


def open_project(config: Path | None = None, *, prepare: bool = True) -> Project:
    """The project for a command: ``--config``, else ``$FLYWHEEL_CONFIG``, else found upward."""
    project = Project(load_config(config))
    if prepare:
        project.prepare()
    return project


def api_client(url: str = DEFAULT_URL) -> ApiClient:
    """A client for a running server (token from ``$FLYWHEEL_TOKEN``)."""
    return ApiClient(url)


__all__ = ["DEFAULT_URL", "ConfigOption", "UrlOption", "api_client", "open_project"]
