"""`flywheel runs ...`: Experiment tracking: runs, params and metrics."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console

app = typer.Typer(help="Experiment tracking: runs, params and metrics.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


@app.command("list")
def list_runs(
    experiment: Annotated[
        str | None, typer.Option("--experiment", "-e", help="Only this experiment.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many runs.")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (for pages).")] = 0,
    status: Annotated[
        str | None, typer.Option(help="Only runs in this status (running, finished, ...).")
    ] = None,
    order_by: Annotated[
        str | None,
        typer.Option("--order-by", help="Sort by a metric's last value: KEY, or -KEY for desc."),
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Runs, newest first (or by a metric), with status and latest metrics."""
    from flywheel.tracking import Tracker

    runs = Tracker(open_project(config)).list_runs(
        experiment, limit, status=status, order_by=order_by, offset=offset
    )
    if as_json:
        print(json.dumps([r.to_dict() for r in runs], indent=2))
        return
    table = Table("run", "experiment", "name", "status", "started", "metrics (last)")
    table.columns[0].no_wrap = True
    for r in runs:
        metrics = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(r.latest_metrics.items())[:6])
        table.add_row(
            r.id, r.experiment, r.name, r.status, f"{r.start_time:%Y-%m-%d %H:%M:%S}", metrics
        )
    console.print(table)


@app.command("experiments")
def list_experiments(config: ConfigOption = None) -> None:
    """Experiments and how many runs each has."""
    from flywheel.tracking import Tracker

    table = Table("experiment", "runs", "created")
    for e in Tracker(open_project(config)).list_experiments():
        table.add_row(e["name"], str(e["runs"]), e["created_at"][:19])
    console.print(table)


@app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One run: status, params, tags, metrics (last/min/max/count), artifacts, system info."""
    from flywheel.tracking import Tracker

    info = Tracker(open_project(config)).get_run(run_id)
    if as_json:
        print(json.dumps(info.to_dict(), indent=2))
        return
    ended = f"{info.end_time:%Y-%m-%d %H:%M:%S}" if info.end_time else "-"
    console.print(f"[bold]run {info.id}[/] ({info.name}) in experiment [bold]{info.experiment}[/]")
    console.print(
        f"status {info.status}; started {info.start_time:%Y-%m-%d %H:%M:%S}; ended {ended}"
    )
    console.print(f"user {info.user}; git commit {info.git_commit or '-'}")
    if info.params:
        table = Table("param", "value")
        for k, v in sorted(info.params.items()):
            table.add_row(k, v)
        console.print(table)
    if info.tags:
        console.print("tags: " + ", ".join(f"{k}={v}" for k, v in sorted(info.tags.items())))
    if info.metrics:
        table = Table("metric", "last", "step", "min", "max", "points")
        for k, m in sorted(info.metrics.items()):
            table.add_row(k, _fmt(m.last), str(m.last_step), _fmt(m.min), _fmt(m.max), str(m.count))
        console.print(table)
    if info.artifacts:
        table = Table("artifact", "bytes", "sha256")
        for a in info.artifacts:
            table.add_row(a.name, str(a.size), a.sha256[:16])
        console.print(table)


@app.command("compare")
def compare(
    run_ids: Annotated[list[str], typer.Argument(help="Two or more run ids.")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Params and last/best metrics of several runs side by side."""
    from flywheel.tracking import Tracker

    table_data = Tracker(open_project(config)).compare_runs(run_ids)
    if as_json:
        print(json.dumps(table_data, indent=2))
        return
    table = Table("", *[f"{r['name']}\n{r['id'][:12]}" for r in table_data["runs"]])
    for key, values in table_data["params"].items():
        table.add_row(f"param {key}", *[v if v is not None else "" for v in values])
    for key, summaries in table_data["metrics"].items():
        table.add_row(f"{key} (last)", *[_fmt(s["last"]) if s else "" for s in summaries])
        table.add_row(
            f"{key} (min / max)",
            *[f"{_fmt(s['min'])} / {_fmt(s['max'])}" if s else "" for s in summaries],
        )
    console.print(table)


@app.command("metric")
def metric(
    run_id: Annotated[str, typer.Argument(help="Run id.")],
    key: Annotated[str, typer.Argument(help="Metric key.")],
    since: Annotated[
        float | None, typer.Option(min=0, help="Only points logged at or after (Unix seconds).")
    ] = None,
    until: Annotated[
        float | None, typer.Option(min=0, help="Only points logged at or before (Unix seconds).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Every point of one metric (step, value) as CSV (optionally of a time range)."""
    from flywheel.tracking import Tracker

    points = Tracker(open_project(config)).metric_history(run_id, key, since=since, until=until)
    print("step,value,timestamp")
    for p in points:
        print(f"{p.step},{p.value!r},{p.timestamp:.6f}")
