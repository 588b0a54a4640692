"""`flywheel jobs ...`: Training jobs: submit, watch, cancel, tune."""

import typer

app = typer.Typer(help="Training jobs: submit, watch, cancel, tune.", no_args_is_help=True)
