"""`flywheel experiments ...`: A/B tests and bandits: define, assign, report."""

import typer

app = typer.Typer(help="A/B tests and bandits: define, assign, report.", no_args_is_help=True)
