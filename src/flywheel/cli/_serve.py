"""`flywheel serve ...`: the inference server, endpoints, canaries, drift.

``flywheel serve`` alone runs the serving app (Open Inference Protocol under ``/v2``, the control
API under ``/serving``, ``/metrics``) with ``--workers`` processes. The other commands act on the
project's metadata store directly; running servers pick changes up within a poll interval.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console
from flywheel.errors import FlywheelError

app = typer.Typer(
    help="Model serving: the V2 inference server, endpoints, canaries, drift.",
    invoke_without_command=True,
)


@app.callback()
def serve(
    ctx: typer.Context,
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address to bind (default from config).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default from config).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Server processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Run the inference server alone (`flywheel serve --workers 4`), or manage endpoints."""
    if ctx.invoked_subcommand is not None:
        return
    from flywheel.cli._server import run_server
    from flywheel.serving import limit_native_threads

    project = open_project(config)
    if project.config.serving.native_threads is not None:
        limit_native_threads(project.config.serving.native_threads)
    host = host or project.config.server.host
    port = port or project.config.server.port
    console.print(
        f"flywheel serving project [bold]{project.config.project}[/] on http://{host}:{port} "
        f"with {workers} worker(s)  (V2: /v2, OpenAI: /v1, control: /serving, metrics: /metrics)"
    )
    run_server(
        project,
        config=config,
        systems=["serving", "llm"],
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
        access_log=False,
        sum_metrics=True,
    )


def _print_json(data: Any) -> None:
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())


def _show(ep: dict[str, Any]) -> None:
    from rich.markup import escape

    routes = ", ".join(f"v{r['version']}:{r['weight']:g}" for r in ep["effective_routes"])
    line = f"[bold]{ep['name']}[/] -> {ep['model']} " + escape(f"[{routes}]")
    if ep.get("shadow"):
        line += f" shadow v{ep['shadow']['version']} ({ep['shadow']['share']:.0%})"
    console.print(line + f" (revision {ep['revision']})")
    canary = ep.get("canary")
    if canary:
        console.print(
            f"  canary v{canary['candidate']} over v{canary['baseline']}: {canary['state']} at "
            f"{canary['weight']}% (steps {canary['steps']}, {canary['step_requests']} requests "
            f"per step, max error rate {canary['max_error_rate']}, "
            f"max p99 {canary['max_p99_ms']} ms)"
        )
        if canary.get("reason"):
            console.print(f"  reason: {canary['reason']}")


@app.command()
def deploy(
    endpoint: Annotated[str, typer.Argument(help="Endpoint name (served at /v2/models/NAME).")],
    version: Annotated[int, typer.Option(help="Model version to deploy.")],
    model: Annotated[str | None, typer.Option(help="Model name (default: the endpoint's).")] = None,
    canary: Annotated[
        str | None, typer.Option(help="Traffic steps in percent, e.g. 5,25,50,100.")
    ] = None,
    step_requests: Annotated[int, typer.Option(help="Candidate requests per step.")] = 100,
    max_error_rate: Annotated[float, typer.Option(help="Highest 5xx share per step.")] = 0.01,
    max_p99_ms: Annotated[float | None, typer.Option(help="Highest p99 latency per step.")] = None,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Deploy a version to an endpoint: at once, or as a canary with automatic rollback."""
    from flywheel.serving import deploy as do_deploy

    ep = do_deploy(
        open_project(config),
        endpoint,
        version=version,
        model=model,
        canary=canary,
        step_requests=step_requests,
        max_error_rate=max_error_rate,
        max_p99_ms=max_p99_ms,
        actor=os.environ.get("USER", "cli"),
    ).to_dict()
    if as_json:
        _print_json(ep)
        return
    _show(ep)


@app.command()
def split(
    endpoint: str,
    weights: Annotated[list[str], typer.Argument(help="VERSION=WEIGHT pairs, e.g. 3=90 4=10.")],
    model: Annotated[str | None, typer.Option(help="Model name (default: the endpoint's).")] = None,
    shadow: Annotated[
        str | None, typer.Option(help="Mirror to a version: VERSION or VERSION:SHARE.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Create or replace an endpoint with a weighted split of versions (sticky by x-routing-key)."""
    from flywheel.serving import EndpointStore, set_routes

    project = open_project(config)
    routes: list[tuple[int, float]] = []
    for item in weights:
        version, sep, weight = item.partition("=")
        try:
            routes.append((int(version), float(weight) if sep else 1.0))
        except ValueError:
            raise FlywheelError(
                f"weight {item!r} must look like VERSION=WEIGHT, e.g. 3=90"
            ) from None
    if model is None:
        current = EndpointStore(project.db).find(endpoint)
        model = current.model if current is not None else endpoint
    mirror = None
    if shadow:
        v, _, share = shadow.partition(":")
        try:
            mirror = (int(v), float(share) if share else 1.0)
        except ValueError:
            raise FlywheelError(
                f"--shadow {shadow!r} must look like VERSION or VERSION:SHARE"
            ) from None
    ep = set_routes(
        project,
        endpoint,
        model=model,
        routes=routes,
        shadow=mirror,
        actor=os.environ.get("USER", "cli"),
    )
    _show(ep.to_dict())


@app.command()
def shadow(
    endpoint: str,
    version: Annotated[int | None, typer.Option(help="Version to mirror to.")] = None,
    share: Annotated[float, typer.Option(help="Share of requests mirrored (0..1].")] = 1.0,
    off: Annotated[bool, typer.Option("--off", help="Stop mirroring.")] = False,
    config: ConfigOption = None,
) -> None:
    """Mirror a share of an endpoint's traffic to a version; responses are never affected."""
    from flywheel.serving import set_shadow

    if not off and version is None:
        raise FlywheelError("give --version V (and --share), or --off")
    ep = set_shadow(
        open_project(config), endpoint, version=None if off else version, share=share,
        actor=os.environ.get("USER", "cli"),
    )  # fmt: skip
    _show(ep.to_dict())


@app.command()
def rollback(
    endpoint: str,
    reason: Annotated[str, typer.Option(help="Why (recorded in the endpoint's events).")] = "",
    config: ConfigOption = None,
) -> None:
    """Abort the endpoint's running or paused canary: all traffic back to the baseline version."""
    from flywheel.serving import rollback as do_rollback

    ep = do_rollback(
        open_project(config), endpoint, reason=reason, actor=os.environ.get("USER", "cli")
    )
    _show(ep.to_dict())


@app.command()
def pause(
    endpoint: str,
    reason: Annotated[str, typer.Option(help="Why (recorded in the endpoint's events).")] = "",
    config: ConfigOption = None,
) -> None:
    """Pause the endpoint's running canary: its share stays, its gates stop until resumed."""
    from flywheel.serving import pause as do_pause

    ep = do_pause(
        open_project(config), endpoint, reason=reason, actor=os.environ.get("USER", "cli")
    )
    _show(ep.to_dict())


@app.command()
def resume(
    endpoint: str,
    reason: Annotated[str, typer.Option(help="Why (recorded in the endpoint's events).")] = "",
    config: ConfigOption = None,
) -> None:
    """Resume the endpoint's paused canary at the step it was paused in."""
    from flywheel.serving import resume as do_resume

    ep = do_resume(
        open_project(config), endpoint, reason=reason, actor=os.environ.get("USER", "cli")
    )
    _show(ep.to_dict())


@app.command()
def endpoints(
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """List endpoints with their routes, shadow and canary state."""
    from flywheel.serving import EndpointStore

    items = [ep.to_dict() for ep in EndpointStore(open_project(config).db).list()]
    if as_json:
        _print_json(items)
        return
    if not items:
        console.print("no endpoints; models are served under their name by their production stage")
    for ep in items:
        _show(ep)


@app.command()
def status(
    endpoint: str,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """One endpoint and its recent events (deploys, canary steps, rollbacks and their reasons)."""
    from flywheel.serving import describe

    data = describe(open_project(config), endpoint)
    if as_json:
        _print_json(data)
        return
    _show(data)
    for event in data["events"]:
        reason = event["detail"].get("reason", "")
        console.print(f"  {event['at'][:19]}  {event['kind']:<16} {event['actor']:<20} {reason}")


@app.command()
def delete(endpoint: str, config: ConfigOption = None) -> None:
    """Delete an endpoint (its name falls back to the model's production version)."""
    from flywheel.serving import EndpointStore

    EndpointStore(open_project(config).db).delete(endpoint, actor=os.environ.get("USER", "cli"))
    console.print(f"deleted endpoint {endpoint}")


@app.command()
def history(
    endpoint: str,
    since: Annotated[float | None, typer.Option(min=0, help="From (Unix seconds).")] = None,
    until: Annotated[float | None, typer.Option(min=0, help="To (Unix seconds).")] = None,
    buckets: Annotated[int, typer.Option(min=1, max=500, help="Intervals.")] = 12,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Logged requests and p99 latency per version over time (from the prediction log)."""
    from datetime import UTC, datetime

    from flywheel.serving import EndpointStore, traffic_history

    project = open_project(config)
    EndpointStore(project.db).get(endpoint)
    data = traffic_history(project, endpoint, since=since, until=until, buckets=buckets)
    if as_json:
        _print_json(data)
        return
    if not data["versions"]:
        console.print(f"endpoint {endpoint}: no logged requests in this range")
    for version, series in data["versions"].items():
        console.print(f"v{version}:")
        for t, n, p99 in zip(data["times"], series["requests"], series["p99_ms"], strict=True):
            at = datetime.fromtimestamp(t, UTC).isoformat(timespec="seconds")
            console.print(f"  {at}  {n:>7} requests  p99 {'–' if p99 is None else f'{p99:.1f} ms'}")


@app.command()
def drift(
    endpoint: str,
    window: Annotated[str, typer.Option(help="How far back to look: 30m, 1h, 7d.")] = "1h",
    reference: Annotated[
        Path | None, typer.Option(help="Parquet file/folder to compare against.")
    ] = None,
    notify: Annotated[
        bool, typer.Option(help="On drift: record an alert, call the webhook.")
    ] = True,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Drift of an endpoint's logged inputs and predictions (PSI, chi-square, KS) with a verdict."""
    from rich.table import Table

    from flywheel.serving import alert, drift_report

    project = open_project(config)
    report = drift_report(project, endpoint, window=window, reference=reference)
    sent = alert(project, report) if notify else False
    if as_json:
        _print_json({**report.to_dict(), "webhook_sent": sent})
        return
    console.print(
        f"endpoint {endpoint}: {report.current_rows} rows in the last {window} vs "
        f"{report.reference_rows} rows of {report.reference}"
    )
    table = Table("feature", "kind", "PSI", "KS", "chi2", "p-value", "drift")
    for f in report.features:
        table.add_row(
            f.feature,
            f.kind,
            "" if f.psi is None else f"{f.psi:.3f}",
            "" if f.ks_statistic is None else f"{f.ks_statistic:.3f}",
            "" if f.chi2_statistic is None else f"{f.chi2_statistic:.1f}",
            f"{f.p_value:.2g}",
            "[red]yes[/]" if f.drifted else "no",
        )
    console.print(table)
    console.print(f"verdict: [bold]{report.verdict}[/]" + (" (webhook notified)" if sent else ""))
