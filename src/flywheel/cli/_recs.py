"""`flywheel recs ...`: The real-time recommender: ingest, train, evaluate, serve."""

import typer

app = typer.Typer(
    help="The real-time recommender: ingest, train, evaluate, serve.", no_args_is_help=True
)
