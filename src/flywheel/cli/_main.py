"""The root ``flywheel`` command and the commands of the shared ground."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Annotated

import click
import typer

import flywheel
from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console, print_error
from flywheel.config import CONFIG_FILENAME, DEFAULT_CONFIG_TEXT
from flywheel.errors import FlywheelError

app = typer.Typer(
    name="flywheel",
    help="Flywheel: features, training, registry, serving, experiments and recommendations.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
tokens_app = typer.Typer(help="API tokens: create, list, revoke.", no_args_is_help=True)
db_app = typer.Typer(help="The metadata database: migrate and inspect.", no_args_is_help=True)
app.add_typer(tokens_app, name="tokens")
app.add_typer(db_app, name="db")

# Sub-command group name -> module holding its ``app``, in the order `flywheel --help` lists them.
SYSTEM_GROUPS: dict[str, str] = {
    "features": "flywheel.cli._features",
    "runs": "flywheel.cli._runs",
    "models": "flywheel.cli._models",
    "jobs": "flywheel.cli._jobs",
    "scheduler": "flywheel.cli._scheduler",
    "serve": "flywheel.cli._serve",
    "llm": "flywheel.cli._llm",
    "experiments": "flywheel.cli._experiments",
    "recs": "flywheel.cli._recs",
    "traces": "flywheel.cli._traces",
    "ui": "flywheel.cli._ui",
}
for _name, _module in SYSTEM_GROUPS.items():
    app.add_typer(importlib.import_module(_module).app, name=_name)
importlib.import_module("flywheel.cli._agent").register(app)  # `flywheel ask`, `flywheel mcp`


@app.command()
def version() -> None:
    """Print Flywheel's version."""
    console.print(f"flywheel {flywheel.__version__}")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Project folder (created if missing).")] = Path(
        "."
    ),
    project: Annotated[
        str | None, typer.Option(help="Project name (default: folder name).")
    ] = None,
    force: Annotated[bool, typer.Option(help="Overwrite an existing flywheel.yaml.")] = False,
) -> None:
    """Create flywheel.yaml (commented defaults), the .flywheel/ folders and the metadata schema."""
    directory = directory.expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    config_file = directory / CONFIG_FILENAME
    name = project or "".join(c if c.isalnum() or c in "_.-" else "-" for c in directory.name)
    name = name.strip("-.") or "flywheel"
    if config_file.exists() and not force:
        console.print(f"{config_file} exists; keeping it (use --force to overwrite)")
    else:
        tmp = config_file.with_suffix(".yaml.tmp")
        tmp.write_text(DEFAULT_CONFIG_TEXT.format(project=name), encoding="utf-8")
        tmp.replace(config_file)
        console.print(f"wrote {config_file}")
    proj = open_project(config_file)
    gitignore = directory / ".flywheel" / ".gitignore"
    if not gitignore.exists():
        gitignore.write_text("*\n", encoding="utf-8")
    console.print(f"created {proj.config.state_dir} (metadata schema up to date)")
    console.print("next: [bold]flywheel up[/] and open http://127.0.0.1:8000/docs")


@app.command()
def up(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default from config).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from config).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve everything (features, inference, recommendations, UI, /metrics) in one process."""
    from flywheel.cli._server import run_server

    project = open_project(config)
    host = host or project.config.server.host
    port = port or project.config.server.port
    console.print(
        f"flywheel {flywheel.__version__} serving project [bold]{project.config.project}[/] "
        f"on http://{host}:{port}  (docs: /docs, health: /healthz, metrics: /metrics)"
    )
    run_server(
        project,
        config=config,
        systems=None,
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


@tokens_app.command("create")
def tokens_create(
    role: Annotated[str, typer.Option(help="reader, writer or admin.")] = "writer",
    name: Annotated[str, typer.Option(help="A label to recognise the token by.")] = "",
    config: ConfigOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the token.")] = False,
) -> None:
    """Create an API token. The token is printed once; only its hash is stored."""
    from flywheel.auth import TokenStore

    info, token = TokenStore(open_project(config).db).create(role, name)
    if quiet:
        print(token)
        return
    console.print(f"created {info.role.name} token {info.name!r} (id {info.id}):")
    print(token)
    console.print(f"use it with: export FLYWHEEL_TOKEN={token[:12]}...")


@tokens_app.command("list")
def tokens_list(config: ConfigOption = None) -> None:
    """List tokens (never their secrets)."""
    from rich.table import Table

    from flywheel.auth import TokenStore

    table = Table("id", "name", "role", "created", "revoked")
    for t in TokenStore(open_project(config).db).list():
        table.add_row(
            t.id,
            t.name,
            t.role.name,
            f"{t.created_at:%Y-%m-%d %H:%M}",
            f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "",
        )
    console.print(table)


@tokens_app.command("whoami")
def tokens_whoami(
    token: Annotated[
        str | None, typer.Argument(help="The token (default: $FLYWHEEL_TOKEN).", show_default=False)
    ] = None,
    config: ConfigOption = None,
) -> None:
    """The name and role of a token (as ``GET /ui/api/whoami`` answers for it)."""
    import os

    from flywheel.auth import TokenStore
    from flywheel.errors import AuthError

    secret = token or os.environ.get("FLYWHEEL_TOKEN", "")
    if not secret:
        raise AuthError("token: give one, or set FLYWHEEL_TOKEN")
    principal = TokenStore(open_project(config).db).verify(secret)
    if principal is None:
        raise AuthError("token: unknown or revoked")
    print(json.dumps({"name": principal.name, "role": principal.role.name}))


@tokens_app.command("revoke")
def tokens_revoke(token_id: str, config: ConfigOption = None) -> None:
    """Revoke a token by id; servers stop accepting it within a few seconds."""
    from flywheel.auth import TokenStore

    TokenStore(open_project(config).db).revoke(token_id)
    console.print(f"revoked token {token_id}")


@db_app.command("upgrade")
def db_upgrade(config: ConfigOption = None) -> None:
    """Apply every pending schema migration (safe to run from several processes)."""
    project = open_project(config, prepare=False)
    project.db.upgrade()
    console.print(f"metadata schema at {sorted(project.db.current_revisions())}")


@db_app.command("status")
def db_status(config: ConfigOption = None) -> None:
    """Show the schema revisions the database is at and the ones this version ships."""
    project = open_project(config, prepare=False)
    current, heads = project.db.current_revisions(), project.db.head_revisions()
    console.print(f"database: {project.db!r}")
    console.print(f"current:  {sorted(current) or 'empty'}")
    console.print(f"shipped:  {sorted(heads)}")
    pending = project.db.pending_revisions()
    if pending:
        console.print(f"pending:  {sorted(pending)}; run `flywheel db upgrade`")
    else:
        console.print("up to date")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn deliberate errors into one line and exit code 1."""
    command = typer.main.get_command(app)
    try:
        command.main(args=argv, prog_name="flywheel", standalone_mode=False)
    except click.exceptions.Abort:
        print_error("aborted")
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except FlywheelError as exc:
        print_error(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
