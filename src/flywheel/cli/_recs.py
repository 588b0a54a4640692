"""`flywheel recs ...`: The real-time recommender: ingest, train, evaluate, serve."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from flywheel.cli._context import DEFAULT_URL, ConfigOption, UrlOption, api_client, open_project
from flywheel.cli._output import console, progress_bar

if TYPE_CHECKING:
    from flywheel.project import Project
    from flywheel.recsys import LoadedTransactions

app = typer.Typer(
    help="The real-time recommender: ingest, train, evaluate, serve.", no_args_is_help=True
)


def _evaluate_rolling(
    lines: Any,
    cutoffs: str,
    text: str,
    cache: Path,
    ials: bool,
    two_tower: bool,
    as_json: bool,
    lab: bool = True,
) -> None:
    import pandas as pd

    from flywheel.recsys import RecsysError, evaluate_rolling

    dates = [c.strip() for c in cutoffs.split(",") if c.strip()]
    try:
        parsed = [pd.Timestamp(c) for c in dates]
    except ValueError as exc:
        raise RecsysError(f"--cutoffs: {exc}") from exc
    if not parsed or parsed != sorted(parsed):
        raise RecsysError("--cutoffs: give one or more dates in increasing order")
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=as_json,
    ) as bar:
        task = bar.add_task("evaluating", total=None)
        report = evaluate_rolling(
            lines,
            dates,
            text_method=text,  # type: ignore[arg-type]
            cache_dir=cache,
            ials=ials,
            two_tower=two_tower,
            generators=lab,
            ranker=lab,
            progress=lambda m: bar.update(task, description=m),
        )
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    headline = ROLLING_HEADLINE
    print(f"rolling origin: cut-offs {', '.join(report.cutoffs)}, each tested on the next month")
    print(report.format_table(headline))
    for line in report.verdict(headline):
        print(f"- {line}")


# The pipeline GET /recommendations serves, replayed at each cut-off (flywheel.recsys._replay).
ROLLING_HEADLINE = "served pipeline"


@app.command("evaluate")
def evaluate(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Online Retail file or folder (parquet, csv, csv.gz, xlsx). Default: "
            "$FLYWHEEL_DATA, then ../shared/datasets/uci-online-retail/, then the UCI "
            "download, then the synthetic generator.",
        ),
    ] = None,
    train_end: Annotated[
        str, typer.Option(help="Train on lines before this date (OR-T1: 2011-11-09).")
    ] = "2011-11-09",
    test_end: Annotated[
        str | None, typer.Option(help="Test window end (default: the end of the data).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    text: Annotated[
        str,
        typer.Option(help="Product-text embeddings: auto (MiniLM, else TF-IDF), minilm, tfidf."),
    ] = "auto",
    download: Annotated[
        bool, typer.Option(help="Try the UCI download when no local file is found.")
    ] = True,
    ials: Annotated[bool, typer.Option(help="Include the iALS baseline.")] = True,
    two_tower: Annotated[
        bool,
        typer.Option(
            "--two-tower",
            help="Add the two-tower model as a generator (trained here; ~5 min on Online Retail).",
        ),
    ] = False,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Use the seeded synthetic shop, not a file.")
    ] = False,
    synthetic_users: Annotated[
        int, typer.Option(min=1, help="Users of the synthetic shop, when it is used.")
    ] = 20_000,
    synthetic_items: Annotated[
        int, typer.Option(min=1, help="Items of the synthetic shop, when it is used.")
    ] = 5_000,
    rolling: Annotated[
        bool,
        typer.Option(
            "--rolling",
            help="Rolling origin: the whole procedure at each --cutoff (test: the next "
            "month), per cut-off and mean; --train-end/--test-end are then ignored.",
        ),
    ] = False,
    cutoffs: Annotated[
        str,
        typer.Option("--cutoffs", help="Comma-separated cut-off dates for --rolling."),
    ] = ",".join(("2011-09-09", "2011-10-09", "2011-11-09")),
    lab: Annotated[
        bool,
        typer.Option(
            help="With --rolling: also the offline lab's rows (each generator, union, hybrid, "
            "LightGBM over the union); --no-lab: the served pipeline and the baselines only."
        ),
    ] = True,
) -> None:
    """Offline evaluation, protocol OR-T1: Recall/NDCG/HR@20, views `all` and `new-only`.

    One table: each candidate generator alone, their union, the hybrid blend and the
    baselines (popularity, RepeatFreq, ItemKNN, EASE, iALS). Every hyper-parameter is chosen on
    a validation window carved from the training period.
    """
    from flywheel.recsys import (
        TEXT_METHODS,
        RecsysError,
        clean_transactions,
        default_cache_root,
        evaluate_offline,
    )

    if text not in TEXT_METHODS:
        raise RecsysError(f"--text: {text!r} is not one of {', '.join(TEXT_METHODS)}")
    loaded = _load_transactions(data, synthetic, download, synthetic_users, synthetic_items)
    if not as_json:
        print(f"data: {loaded.source.description}", flush=True)
    lines = clean_transactions(loaded.frame)
    cache = default_cache_root() / "embeddings"
    if rolling:
        _evaluate_rolling(lines, cutoffs, text, cache, ials, two_tower, as_json, lab)
        return
    if as_json:
        report = evaluate_offline(
            lines,
            source=loaded.source,
            train_end=train_end,
            test_end=test_end,
            text_method=text,  # type: ignore[arg-type]
            cache_dir=cache,
            ials=ials,
            two_tower=two_tower,
        )
        print(json.dumps(report.to_dict(), indent=2))
        return
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        TextColumn("step {task.completed:.0f}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("evaluating", total=None)

        def step(message: str) -> None:
            bar.update(task, description=message, advance=1)

        report = evaluate_offline(
            lines,
            source=loaded.source,
            train_end=train_end,
            test_end=test_end,
            text_method=text,  # type: ignore[arg-type]
            cache_dir=cache,
            ials=ials,
            two_tower=two_tower,
            progress=step,
        )
    s = report.stats
    print(
        f"OR-T1: train < {report.train_end}, test < {report.test_end}; validation "
        f"{report.validation['train_end']} → {report.validation['test_end']}; "
        f"{s['train_users']:,} train users, {s['train_items']:,} items, "
        f"{s['test_users']:,} test users; text embeddings: {report.text_method}"
    )
    print(report.format_table())
    print(report.format_notes())
    console.print(f"took {report.seconds:.0f} s")


@app.command("ingest")
def ingest_command(
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="Online Retail file or folder (parquet, csv, csv.gz, xlsx). Default: "
            "$FLYWHEEL_DATA, then ../shared/datasets/uci-online-retail/, then the UCI "
            "download, then the synthetic generator.",
        ),
    ] = None,
    config: ConfigOption = None,
    download: Annotated[
        bool, typer.Option(help="Try the UCI download when no local file is found.")
    ] = True,
    synthetic: Annotated[
        bool, typer.Option("--synthetic", help="Use the seeded synthetic shop, not a file.")
    ] = False,
    synthetic_users: Annotated[
        int, typer.Option(min=1, help="Users of the synthetic shop, when it is used.")
    ] = 20_000,
    synthetic_items: Annotated[
        int, typer.Option(min=1, help="Items of the synthetic shop, when it is used.")
    ] = 5_000,
) -> None:
    """Load and clean the data, define the recommender's features, write their Parquet
    sources, apply and materialize them (item metadata, user RFM, item popularity; the
    `recs_events` stream and its real-time views)."""
    from flywheel.recsys import (
        clean_transactions,
        ingest,
    )

    loaded = _load_transactions(data, synthetic, download, synthetic_users, synthetic_items)
    print(f"data: {loaded.source.description}", flush=True)
    project = open_project(config)
    lines = clean_transactions(loaded.frame)
    with progress_bar() as bar:
        task = bar.add_task("ingesting", total=4)

        def step(message: str, done: int, total: int) -> None:
            bar.update(task, description=message, completed=done, total=total)

        report = ingest(project, lines, step=step)
    console.print(
        f"ingested {report.lines:,} purchase lines: {report.users:,} users, "
        f"{report.items:,} items in {report.categories} categories "
        f"({report.start:%Y-%m-%d} → {report.end:%Y-%m-%d}) into {report.folder}"
    )
    for view, rows in sorted(report.materialized.items()):
        console.print(f"  materialized {view}: {rows:,} rows")


@app.command("serve")
def serve_command(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="Address (default from config).")] = None,
    port: Annotated[int, typer.Option(help="Port.")] = 8002,
    workers: Annotated[int, typer.Option(min=1, help="Server processes.")] = 1,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
) -> None:
    """Serve only the recommender (GET /recommendations, POST /events) and the feature routes,
    without the rest of `flywheel up`. Each worker fits its own generators at start-up and
    sees the others' events through the feature store's stream views."""
    from flywheel.cli._server import run_server

    project = open_project(config)
    host = host or project.config.server.host
    console.print(f"recommender on http://{host}:{port} with {workers} worker(s)")
    run_server(
        project,
        config=config,
        systems=["recsys", "features"],
        host=host,
        port=port,
        workers=workers,
        log_level=log_level,
    )


@app.command("tune")
def tune_command(config: ConfigOption = None) -> None:
    """Choose the served pipeline's blend weights on the last month of the ingested purchases
    and register them as `recs-pipeline` (every recommender process serves the newest version
    within a few seconds)."""
    from flywheel.recsys import RecsysError, train_pipeline

    project = open_project(config)
    try:
        params = train_pipeline(project, progress=console.print)
    except RecsysError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc
    finally:
        project.close()
    for view, weights in params.weights.items():
        shown = ", ".join(f"{n} {w:g}" for n, w in weights.items() if w > 0)
        console.print(f"{view}: {shown}")
    ndcg = params.provenance.get("validation_ndcg_at_20", {})
    console.print(f"registered {params.version}; validation NDCG@20 {ndcg}")


@app.command("recommend")
def recommend_command(
    user_id: Annotated[int, typer.Argument(help="The user (CustomerID); unknown users work too.")],
    k: Annotated[int, typer.Option(min=1, max=500, help="How many items.")] = 20,
    surface: Annotated[str, typer.Option(help="home or product.")] = "home",
    item: Annotated[str | None, typer.Option(help="The item being viewed (product).")] = None,
    category: Annotated[str | None, typer.Option(help="The category being browsed.")] = None,
    new_only: Annotated[bool, typer.Option(help="Leave out what the user bought.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON.")] = False,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Ask a running server for a user's recommendations (GET /recommendations/{user_id})."""
    params: dict[str, str | int] = {"k": k, "surface": surface}
    if item:
        params["item_id"] = item
    if category:
        params["category"] = category
    if new_only:
        params["new_only"] = "true"
    with api_client(url) as client:
        body = client.get(f"/recommendations/{user_id}", params=params)
    if as_json:
        console.print_json(json.dumps(body))
        return
    from rich.table import Table

    table = Table(title=f"user {user_id}: strategy {body['strategy']}")
    for col in ("#", "item", "category", "score", "reasons"):
        table.add_column(col)
    for n, it in enumerate(body["items"], 1):
        table.add_row(
            str(n), it["item_id"], it["category"], f"{it['score']:.3f}", ", ".join(it["reasons"])
        )
    console.print(table)
    stages = ", ".join(f"{s} {v:.1f}" for s, v in body["latency_ms"].items())
    console.print(f"latency ms: {stages}")
    console.print(
        f"models: {body['model_versions'] or '-'}; variant: {body['experiment_variant'] or '-'};"
        f" fallbacks: {', '.join(body['fallbacks']) or '-'}"
    )


@app.command("event")
def event_command(
    user_id: Annotated[int, typer.Argument(help="The user (CustomerID).")],
    item_id: Annotated[str, typer.Argument(help="The item (StockCode).")],
    event_type: Annotated[str, typer.Argument(help="view, click, add_to_cart or purchase.")],
    event_id: Annotated[str | None, typer.Option(help="Makes a retry idempotent.")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Post one event to a running server (POST /events; needs a writer token)."""
    event: dict[str, str | int] = {"user_id": user_id, "item_id": item_id, "event_type": event_type}
    if event_id:
        event["event_id"] = event_id
    with api_client(url) as client:
        body = client.post("/events", json={"events": [event]})
    console.print(f"accepted {body['accepted']} event(s): {', '.join(body['ids'])}")


@app.command("add-item")
def add_item_command(
    item_id: Annotated[str, typer.Argument(help="The new item's StockCode.")],
    description: Annotated[str, typer.Option(help="Product text (embedded at once).")],
    price: Annotated[float | None, typer.Option(min=0, help="Unit price.")] = None,
    category: Annotated[str | None, typer.Option(help="Default: from the description.")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Add a product to a running server's catalogue (POST /items; needs a writer token): it gets
    a content embedding, enters the indexes and is shown through exploration slots."""
    item: dict[str, str | float] = {"item_id": item_id, "description": description}
    if price is not None:
        item["price"] = price
    if category:
        item["category"] = category
    with api_client(url) as client:
        body = client.post("/items", json={"items": [item]})
    console.print(f"added {body['accepted']} item(s) to the catalogue")


@app.command("train-retrieval")
def train_retrieval_command(
    config: ConfigOption = None,
    procs: Annotated[int, typer.Option(min=1, help="DDP processes (torchrun).")] = 2,
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training examples.")] = 3,
    text: Annotated[
        str, typer.Option(help="Product-text features: auto (MiniLM, else TF-IDF), minilm, tfidf.")
    ] = "auto",
    end: Annotated[
        str | None, typer.Option(help="Train on purchases before this date (default: all).")
    ] = None,
    register: Annotated[str, typer.Option(help="Registered model name.")] = "recs-two-tower",
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", help="Run the scheduler here until the job ends, with a progress bar."
        ),
    ] = False,
) -> None:
    """Train the two-tower retrieval model on the last `flywheel recs ingest`: write its data
    set, submit a DDP training job (tracked, checkpointed, registered on success) and, with
    --wait, run the scheduler until it ends (else `flywheel scheduler run` or `flywheel up`
    runs it)."""
    from flywheel.recsys import (
        TEXT_METHODS,
        RecsysError,
        TwoTowerConfig,
        load_items,
        load_purchases,
        two_tower_job_spec,
        write_two_tower_dataset,
    )
    from flywheel.training import TrainingService

    if text not in TEXT_METHODS:
        raise RecsysError(f"--text: {text!r} is not one of {', '.join(TEXT_METHODS)}")
    project = open_project(config)
    cfg = TwoTowerConfig(epochs=epochs, text=text).validate()
    with progress_bar() as bar:
        task = bar.add_task("writing the two-tower data set", total=None)
        folder = write_two_tower_dataset(
            project, load_purchases(project), load_items(project), end=end, config=cfg
        )
        bar.update(task, total=1, completed=1)
    meta = json.loads((folder / "meta.json").read_text())
    console.print(
        f"data set {folder.name}: {meta['examples']:,} examples, {meta['items']:,} items, "
        f"{meta['val_users']:,} validation users, {meta['text_method']} text"
    )
    spec = two_tower_job_spec(project, config=cfg, procs=procs, register=register)
    job = TrainingService(project).submit(spec)
    console.print(f"submitted {job.id} ({procs} process(es), {epochs} epoch(s))")
    if not wait:
        console.print("run `flywheel scheduler run` (or `flywheel up`) to train it")
        return
    steps = (int(meta["examples"]) // cfg.batch_size // procs) * epochs
    _watch_job(project, job.id, steps)


def _watch_job(project: Project, job_id: str, steps: int) -> None:
    """Run the scheduler (or, when another one runs, only watch) until ``job_id`` ends."""
    import contextlib
    import time

    from flywheel.errors import ConflictError
    from flywheel.recsys import RecsysError
    from flywheel.training import Scheduler, scheduler_lock

    scheduler = Scheduler(project)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(scheduler_lock(project))
            ticking = True
        except ConflictError:
            console.print("another scheduler runs this project: watching the job")
            ticking = False
        with progress_bar() as bar:
            task = bar.add_task("queued", total=max(steps, 1))
            while True:
                if ticking:
                    scheduler.tick()
                job = scheduler.store.get(job_id)
                series = scheduler.store.metrics(job_id)
                done = max((step for _, step, _ in series), default=0)
                recall = [v for k, _, v in series if k == "recall_at_20"]
                shown = f" recall@20 {recall[-1]:.4f}" if recall else ""
                bar.update(
                    task, completed=min(done, steps), description=f"{job.state.value}{shown}"
                )
                if job.state.terminal:
                    break
                time.sleep(0.5)
    if job.state.value != "succeeded":
        raise RecsysError(
            f"two-tower job {job_id} ended {job.state.value}: {job.reason}; "
            f"see `flywheel jobs logs {job_id}`"
        )
    console.print(f"{job_id} succeeded: registered models:/{job.model_version}")


@app.command("train-ranker")
def train_ranker_command(
    config: ConfigOption = None,
    end: Annotated[
        str | None,
        typer.Option(help="Use only purchases before this date (default: all ingested data)."),
    ] = None,
    cutoffs: Annotated[int, typer.Option(min=1, help="Training cut-off dates.")] = 6,
    window_days: Annotated[
        int, typer.Option(min=7, help="Label window after each cut-off, in days.")
    ] = 28,
    register: Annotated[str, typer.Option(help="Registered model name.")] = "recs-ranker",
    wait: Annotated[
        bool,
        typer.Option("--wait", help="Run the scheduler here until the job ends."),
    ] = False,
) -> None:
    """Train the LightGBM LambdaRank ranker on the last `flywheel recs ingest`: build its
    point-in-time training dataset in the feature store, submit a one-process training job
    (tracked, registered on success) and, with --wait, run the scheduler until it ends (else
    `flywheel scheduler run` or `flywheel up` runs it)."""
    import contextlib
    import time

    from flywheel.errors import ConflictError
    from flywheel.features import FeatureStore
    from flywheel.recsys import RankerConfig, RecsysError, ranker_job_spec, write_ranker_dataset
    from flywheel.training import Scheduler, TrainingService, scheduler_lock

    project = open_project(config)
    cfg = RankerConfig(cutoffs=cutoffs, window_days=window_days)
    with progress_bar() as bar:
        task = bar.add_task("building the ranker's training dataset", total=None)
        name = write_ranker_dataset(
            project,
            config=cfg,
            end=end,
            progress=lambda message: bar.update(task, description=message),
        )
        bar.update(task, total=1, completed=1, description="dataset written")
    store = FeatureStore(project)
    try:
        ds = store.get_training_dataset(name)
    finally:
        store.close()
    console.print(f"training dataset {name}: {ds.row_count:,} rows (point-in-time join)")
    job = TrainingService(project).submit(
        ranker_job_spec(project, dataset=name, config=cfg, register=register)
    )
    console.print(f"submitted {job.id} (1 process, LightGBM LambdaRank)")
    if not wait:
        console.print("run `flywheel scheduler run` (or `flywheel up`) to train it")
        return
    scheduler = Scheduler(project)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(scheduler_lock(project))
            ticking = True
        except ConflictError:
            console.print("another scheduler runs this project: watching the job")
            ticking = False
        with progress_bar() as bar:
            task = bar.add_task("queued", total=None)
            while True:
                if ticking:
                    scheduler.tick()
                job = scheduler.store.get(job.id)
                series = [v for k, _, v in scheduler.store.metrics(job.id)]
                shown = f" NDCG@20 {max(series):.4f}" if series else ""
                bar.update(task, description=f"{job.state.value}{shown}")
                if job.state.terminal:
                    break
                time.sleep(0.5)
    if job.state.value != "succeeded":
        raise RecsysError(
            f"ranker job {job.id} ended {job.state.value}: {job.reason}; "
            f"see `flywheel jobs logs {job.id}`"
        )
    console.print(f"{job.id} succeeded: registered models:/{job.model_version}")


def _load_transactions(
    data: Path | None, synthetic: bool, download: bool, users: int, items: int
) -> LoadedTransactions:
    """The data a command asked for: the seeded synthetic shop, or a file (see the loader)."""
    from flywheel.recsys import (
        DataSource,
        LoadedTransactions,
        RecsysError,
        SyntheticConfig,
        generate_transactions,
        load_transactions,
    )

    shop = SyntheticConfig(n_users=users, n_items=items)
    if not synthetic:
        return load_transactions(data, allow_download=download, synthetic=shop)
    if data is not None:
        raise RecsysError("--synthetic and --data exclude each other")
    return LoadedTransactions(
        generate_transactions(shop),
        DataSource(
            "synthetic",
            f"SYNTHETIC data (seeded generator, --synthetic; seed {shop.seed}, "
            f"{shop.n_users:,} users, {shop.n_items:,} items)",
        ),
    )
