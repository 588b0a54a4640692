"""`flywheel traces ...`: search stored traces and show one as a tree."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.tree import Tree

from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console

app = typer.Typer(
    help="Traces: OpenTelemetry spans stored by Flywheel (search, show).", no_args_is_help=True
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@app.command("search")
def search(
    service: Annotated[str | None, typer.Option(help="service.name of a span.")] = None,
    name: Annotated[str | None, typer.Option(help="Span name, e.g. invoke_agent.")] = None,
    start: Annotated[
        str | None, typer.Option(help="Spans starting at/after (ISO-8601 or Unix seconds).")
    ] = None,
    end: Annotated[
        str | None, typer.Option(help="Spans starting at/before (ISO-8601 or Unix seconds).")
    ] = None,
    min_duration_ms: Annotated[float | None, typer.Option(min=0, help="Slowest first.")] = None,
    max_duration_ms: Annotated[float | None, typer.Option(min=0)] = None,
    attr: Annotated[
        list[str] | None,
        typer.Option("--attr", "-a", help="KEY=VALUE or KEY (repeat), e.g. gen_ai.tool.name=x."),
    ] = None,
    errors_only: Annotated[bool, typer.Option("--errors", help="Only failed spans.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 20,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Traces holding a span that matches every filter, newest first, with token totals."""
    from flywheel.telemetry import TraceStore, build_query

    query = build_query(
        service=service,
        name=name,
        start=start,
        end=end,
        min_duration_ms=min_duration_ms,
        max_duration_ms=max_duration_ms,
        attr=attr,
        errors_only=errors_only,
        limit=limit,
    )
    traces = TraceStore(open_project(config).db).search(query)
    if as_json:
        print(json.dumps([t.to_dict() for t in traces], indent=2))
        return
    table = Table("trace", "root", "service", "start (UTC)", "ms", "spans", "errors", "tokens")
    table.columns[0].no_wrap = True
    for t in traces:
        d = t.to_dict()
        tokens = f"{t.input_tokens}/{t.output_tokens}" if t.input_tokens or t.output_tokens else ""
        table.add_row(
            t.trace_id,
            t.root_name or "(root not stored)",
            t.root_service or "",
            d["start_time"][:23].replace("T", " "),
            f"{t.duration_ms:.1f}",
            str(t.span_count),
            str(t.error_count) if t.error_count else "",
            tokens,
        )
    console.print(table)
    if not traces:
        console.print("no trace matches; widen the filters or check `telemetry:` in flywheel.yaml")


def _label(span: dict[str, Any], offset_ms: float) -> str:
    status = " [red]error[/]" if span["status"] == "error" else ""
    attrs = span["attributes"]
    shown = ", ".join(
        f"{k}={v}" for k, v in attrs.items() if k.startswith(("gen_ai.", "flywheel."))
    )
    return (
        f"[bold]{span['name']}[/] [dim]{span['service']}[/] "
        f"+{offset_ms:.1f} ms, {span['duration_ms']:.1f} ms{status}"
        + (f"\n[dim]{shown[:300]}[/]" if shown else "")
    )


@app.command("show")
def show(
    trace_id: Annotated[str, typer.Argument(help="Trace id (32 hex digits).")],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """One trace as a tree of spans: timing, status and GenAI/Flywheel attributes."""
    from flywheel.telemetry import TraceStore

    summary, spans = TraceStore(open_project(config).db).get_trace(trace_id)
    data = [s.to_dict() for s in spans]
    if as_json:
        print(json.dumps({"trace": summary.to_dict(), "spans": data}, indent=2))
        return
    console.print(
        f"trace [bold]{summary.trace_id}[/]: {summary.span_count} spans, "
        f"{summary.duration_ms:.1f} ms, tokens in/out {summary.input_tokens}/"
        f"{summary.output_tokens}"
    )
    children: dict[str | None, list[dict[str, Any]]] = {}
    known = {s["span_id"] for s in data}
    for s in data:
        parent = s["parent_span_id"] if s["parent_span_id"] in known else None
        children.setdefault(parent, []).append(s)
    tree = Tree(f"[dim]{summary.trace_id}[/]")

    def add(node: Tree, parent: str | None) -> None:
        for s in children.get(parent, []):
            add(node.add(_label(s, (s["start_ns"] - summary.start_ns) / 1e6)), s["span_id"])

    add(tree, None)
    console.print(tree)
