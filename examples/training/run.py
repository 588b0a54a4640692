"""One command: make a Parquet dataset, submit the example job, run the scheduler, watch it.

    python examples/training/run.py [--project DIR]

Creates (or reuses) a Flywheel project in DIR (default /tmp/flywheel-training-example), writes
``data/train.parquet`` and ``data/val.parquet`` (synthetic clicks), submits ``job.yaml`` and
runs the scheduler in this process until the job ends, printing rank 0's log as it goes. Then
it prints the job's history, the registered model version and its lineage.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.config import DEFAULT_CONFIG_TEXT
from flywheel.lineage import Node, upstream
from flywheel.project import Project
from flywheel.training import Scheduler, load_job_spec, scheduler_lock

HERE = Path(__file__).resolve().parent


def make_data(folder: Path, rows: int = 6000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8)).astype(np.float32)
    logits = x @ np.linspace(-1.0, 1.0, 8, dtype=np.float32) + 0.5 * x[:, 0] * x[:, 1]
    clicked = (rng.random(rows) < 1 / (1 + np.exp(-logits))).astype(np.int64)
    table = {f"x{i}": x[:, i] for i in range(8)} | {"clicked": clicked}
    folder.mkdir(parents=True, exist_ok=True)
    split = int(rows * 0.8)
    train = pa.table({k: v[:split] for k, v in table.items()})
    pq.write_table(train, folder / "train.parquet", row_group_size=500)
    pq.write_table(pa.table({k: v[split:] for k, v in table.items()}), folder / "val.parquet")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--project", type=Path, default=Path("/tmp/flywheel-training-example"))
    args = parser.parse_args()
    root: Path = args.project.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "flywheel.yaml").exists():
        (root / "flywheel.yaml").write_text(DEFAULT_CONFIG_TEXT.format(project="training-example"))
    project = Project.open(root)
    project.prepare()
    make_data(root / "data")

    scheduler = Scheduler(project)
    job = scheduler.store.submit(load_job_spec(HERE / "job.yaml"))
    print(f"submitted {job.id}; scheduling on {scheduler.inventory}")
    shown = 0
    with scheduler_lock(project):
        while not (job := scheduler.store.get(job.id)).state.terminal:
            scheduler.tick()
            log = scheduler.executor.logs(job).get("node0/restart0/rank0.log", "")
            for line in log[shown:].splitlines():
                print(f"  [rank0] {line}")
            shown = len(log)
            time.sleep(0.5)
    print(f"{job.id}: {job.state} ({job.reason}); attempt {job.attempt}, restarts {job.restarts}")
    for event in scheduler.store.events(job.id):
        print(f"  {event.at:%H:%M:%S} {event.from_state or '-'} -> {event.to_state} {event.reason}")
    if job.model_version:
        print(f"registered models:/{job.model_version}")
        graph = upstream(project.db, Node("model_version", job.model_version))
        for edge in graph.edges:
            print(f"  lineage: {edge.src} -> {edge.dst}")
    elif job.state.value != "succeeded":
        raise SystemExit(1)


if __name__ == "__main__":
    main()
