"""`flywheel runs ...`: Experiment tracking: runs, params and metrics."""

import typer

app = typer.Typer(help="Experiment tracking: runs, params and metrics.", no_args_is_help=True)
