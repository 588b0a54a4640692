"""`flywheel jobs ...`: Training jobs: submit, watch, cancel, tune."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated

import typer

from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console

app = typer.Typer(help="Training jobs: submit, watch, cancel, tune.", no_args_is_help=True)

_STATE_STYLE = {
    "queued": "yellow",
    "admitted": "cyan",
    "running": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "magenta",
    "preempted": "yellow",
}


def _state(state: str) -> str:
    return f"[{_STATE_STYLE.get(state, 'white')}]{state}[/]"


@app.command("submit")
def submit(
    job_file: Annotated[Path, typer.Argument(help="job.yaml describing the job.")],
    priority: Annotated[int | None, typer.Option(help="Override the spec's priority.")] = None,
    team: Annotated[str | None, typer.Option(help="Override the spec's team.")] = None,
    hparam: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a hyperparameter: NAME=VALUE (JSON value)."),
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Stream the logs until the job ends.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Queue a job; the scheduler (`flywheel scheduler run` or `flywheel up`) runs it."""
    from dataclasses import replace

    from flywheel.training import JobSpecError, TrainingService, load_job_spec

    spec = load_job_spec(job_file)
    changes: dict[str, object] = {}
    if priority is not None:
        changes["priority"] = priority
    if team is not None:
        changes["team"] = team
    if changes:
        spec = replace(spec, **changes)  # type: ignore[arg-type]
    for item in hparam or []:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise JobSpecError("--set", f"must be NAME=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        spec = spec.with_hyperparameters(**{name: value})
    service = TrainingService(open_project(config))
    job = service.submit(spec)
    console.print(
        f"submitted [bold]{job.id}[/] ({job.spec.resources.procs} process(es), "
        f"team {job.team}, priority {job.priority})"
    )
    if follow:
        _follow(service, job.id)


@app.command("list")
def list_jobs(
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    team: Annotated[str | None, typer.Option(help="Only this team's jobs.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many (newest first).")] = 50,
    offset: Annotated[int, typer.Option(min=0, help="Skip this many (for pages).")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """List jobs, newest first."""
    from rich.table import Table

    from flywheel.training import TrainingService

    service = TrainingService(open_project(config))
    jobs = service.list(state=state, team=team, limit=limit, offset=offset)
    if as_json:
        print(json.dumps([j.to_dict() for j in jobs], indent=2))
        return
    table = Table()
    table.add_column("id", no_wrap=True)
    table.add_column("state", no_wrap=True)
    for name in ("team", "pri", "np", "try", "rst"):
        table.add_column(name)
    table.add_column("submitted", no_wrap=True)
    table.add_column("reason", max_width=40, overflow="ellipsis", no_wrap=True)
    for j in jobs:
        table.add_row(
            j.id,
            _state(str(j.state)),
            j.team,
            str(j.priority),
            str(j.spec.resources.procs),
            str(j.attempt),
            str(j.restarts),
            f"{j.submitted_at:%m-%d %H:%M}",
            j.reason or "",
        )
    console.print(table)


@app.command("show")
def show(
    job_id: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    config: ConfigOption = None,
) -> None:
    """A job's spec, state, placement, history and latest metrics."""
    from flywheel.training import TrainingService

    service = TrainingService(open_project(config))
    job = service.get(job_id)
    events = service.store.events(job_id)
    metrics = service.store.metrics(job_id)
    if as_json:
        data = job.to_dict()
        data["events"] = [
            {
                "at": e.at.isoformat(),
                "from": e.from_state,
                "to": e.to_state,
                "attempt": e.attempt,
                "reason": e.reason,
            }
            for e in events
        ]
        data["metrics"] = [{"key": k, "step": s, "value": v} for k, s, v in metrics]
        print(json.dumps(data, indent=2, default=str))
        return
    console.print(f"[bold]{job.id}[/]  {_state(str(job.state))}  {job.reason}")
    res = job.spec.resources
    console.print(f"entrypoint: {' '.join([job.spec.entrypoint, *job.spec.args])}")
    console.print(
        f"team {job.team}, priority {job.priority}; {res.nodes} node(s) x {res.procs_per_node} "
        f"proc(s), {res.cpus} CPUs, {res.gpus} GPUs; attempt {job.attempt}, torchrun restarts "
        f"{job.restarts}, preemptions {job.preemptions}"
    )
    if job.placement:
        console.print(
            "placement: "
            + ", ".join(
                f"{s.node} ({s.cpus} CPUs"
                + (f", GPUs {','.join(map(str, s.gpus))}" if s.gpus else "")
                + ")"
                for s in job.placement
            )
        )
    if job.run_id:
        console.print(f"tracking run: {job.run_id}")
    if job.model_version:
        console.print(f"registered: models:/{job.model_version}")
    console.print("history:")
    for e in events:
        console.print(
            f"  {e.at:%H:%M:%S}  {e.from_state or '-':>9} -> {e.to_state:<9} "
            f"(attempt {e.attempt}) {e.reason}"
        )
    latest: dict[str, tuple[int, float]] = {}
    for key, step, value in metrics:
        latest[key] = (step, value)
    if latest:
        console.print(
            "metrics: " + ", ".join(f"{k}={v:.6g} @ step {s}" for k, (s, v) in latest.items())
        )


def _print_new(texts: dict[str, str], seen: dict[str, int], rank: str | None) -> None:
    for name in sorted(texts):
        if name.endswith(".stderr.log") and not texts[name][seen.get(name, 0) :].strip():
            seen[name] = len(texts[name])
            continue
        if rank is not None and f"rank{rank}" not in name:
            continue
        new = texts[name][seen.get(name, 0) :]
        if new:
            for line in new.splitlines():
                print(f"[{name}] {line}")
            seen[name] = len(texts[name])


def _follow(service: object, job_id: str, rank: str | None = None) -> None:
    from flywheel.training import TrainingService

    assert isinstance(service, TrainingService)
    seen: dict[str, int] = {}
    attempt = 0
    while True:
        job = service.get(job_id)
        if job.attempt != attempt:
            attempt, seen = job.attempt, {}
        if attempt:
            _print_new(service.logs(job_id, attempt), seen, rank)
        if job.state.terminal:
            console.print(f"{job.id}: {_state(str(job.state))} {job.reason}")
            return
        time.sleep(0.5)


@app.command("logs")
def logs(
    job_id: str,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")
    ] = False,
    rank: Annotated[str | None, typer.Option(help="Only this local rank's output.")] = None,
    attempt: Annotated[int | None, typer.Option(help="Attempt number (default: latest).")] = None,
    config: ConfigOption = None,
) -> None:
    """Print a job's logs per rank (torchrun restarts included); `-f` follows them."""
    from flywheel.training import TrainingService

    service = TrainingService(open_project(config))
    if follow:
        _follow(service, job_id, rank)
        return
    _print_new(service.logs(job_id, attempt), {}, rank)


@app.command("cancel")
def cancel(job_id: str, config: ConfigOption = None) -> None:
    """Cancel a job: at once if queued; running jobs get SIGTERM (they checkpoint) then stop."""
    from flywheel.training import TrainingService

    job = TrainingService(open_project(config)).cancel(job_id)
    console.print(
        f"{job.id}: {_state(str(job.state))}"
        + (" (stopping)" if job.cancel_requested and not job.state.terminal else "")
    )


@app.command("tune")
def tune(
    job_file: Annotated[Path, typer.Argument(help="job.yaml with a `tune:` search space.")],
    trials: Annotated[int, typer.Option(min=1, help="Number of trials.")] = 10,
    parallel: Annotated[int, typer.Option(min=1, help="Trials running at once.")] = 1,
    metric: Annotated[
        str, typer.Option(help="Metric the trials report (runtime.log_metrics).")
    ] = "val_loss",
    direction: Annotated[str, typer.Option(help="minimize or maximize.")] = "minimize",
    study: Annotated[str | None, typer.Option(help="Study name (default: the job name).")] = None,
    scheduler: Annotated[
        bool, typer.Option(help="Run the scheduler in this process while tuning.")
    ] = True,
    config: ConfigOption = None,
) -> None:
    """Hyper-parameter search with Optuna (TPE + median pruning); each trial is a scheduled job."""
    from flywheel.cli._output import progress_bar
    from flywheel.training import TrialOutcome, load_job_spec, run_study

    spec = load_job_spec(job_file)
    project = open_project(config)
    with progress_bar() as bar:
        task = bar.add_task(f"tuning {spec.name}", total=trials)

        def on_trial(o: TrialOutcome) -> None:
            value = "-" if o.value is None else f"{o.value:.6g}"
            params = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.params.items()
            )
            colour = {"complete": "green", "pruned": "yellow", "fail": "red"}[o.state]
            bar.console.print(
                f"trial {o.number:>3} [{colour}]{o.state:<8}[/] {metric}={value:<12} {params}"
                f"  ({o.job_id})"
            )
            bar.advance(task)

        result = run_study(
            project,
            spec,
            trials=trials,
            parallel=parallel,
            metric=metric,
            direction=direction,
            study_name=study,
            run_scheduler=scheduler,
            on_trial=on_trial,
        )
    console.print(
        f"best trial {result.best_trial} ({result.best_job}): {metric}={result.best_value:.6g} "
        f"with {result.best_params}"
    )
    if result.model_version:
        console.print(f"registered models:/{result.model_version}")
