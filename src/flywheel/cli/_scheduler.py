"""`flywheel scheduler ...`: The training scheduler."""

from __future__ import annotations

import signal
import threading
from typing import Annotated

import typer

from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console

app = typer.Typer(help="The training scheduler.", no_args_is_help=True)


@app.command("run")
def run(
    interval: Annotated[
        float | None, typer.Option(help="Seconds between rounds (default: config).")
    ] = None,
    once: Annotated[bool, typer.Option(help="Do one round and exit.")] = False,
    config: ConfigOption = None,
) -> None:
    """Run the scheduler in the foreground (one per project; jobs outlive it and are re-adopted)."""
    from flywheel.training import Scheduler, scheduler_lock

    project = open_project(config)
    scheduler = Scheduler(project)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: object) -> None:
        stop.set()
        scheduler.wake()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    wait = interval or project.config.training.poll_interval
    cpus = sum(n.cpus for n in scheduler.inventory)
    gpus = sum(len(n.gpus) for n in scheduler.inventory)
    with scheduler_lock(project):
        scheduler.listen()  # submissions and exits wake the loop below at once
        console.print(
            f"scheduler for project [bold]{project.config.project}[/]: "
            f"{len(scheduler.inventory)} node(s), {cpus} CPUs, {gpus} GPUs"
        )
        while not stop.is_set():
            report = scheduler.tick()
            for job_id in report.adopted:
                console.print(f"adopted {job_id} (still running from a previous scheduler)")
            for job_id in report.launched:
                console.print(f"started {job_id}")
            for job_id in report.preempting:
                console.print(f"preempting {job_id}")
            for job_id, state in report.finished.items():
                console.print(f"{job_id}: {state}")
            for job_id in report.requeued:
                console.print(f"requeued {job_id}")
            if once:
                break
            scheduler.wait(wait)


@app.command("status")
def status(config: ConfigOption = None) -> None:
    """The inventory, what running jobs hold, and the queue length."""
    from rich.table import Table

    from flywheel.training import TrainingService

    report = TrainingService(open_project(config)).inventory_report()
    table = Table("node", "host", "CPUs used", "GPUs used")
    for n in report["nodes"]:
        table.add_row(
            n["name"],
            n["host"],
            f"{n['cpus_used']}/{n['cpus']}",
            f"{n['gpus_used']}/{len(n['gpus'])}",
        )
    console.print(table)
    console.print(f"running: {report['running_jobs']}, queued: {report['queued_jobs']}")
