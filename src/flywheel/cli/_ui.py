"""`flywheel ui ...`: what the dashboard keeps of its own (the audit log of its actions)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console

app = typer.Typer(help="The dashboard: the audit log of its actions.", no_args_is_help=True)


@app.command("actions")
def actions(
    target: Annotated[
        str | None, typer.Option(help="Only actions on this target, e.g. endpoint:shop.")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="At most this many.")] = 50,
    config: ConfigOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Actions taken from the dashboard, newest first: who, what, why and the answer's status
    (the same as ``GET /ui/api/actions``)."""
    from flywheel.ui import action_log

    rows = action_log(open_project(config), target=target, limit=limit)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        console.print("no dashboard actions")
        return
    table = Table("id", "at", "actor", "action", "target", "status", "reason")
    for a in rows:
        table.add_row(
            str(a["id"]),
            (a["at"] or "")[:19],
            a["actor"],
            a["action"],
            a["target"],
            str(a["status"]),
            a["reason"],
        )
    console.print(table)
