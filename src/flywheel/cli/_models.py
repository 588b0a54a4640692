"""`flywheel models ...`: Model registry: versions, stages, aliases, lineage."""

import typer

app = typer.Typer(help="Model registry: versions, stages, aliases, lineage.", no_args_is_help=True)
