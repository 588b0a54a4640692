"""`make demo`: the whole flywheel on the embedded defaults (no Redis or Postgres needed).

    python examples/demo.py [--dir DIR] [--port PORT] [--no-serve] [--replay-limit N]
                            [--data PATH | --synthetic] [--small]

1. data — the UCI Online Retail file (``$FLYWHEEL_DATA``, else ``../shared/datasets/
   uci-online-retail/``, else the UCI download), or the seeded synthetic shop when none is
   found (said plainly); cleaned, split at 2011-11-09: the history before it feeds the platform,
   the month after it is replayed later as live traffic;
2. project — ``flywheel init`` (SQLite metadata and online store, Parquet offline store), a
   writer token;
3. feature store — ``flywheel.recsys.ingest``: Parquet sources, feature definitions, weekly
   point-in-time history, materialized to the online store;
4. training datasets — the two-tower's examples and the ranker's point-in-time training dataset
   (a feature-store training dataset, with lineage);
5. training through the scheduler — the two-tower (2-process DDP via torchrun) and two LightGBM
   LambdaRank rankers (a quick v1 and the full v2), tracked and registered on success;
6. serving — the two-tower promoted; the ranker endpoint serves v1 and **v2 starts as a canary**
   (``flywheel.serving.deploy``), gated on errors and p99;
7. A/B experiment — ``flywheel.experiments``: the request path's strategies as variants;
8. ``flywheel up`` — a real server process on 127.0.0.1;
9. replay — every invoice of the held-out month, in time order, as live traffic: ``GET
   /recommendations`` (what we would have shown), then ``POST /events`` (a click for each
   bought item that was on the page, the purchases); new products first go through ``POST
   /items``. Live: requests/s, p50/p99, hit rate (the page held something the user bought next)
   per variant, the canary's progress and the experiment report;
10. the server keeps running with its URL printed (``--no-serve`` stops it).

``--small`` uses small models and data (CI, quick looks); ``--replay-limit N`` replays only the
first N invoices.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
SPLIT = "2011-11-09"  # protocol OR-T1: history before it, the replayed month after it
EXPERIMENT = "recs-strategy"
WANTED_VARIANTS = (("ranked", 40), ("hybrid", 20), ("content", 20), ("popularity", 20))
MARKER = ".flywheel-demo"  # a folder the demo may wipe and recreate
V1_OLDER_DAYS = 28  # the first ranker is trained as if a month ago; the canary then replaces it
console = Console(highlight=False)
if not console.is_terminal:  # a log or CI: wide enough that tables do not wrap
    console = Console(highlight=False, width=120)


# -- presets ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preset:
    """Model and data sizes: ``full`` for `make demo`, ``small`` for CI and quick looks."""

    name: str
    two_tower: dict[str, Any]
    ranker: dict[str, Any]
    synthetic: dict[str, Any]
    canary_steps: str
    step_requests: int


FULL = Preset(
    name="full",
    two_tower={"text": "tfidf", "epochs": 2},
    ranker={},
    synthetic={"n_users": 4_000, "n_items": 3_000, "n_categories": 40},
    canary_steps="10,50",
    step_requests=50,
)
SMALL = Preset(
    name="small",
    two_tower={
        "text": "tfidf",
        "dim": 16,
        "hidden": 32,
        "id_dim": 16,
        "text_proj": 16,
        "batch_size": 128,
        "epochs": 1,
    },
    ranker={"cutoffs": 2, "n_estimators": 40, "early_stopping_rounds": 10},
    synthetic={"n_users": 600, "n_items": 200, "n_categories": 8, "seed": 5},
    canary_steps="20,50",
    step_requests=5,
)


# -- steps, each with a progress bar ----------------------------------------------------------


class Steps:
    """Numbered steps; each shows a rich progress bar and ends with its time."""

    def __init__(self) -> None:
        self.number = 0
        self.started = time.perf_counter()
        self.times: list[tuple[str, float]] = []

    @contextlib.contextmanager
    def step(self, short: str, title: str, total: float | None = None) -> Iterator[Bar]:
        self.number += 1
        console.print(f"\n[bold]{self.number}. {title}[/]")
        t0 = time.perf_counter()
        with Progress(
            SpinnerColumn(),
            TextColumn("   {task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task(title, total=total)
            bar = Bar(progress, task)
            yield bar
            final = progress.tasks[0].total or progress.tasks[0].completed or 1
            progress.update(task, total=final, completed=final, description=bar.last or "done")
        took = time.perf_counter() - t0
        self.times.append((short, took))
        console.print(f"   [green]done[/] in {took:.1f} s")


@dataclass
class Bar:
    progress: Progress
    task: TaskID
    last: str = ""

    def update(self, description: str | None = None, **kwargs: Any) -> None:
        if description is not None:
            self.last = description
        self.progress.update(self.task, description=description or self.last, **kwargs)

    def say(self, message: str) -> None:
        self.progress.console.print(f"   {message}")


# -- helpers ----------------------------------------------------------------------------------


def flywheel_cli(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise DemoError(f"`flywheel {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout.strip()


class DemoError(Exception):
    """A step failed; the message says which and why."""


def pick_port(wanted: int) -> int:
    for port in (wanted, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise DemoError("no free port on 127.0.0.1")


def pct(values: Any, q: float) -> float:
    arr = np.asarray(list(values), dtype=np.float64)
    return float(np.percentile(arr, q)) if len(arr) else float("nan")


def run_job(scheduler: Any, job_id: str, bar: Bar, label: str, steps: int | None) -> Any:
    """Tick the scheduler until ``job_id`` ends; the bar shows its steps and last metric."""
    while True:
        scheduler.tick()
        job = scheduler.store.get(job_id)
        series = scheduler.store.metrics(job_id)
        done = max((step for _, step, _ in series), default=0)
        shown = ""
        if series:
            key, _, value = series[-1]
            shown = f", {key} {value:.4f}"
        if steps:
            bar.update(f"{label}: {job.state.value}{shown}", completed=min(done, steps))
        else:
            bar.update(f"{label}: {job.state.value}{shown}")
        if job.state.terminal:
            break
        time.sleep(0.5)
    if job.state.value != "succeeded":
        from flywheel.training import TrainingService

        logs = "\n".join(TrainingService(scheduler.project).logs(job_id).values())
        raise DemoError(
            f"{label} job {job_id} ended {job.state.value}: {job.reason}\n{logs[-3000:]}"
        )
    return job


# -- the steps --------------------------------------------------------------------------------


@dataclass
class Data:
    description: str
    real: bool
    history: pd.DataFrame
    heldout: pd.DataFrame


def load_data(args: argparse.Namespace, preset: Preset, steps: Steps) -> Data:
    from flywheel.recsys import (
        DataSource,
        LoadedTransactions,
        SyntheticConfig,
        clean_transactions,
        generate_transactions,
        load_transactions,
    )

    with steps.step("data", "data: load, clean, split at " + SPLIT) as bar:
        shop = SyntheticConfig(**preset.synthetic)
        bar.update("looking for the Online Retail file")
        if args.synthetic:
            loaded = LoadedTransactions(
                generate_transactions(shop),
                DataSource(
                    "synthetic",
                    f"SYNTHETIC data (seeded generator, --synthetic; seed {shop.seed}, "
                    f"{shop.n_users:,} users, {shop.n_items:,} items)",
                ),
            )
        else:
            loaded = load_transactions(args.data, synthetic=shop)
        bar.update("cleaning")
        lines = clean_transactions(loaded.frame)
        split = pd.Timestamp(SPLIT)
        history = lines.loc[lines["InvoiceDate"] < split].reset_index(drop=True)
        heldout = lines.loc[lines["InvoiceDate"] >= split].reset_index(drop=True)
        colour = "green" if loaded.source.is_real else "bold yellow"
        bar.say(f"[{colour}]{loaded.source.description}[/]")
        bar.say(
            f"{len(lines):,} clean purchase lines, {lines['CustomerID'].nunique():,} customers, "
            f"{lines['StockCode'].nunique():,} products, "
            f"{lines['InvoiceDate'].min():%Y-%m-%d} → {lines['InvoiceDate'].max():%Y-%m-%d}"
        )
        bar.say(
            f"history (< {SPLIT}): {len(history):,} lines; held-out month: {len(heldout):,} "
            f"lines in {heldout['InvoiceNo'].nunique():,} invoices, replayed as live traffic"
        )
        if history.empty or heldout.empty:
            raise DemoError(f"the data has nothing before or after {SPLIT}")
    return Data(loaded.source.description, loaded.source.is_real, history, heldout)


def make_project(args: argparse.Namespace, steps: Steps) -> tuple[Any, str]:
    from flywheel.project import Project

    root: Path = args.dir
    with steps.step("project", f"project: flywheel init {root}") as bar:
        if root.exists():
            if not (root / MARKER).exists():
                raise DemoError(f"{root} exists and was not made by the demo; use --dir")
            bar.update("removing the previous demo project")
            shutil.rmtree(root)
        bar.update("flywheel init")
        root.mkdir(parents=True)
        (root / MARKER).write_text("made by examples/demo.py; removed by its next run\n")
        for line in flywheel_cli("init", str(root), "--project", "shop", cwd=ROOT).splitlines():
            bar.say(line)
        with (root / "flywheel.yaml").open("a", encoding="utf-8") as f:
            f.write(
                "\n# added by the demo\n"
                "recsys:\n"
                f"  experiment: {EXPERIMENT}   # variants name the strategies\n"
                "  content_method: tfidf\n"
                "  deadline_ms: 150   # default 50; this 2-core box also runs the replay client\n"
                "experiments:\n"
                "  event_streams: [recs_events]   # clicks and purchases feed the report\n"
            )
        token = flywheel_cli(
            "tokens", "create", "--role", "writer", "--name", "demo", "-q", cwd=root
        )
        bar.say(f"writer token {token[:12]}... (POST /events, /items)")
        project = Project.open(root)
        project.prepare()
    return project, token


def ingest_history(project: Any, data: Data, steps: Steps) -> None:
    from flywheel.recsys import ingest

    with steps.step("ingest", "feature store: ingest the history, materialize", total=4) as bar:

        def step(description: str, done: int, total: int) -> None:
            bar.update(description, completed=done, total=total)

        report = ingest(project, data.history, step=step)
        bar.say(
            f"{report.lines:,} purchase lines, {report.users:,} users, {report.items:,} items "
            f"in {report.categories} categories → {report.folder}"
        )
        for view, rows in sorted(report.materialized.items()):
            bar.say(f"materialized {view}: {rows:,} rows to the online store (SQLite)")


def training_datasets(
    project: Any, preset: Preset, steps: Steps
) -> tuple[Path, dict[str, str], Any]:
    from flywheel.features import FeatureStore
    from flywheel.recsys import (
        RankerConfig,
        TwoTowerConfig,
        load_items,
        load_purchases,
        write_ranker_dataset,
        write_two_tower_dataset,
    )

    with steps.step(
        "datasets", "training datasets: two-tower examples, ranker (point-in-time)"
    ) as bar:
        bar.update("two-tower: user histories before each purchase")
        tt = TwoTowerConfig(**preset.two_tower)
        folder = write_two_tower_dataset(
            project, load_purchases(project), load_items(project), config=tt
        )
        meta = json.loads((folder / "meta.json").read_text())
        bar.say(
            f"two-tower data set {folder.name}: {meta['examples']:,} examples, "
            f"{meta['items']:,} items, {meta['text_method']} text"
        )
        ranker = RankerConfig(**preset.ranker)
        last = load_purchases(project)["InvoiceDate"].max()
        older = (last - pd.Timedelta(days=V1_OLDER_DAYS)).normalize()
        names: dict[str, str] = {}
        for version, end in (("v1", older), ("v2", None)):
            names[version] = write_ranker_dataset(
                project, config=ranker, end=end, progress=lambda m: bar.update(m)
            )
            store = FeatureStore(project)
            try:
                ds = store.get_training_dataset(names[version])
            finally:
                store.close()
            upto = f"purchases before {end:%Y-%m-%d}" if end is not None else "all the history"
            bar.say(
                f"ranker dataset {names[version]} ({upto}): {ds.row_count:,} rows, point-in-time "
                "join of user and item features at each cut-off (catalogued, with lineage)"
            )
    return folder, names, tt


def train(
    project: Any, preset: Preset, tt: Any, datasets: dict[str, str], folder: Path, steps: Steps
) -> dict[str, str]:
    from flywheel.recsys import RankerConfig, ranker_job_spec, two_tower_job_spec
    from flywheel.training import Scheduler, scheduler_lock

    scheduler = Scheduler(project)
    versions: dict[str, str] = {}
    meta = json.loads((folder / "meta.json").read_text())
    tt_steps = max(1, int(meta["examples"]) // tt.batch_size // 2 * tt.epochs)
    with scheduler_lock(project):
        with steps.step(
            "two-tower", "train the two-tower: 2-process DDP (torchrun) via the scheduler"
        ) as bar:
            job = scheduler.store.submit(two_tower_job_spec(project, config=tt, procs=2))
            bar.update(f"{job.id} queued", total=tt_steps)
            job = run_job(scheduler, job.id, bar, "two-tower", tt_steps)
            bar.say(f"{job.id}: {job.state.value}, registered models:/{job.model_version}")
            versions["two_tower"] = str(job.model_version)
        with steps.step(
            "rankers", "train the rankers (LightGBM LambdaRank) via the scheduler"
        ) as bar:
            cfg = RankerConfig(**preset.ranker)
            for label, what in (
                ("v1", f"last month's model: data to {V1_OLDER_DAYS} days before the split"),
                ("v2", "retrained on all the history"),
            ):
                spec = ranker_job_spec(project, dataset=datasets[label], config=cfg)
                job = scheduler.store.submit(spec)
                job = run_job(scheduler, job.id, bar, f"ranker {label}", None)
                series = [v for k, _, v in scheduler.store.metrics(job.id) if "ndcg" in k]
                best = f", NDCG@20 {max(series):.4f} on its own validation window" if series else ""
                bar.say(f"{job.id} ({what}){best} → registered models:/{job.model_version}")
                versions[f"ranker_{label}"] = str(job.model_version)
    return versions


def deploy_models(project: Any, preset: Preset, versions: dict[str, str], steps: Steps) -> None:
    from flywheel.registry import Registry
    from flywheel.serving import deploy

    with steps.step("deploy", "registry and serving: deploy the ranker, canary v2") as bar:
        reg = Registry(project)
        tt_name, tt_version = versions["two_tower"].split("/")
        bar.say(
            f"models:/{tt_name}/{tt_version}: the request path loads the newest two-tower "
            "version (or the production one) and indexes its item embeddings with FAISS"
        )
        name, v1 = versions["ranker_v1"].split("/")
        _, v2 = versions["ranker_v2"].split("/")
        reg.set_stage(name, int(v1), "production", reason="demo: first ranker")
        deploy(project, name, version=int(v1), model=name, actor="demo")
        bar.say(f"endpoint {name}: 100% on v{v1} (production)")
        ep = deploy(
            project,
            name,
            version=int(v2),
            model=name,
            canary=preset.canary_steps,
            step_requests=preset.step_requests,
            max_error_rate=0.05,
            max_p99_ms=250.0,
            actor="demo",
        )
        plan = ep.canary
        assert plan is not None
        bar.say(
            f"canary of v{v2} on endpoint {name}: steps {preset.canary_steps} %, "
            f"{preset.step_requests} requests per step, gates: errors (failures and timeouts) "
            "<= 5 %, p99 <= 250 ms"
        )


def start_experiment(project: Any, steps: Steps) -> list[str]:
    from flywheel.experiments import Experiments
    from flywheel.recsys import STRATEGIES

    with steps.step("experiment", f"A/B experiment {EXPERIMENT}: strategies as variants") as bar:
        variants = [(n, w) for n, w in WANTED_VARIANTS if n in STRATEGIES]
        exps = Experiments(project)
        try:
            exps.create(
                {
                    "name": EXPERIMENT,
                    "unit": "user_id",
                    "variants": [{"name": n, "weight": w} for n, w in variants],
                    "metrics": [
                        {"name": "hit", "kind": "proportion", "event": "click"},
                        {
                            "name": "purchases",
                            "kind": "mean",
                            "event": "purchase",
                            "value": "count",
                        },
                    ],
                }
            )
        finally:
            exps.close()
        shown = ", ".join(f"{n} {w}%" for n, w in variants)
        bar.say(f"variants: {shown}; metric 'hit': a click on a recommended item that was bought")
    return [n for n, _ in variants]


class Server:
    def __init__(self, root: Path, port: int) -> None:
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.log = (root / ".flywheel" / "demo-server.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flywheel.cli", "up", "--port", str(port)]
            + ["--log-level", "warning"],
            cwd=root,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


def start_server(project: Any, port: int, data: Data, steps: Steps) -> Server:
    with steps.step("serve", f"flywheel up on http://127.0.0.1:{port}") as bar:
        server = Server(project.root, port)
        users = [int(u) for u in data.history["CustomerID"].unique()[-50:]]
        deadline = time.monotonic() + 300
        bar.update("starting: fitting the generators, loading the two-tower and the ranker")
        page: dict[str, Any] | None = None
        probe = 0
        while page is None:
            if server.proc.poll() is not None:
                log = (project.root / ".flywheel" / "demo-server.log").read_text()[-3000:]
                raise DemoError(f"the server exited with {server.proc.returncode}:\n{log}")
            if time.monotonic() > deadline:
                raise DemoError("the server did not become ready (two-tower and ranker) in 300 s")
            with contextlib.suppress(httpx.TransportError):
                # ready: a user of the "ranked" variant gets both learned models
                for user in users:
                    r = httpx.get(f"{server.base}/recommendations/{user}?k=5", timeout=30)
                    if r.status_code != 200:
                        break
                    body = r.json()
                    if body["strategy"] == "ranked":
                        if {"two_tower", "ranker"} <= set(body["model_versions"]):
                            page, probe = body, user
                        break
            time.sleep(0.5)
        bar.say(
            f"GET /recommendations/{probe}?k=5 → variant {page['experiment_variant']}, "
            f"strategy {page['strategy']}, models "
            + (", ".join(sorted(page["model_versions"].values())) or "none")
        )
        for item in page["items"][:5]:
            bar.say(f"  {item['item_id']:>8}  {item['category']:<12} {', '.join(item['reasons'])}")
        stages = ", ".join(f"{k} {v:.1f}" for k, v in page["latency_ms"].items())
        bar.say(f"latency_ms: {stages}")
    return server


# -- the replay -------------------------------------------------------------------------------


@dataclass
class Invoice:
    number: str
    user: int
    at: pd.Timestamp
    items: list[str]
    new_items: list[dict[str, Any]]


@dataclass
class Replay:
    total: int
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    latencies: list[float] = field(default_factory=list)
    recent: deque[float] = field(default_factory=lambda: deque(maxlen=4000))  # finish times
    hits: Counter[str] = field(default_factory=Counter)
    pages: Counter[str] = field(default_factory=Counter)
    fallbacks: Counter[str] = field(default_factory=Counter)
    models: Counter[str] = field(default_factory=Counter)
    new_items: int = 0
    events: int = 0
    errors: int = 0
    shop_time: pd.Timestamp | None = None
    canary: str = ""
    report: Any = None

    def rate(self) -> float:
        now = time.perf_counter()
        window = [t for t in self.recent if now - t <= 5.0]
        span = min(5.0, now - self.started)
        return len(window) / span if span > 0 else 0.0

    def table(self) -> Table:
        t = Table(title="live", show_header=True, header_style="bold", box=None, pad_edge=False)
        t.add_column("replayed")
        t.add_column("shop time")
        t.add_column("GET req/s")
        t.add_column("p50 ms")
        t.add_column("p99 ms")
        t.add_column("hit rate")
        t.add_column("events")
        t.add_column("canary")
        hits = sum(self.hits.values())
        pages = sum(self.pages.values())
        t.add_row(
            f"{self.done:,}/{self.total:,}",
            f"{self.shop_time:%Y-%m-%d %H:%M}" if self.shop_time is not None else "-",
            f"{self.rate():.1f}",
            f"{pct(self.latencies, 50):.1f}",
            f"{pct(self.latencies, 99):.1f}",
            f"{hits / pages:.3f}" if pages else "-",
            f"{self.events:,}",
            self.canary or "-",
        )
        return t

    def variants(self) -> Table:
        t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
        t.add_column("variant")
        t.add_column("pages")
        t.add_column("hit rate (client)")
        t.add_column("exposed users (report)")
        t.add_column("hit, report (95% CI)")
        report = self.report.to_dict() if self.report is not None else {}
        exposures = {v["name"]: v for v in report.get("variants", [])}
        metric = next((m for m in report.get("metrics", []) if m["name"] == "hit"), None)
        by_variant = {v["variant"]: v for v in (metric or {}).get("variants", [])}
        for name in sorted(self.pages):
            hit = by_variant.get(name, {})
            ci = hit.get("ci") or hit.get("ci95")
            shown = f"{hit['mean']:.3f}" if "mean" in hit else "-"
            if isinstance(ci, list | tuple) and len(ci) == 2:
                shown += f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            t.add_row(
                name,
                f"{self.pages[name]:,}",
                f"{self.hits[name] / self.pages[name]:.3f}",
                str(exposures.get(name, {}).get("units", "-")),
                shown,
            )
        return t

    def render(self) -> Group:
        extra = ", ".join(f"{k} {v}" for k, v in self.fallbacks.most_common()) or "none"
        models = ", ".join(f"{k} {v}" for k, v in sorted(self.models.items())) or "none"
        return Group(
            self.table(),
            self.variants(),
            f"fallbacks: {extra}; model versions on the pages: {models}; "
            f"new products added: {self.new_items}; errors: {self.errors}",
        )


def invoices_of(data: Data, limit: int | None) -> list[Invoice]:
    held = data.heldout
    known = set(data.history["StockCode"].astype(str))
    held = held.assign(StockCode=held["StockCode"].astype(str))
    out: list[Invoice] = []
    seen_new: set[str] = set()
    for number, part in held.groupby("InvoiceNo", sort=False, observed=True):
        items = list(dict.fromkeys(part["StockCode"].tolist()))
        fresh = []
        for _, row in part.drop_duplicates("StockCode").iterrows():
            code = row["StockCode"]
            if code not in known and code not in seen_new:
                seen_new.add(code)
                fresh.append(
                    {
                        "item_id": code,
                        "description": str(row["Description"]) or code,
                        "price": float(row["UnitPrice"]),
                    }
                )
        out.append(
            Invoice(
                str(number),
                int(part["CustomerID"].iloc[0]),
                part["InvoiceDate"].iloc[0],
                items,
                fresh,
            )
        )
    out.sort(key=lambda inv: (inv.at, inv.number))
    return out[:limit] if limit is not None else out


async def replay(
    project: Any, base: str, token: str, invoices: list[Invoice], live: Replay, concurrency: int
) -> None:
    from flywheel.experiments import Experiments
    from flywheel.serving import describe

    auth = {"Authorization": f"Bearer {token}"}
    busy_users: set[int] = set()
    queue: deque[Invoice] = deque(invoices)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=base, timeout=30, limits=limits) as client:

        async def one(inv: Invoice) -> None:
            if inv.new_items:
                r = await client.post("/items", json={"items": inv.new_items}, headers=auth)
                if r.status_code != 200:
                    raise DemoError(f"POST /items answered {r.status_code}: {r.text[:300]}")
                live.new_items += len(inv.new_items)
            t0 = time.perf_counter()
            r = await client.get(f"/recommendations/{inv.user}", params={"k": 20})
            took = (time.perf_counter() - t0) * 1000.0
            if r.status_code != 200:
                live.errors += 1
                raise DemoError(f"GET /recommendations answered {r.status_code}: {r.text[:300]}")
            page = r.json()
            shown = {i["item_id"] for i in page["items"]}
            bought = set(inv.items)
            hits = sorted(shown & bought)
            variant = page["experiment_variant"] or page["strategy"]
            live.pages[variant] += 1
            live.hits[variant] += bool(hits)
            live.fallbacks.update(page["fallbacks"])
            live.models.update(f"{k}={v}" for k, v in page["model_versions"].items())
            live.latencies.append(took)
            events = [
                {
                    "user_id": inv.user,
                    "item_id": item,
                    "event_type": "click",
                    "event_id": f"{inv.number}-{item}-click",
                }
                for item in hits
            ] + [
                {
                    "user_id": inv.user,
                    "item_id": item,
                    "event_type": "purchase",
                    "event_id": f"{inv.number}-{item}-purchase",
                }
                for item in inv.items
            ]
            for start in range(0, len(events), 1000):
                r = await client.post(
                    "/events", json={"events": events[start : start + 1000]}, headers=auth
                )
                if r.status_code != 200:
                    live.errors += 1
                    raise DemoError(f"POST /events answered {r.status_code}: {r.text[:300]}")
            live.events += len(events)
            live.done += 1
            live.recent.append(time.perf_counter())
            live.shop_time = inv.at

        async def worker() -> None:
            while queue:
                # the next invoice whose user has none in flight (a user's invoices stay in order)
                pick = next((i for i, inv in enumerate(queue) if inv.user not in busy_users), None)
                if pick is None:
                    await asyncio.sleep(0.001)
                    continue
                inv = queue[pick]
                del queue[pick]
                busy_users.add(inv.user)
                try:
                    await one(inv)
                finally:
                    busy_users.discard(inv.user)

        async def watch() -> None:
            exps = Experiments(project)
            try:
                while live.done < live.total:
                    await asyncio.sleep(2.0)
                    await asyncio.to_thread(refresh_side_panels, project, exps, live, describe)
            finally:
                exps.close()

        watcher = asyncio.create_task(watch())
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def refresh_side_panels(project: Any, exps: Any, live: Replay, describe: Any) -> None:
    with contextlib.suppress(Exception):
        ep = describe(project, "recs-ranker", events=0)
        canary = ep.get("canary")
        if canary:
            live.canary = f"v{canary['candidate']} {canary['state']} at {canary['weight']}%" + (
                f" ({canary['reason']})" if canary.get("reason") else ""
            )
        else:
            routes = ", ".join(f"v{r['version']} {r['weight']:.0f}%" for r in ep["routes"])
            live.canary = routes
    with contextlib.suppress(Exception):
        live.report = exps.report(EXPERIMENT)


def run_replay(
    project: Any, server: Server, token: str, data: Data, limit: int | None, steps: Steps
) -> Replay:
    from flywheel.experiments import Experiments
    from flywheel.serving import describe

    invoices = invoices_of(data, limit)
    with steps.step(
        "replay", f"replay the held-out month ({len(invoices):,} invoices) as live traffic"
    ) as bar:
        bar.update("replaying", total=len(invoices))
        live = Replay(total=len(invoices))
        shown_at = [0]

        def progress() -> None:
            bar.update(
                f"{live.done:,} invoices, {live.rate():.0f} GET/s, "
                f"hit rate {sum(live.hits.values()) / max(1, sum(live.pages.values())):.3f}",
                completed=live.done,
            )
            # without a terminal (CI, a log), print a line every 10 %
            if not console.is_terminal and live.done >= shown_at[0] + max(1, live.total // 10):
                shown_at[0] = live.done
                t = live.table()
                console.print(t)

        async def main() -> None:
            task = asyncio.create_task(
                replay(project, server.base, token, invoices, live, concurrency=2)
            )
            while not task.done():
                progress()
                await asyncio.sleep(0.25)
            await task
            progress()

        if console.is_terminal:
            with Live(live.render(), console=console, refresh_per_second=2) as screen:

                async def with_screen() -> None:
                    async def paint() -> None:
                        while True:
                            screen.update(live.render())
                            await asyncio.sleep(0.5)

                    painter = asyncio.create_task(paint())
                    try:
                        await main()
                    finally:
                        painter.cancel()

                asyncio.run(with_screen())
        else:
            asyncio.run(main())
        # the stream consumer of `flywheel up` feeds the report: give it a moment to catch up
        exps = Experiments(project)
        try:
            time.sleep(3.0)
            refresh_side_panels(project, exps, live, describe)
        finally:
            exps.close()
        console.print(live.render())
    return live


def summary(project: Any, server: Server, live: Replay, steps: Steps) -> None:
    from flywheel.experiments import Experiments
    from flywheel.serving import describe

    console.print("\n[bold]Results[/]")
    exps = Experiments(project)
    try:
        report = exps.report(EXPERIMENT)
        for part in report.render():
            console.print(part)
    finally:
        exps.close()
    ep = describe(project, "recs-ranker", events=20)
    routes = ", ".join(f"v{r['version']} {r['weight']:.0f}%" for r in ep["effective_routes"])
    console.print(f"endpoint recs-ranker: {routes}")
    for event in ep["events"]:
        detail = event["detail"] if isinstance(event["detail"], dict) else {}
        canary = detail.get("canary") or {}
        reason = detail.get("reason") or canary.get("reason") or ""
        if not reason and canary:
            reason = (
                f"v{canary['candidate']} at {canary['weight']}%, baseline v{canary['baseline']}"
            )
        elif not reason and detail.get("routes"):
            reason = ", ".join(f"v{r['version']} {r['weight']:.0f}%" for r in detail["routes"])
        console.print(f"  {event['at'][11:19]} {event['kind']:<16} {reason}")
    metrics = httpx.get(f"{server.base}/metrics", timeout=10).text
    fallbacks = [
        line for line in metrics.splitlines() if line.startswith("flywheel_recsys_fallbacks_total{")
    ]
    console.print("fallbacks counted by the server: " + ("; ".join(fallbacks) or "none"))
    total = time.perf_counter() - steps.started
    console.print(
        f"\n[bold]demo wall time {total:.0f} s[/] ("
        + ", ".join(f"{name} {s:.0f} s" for name, s in steps.times)
        + ")"
    )


# -- main -------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=ROOT / ".demo" / "shop")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-serve", action="store_true", help="stop the server at the end")
    parser.add_argument("--replay-limit", type=int, default=None, help="replay N invoices only")
    parser.add_argument("--data", type=Path, default=None, help="the Online Retail file")
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic shop")
    parser.add_argument("--small", action="store_true", help="small models and data")
    args = parser.parse_args()
    args.dir = args.dir.resolve()
    preset = SMALL if args.small else FULL
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    console.rule("[bold]Flywheel demo: features → training → registry → serving → experiments")
    steps = Steps()
    server: Server | None = None
    try:
        data = load_data(args, preset, steps)
        project, token = make_project(args, steps)
        ingest_history(project, data, steps)
        folder, datasets, tt = training_datasets(project, preset, steps)
        versions = train(project, preset, tt, datasets, folder, steps)
        deploy_models(project, preset, versions, steps)
        start_experiment(project, steps)
        port = pick_port(args.port)
        server = start_server(project, port, data, steps)
        live = run_replay(project, server, token, data, args.replay_limit, steps)
        summary(project, server, live, steps)
        if live.errors:
            raise DemoError(f"{live.errors} requests failed during the replay")
        if args.no_serve:
            return 0
        console.print(
            f"\n[bold green]Flywheel is running:[/] {server.base}/ui  (API docs: "
            f"{server.base}/docs; writer token {token}) — Ctrl-C to stop"
        )
        signal.signal(signal.SIGTERM, lambda *_: server.proc.terminate() if server else None)
        server.proc.wait()
        return 0
    except DemoError as exc:
        console.print(f"[bold red]demo failed:[/] {exc}")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
