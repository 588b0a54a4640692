"""`flywheel scheduler ...`: The training scheduler."""

import typer

app = typer.Typer(help="The training scheduler.", no_args_is_help=True)
