"""`flywheel features ...`: Feature store: definitions, materialization, streaming, online reads."""

from __future__ import annotations

import json
import signal
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console, progress_bar

app = typer.Typer(
    help="Feature store: definitions, materialization, streaming, online reads.",
    no_args_is_help=True,
)

RepoArg = Annotated[Path, typer.Argument(help="A feature repo: a .py file or a folder of them.")]
ViewsOption = Annotated[
    list[str] | None, typer.Option("--view", "-v", help="Only these views (repeatable).")
]


def _store(config: Path | None) -> Any:
    from flywheel.features import FeatureStore

    return FeatureStore(open_project(config))


def _when(text: str) -> datetime:
    from flywheel.features import FeatureStoreError

    if text == "now":
        return datetime.now(UTC)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FeatureStoreError(f"{text!r} is not an ISO-8601 time (or 'now')") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _plan(repo: Path, config: Path | None, prune: bool, apply: bool) -> None:
    from flywheel.features import load_definitions

    store = _store(config)
    objects = load_definitions(repo)
    plan = store.apply(objects, prune=prune) if apply else store.plan(objects, prune=prune)
    for line in plan.render().splitlines():
        style = {"+": "green", "~": "yellow", "-": "red"}.get(line.strip()[:1], "")
        console.print(f"[{style}]{line}[/]" if style else line)


@app.command("plan")
def plan_cmd(
    repo: RepoArg,
    config: ConfigOption = None,
    prune: Annotated[bool, typer.Option(help="Remove catalog objects not in the repo.")] = True,
) -> None:
    """Show what `apply` would add, change and remove (nothing is written)."""
    _plan(repo, config, prune, apply=False)


@app.command("apply")
def apply_cmd(
    repo: RepoArg,
    config: ConfigOption = None,
    prune: Annotated[bool, typer.Option(help="Remove catalog objects not in the repo.")] = True,
) -> None:
    """Apply the definitions of a feature repo and print the plan, like `terraform apply`."""
    _plan(repo, config, prune, apply=True)


@app.command("list")
def list_cmd(
    config: ConfigOption = None,
    kind: Annotated[str | None, typer.Option(help="Only this kind, e.g. feature_view.")] = None,
) -> None:
    """List catalog objects with their versions, owners and update times."""
    from rich.table import Table

    table = Table()
    for col in ("kind", "name", "version", "owner", "description", "updated"):
        table.add_column(col, overflow="fold", max_width=30 if col == "description" else None)
    for e in _store(config).list_definitions(kind):
        table.add_row(
            e.kind,
            e.name,
            str(e.version),
            e.owner,
            e.description,
            f"{e.updated_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@app.command("describe")
def describe_cmd(name: str, config: ConfigOption = None) -> None:
    """Schema, versions, history, freshness and lineage of a catalog object (JSON)."""
    console.print_json(json.dumps(_store(config).describe(name), default=str))


def _run_materialization(fn: Any, *args: Any) -> None:
    with progress_bar() as progress:
        tasks: dict[str, Any] = {}

        def update(view: str, done: int, total: int) -> None:
            if view not in tasks:
                tasks[view] = progress.add_task(view, total=max(total, 1))
            progress.update(tasks[view], completed=done if total else 1)

        report = fn(*args, progress=update)
    for v in report.views:
        console.print(
            f"  {v.view}: {v.rows:,} rows [{v.start:%Y-%m-%d %H:%M} .. {v.end:%Y-%m-%d %H:%M})"
        )
    console.print(report.summary())


@app.command("materialize")
def materialize_cmd(
    start: Annotated[str, typer.Argument(help="ISO-8601 start (inclusive).")],
    end: Annotated[str, typer.Argument(help="ISO-8601 end (exclusive), or 'now'.")],
    views: ViewsOption = None,
    config: ConfigOption = None,
) -> None:
    """Load the latest value per entity in [START, END) into the online store."""
    store = _store(config)
    _run_materialization(store.materialize, _when(start), _when(end), views)


@app.command("materialize-incremental")
def materialize_incremental_cmd(
    end: Annotated[str, typer.Argument(help="ISO-8601 end (exclusive), or 'now'.")] = "now",
    views: ViewsOption = None,
    config: ConfigOption = None,
) -> None:
    """Materialize each view from its watermark up to END."""
    store = _store(config)
    _run_materialization(store.materialize_incremental, _when(end), views)


def _read_rows(path: Path) -> Any:
    import pandas as pd

    from flywheel.features import FeatureStoreError

    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pd.read_parquet(path)
    if suffix == ".csv":
        return pd.read_csv(path)
    text = path.read_text(encoding="utf-8")
    if suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FeatureStoreError(f"{path}: not JSON: {exc}") from None
    return data if isinstance(data, list) else [data]


@app.command("push")
def push_cmd(
    stream: str,
    rows: Annotated[Path, typer.Argument(help="Rows as .json (list), .jsonl, .csv or .parquet.")],
    config: ConfigOption = None,
) -> None:
    """Validate rows against the stream's schema and append them (all or nothing)."""
    result = _store(config).push(stream, _read_rows(rows))
    console.print(f"pushed {result.count} event(s) to {stream}")


@app.command("stream")
def stream_cmd(
    streams: Annotated[
        list[str] | None, typer.Option("--stream", "-s", help="Only these streams (repeatable).")
    ] = None,
    consumer: Annotated[
        str | None,
        typer.Option(
            help="Consumer name (default: HOST-0, the same after a restart, so it resumes what it "
            "left unacknowledged). Give each processor on one host its own name."
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Events per batch.")] = 2000,
    until_idle: Annotated[
        bool,
        typer.Option(help="Exit when nothing is new or pending for the group (any consumer)."),
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Run a stream processor: event log -> windowed aggregations in the online store.

    Start several (each with its own --consumer) to share the streams; Ctrl-C stops cleanly.
    """
    from flywheel.features import default_consumer_name

    store = _store(config)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    proc = store.processor(
        streams, consumer=consumer or default_consumer_name(), batch_size=batch_size
    )
    console.print(f"stream processor {proc.consumer} running (Ctrl-C to stop)")
    try:
        stats = proc.run(stop, until_idle=until_idle)
    except KeyboardInterrupt:
        stats = proc.stats
    console.print(
        f"processed {stats.events:,} events: {stats.applied:,} applied, "
        f"{stats.duplicates:,} duplicates skipped, {stats.late:,} too late"
    )


@app.command("serve")
def serve_cmd(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address (default from config).")] = None,
    port: Annotated[int, typer.Option(help="Port.")] = 8001,
    workers: Annotated[int, typer.Option(min=1, help="Server processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve only the feature routes (online reads, push, catalog, /metrics)."""
    from flywheel.cli._server import run_server

    project = open_project(config)
    host = host or project.config.server.host
    console.print(f"feature server on http://{host}:{port} with {workers} worker(s)")
    run_server(
        project,
        config=config,
        systems=["features"],
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )
