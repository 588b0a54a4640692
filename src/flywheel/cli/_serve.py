"""`flywheel serve ...`: Model serving: endpoints, canaries, drift."""

import typer

app = typer.Typer(help="Model serving: endpoints, canaries, drift.", no_args_is_help=True)
