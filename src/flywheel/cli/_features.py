"""`flywheel features ...`: Feature store: definitions, materialization, streaming, online reads."""

import typer

app = typer.Typer(
    help="Feature store: definitions, materialization, streaming, online reads.",
    no_args_is_help=True,
)
