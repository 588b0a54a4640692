"""`flywheel experiments ...`: A/B tests and bandits: define, assign, report."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console, progress_bar

app = typer.Typer(help="A/B tests and bandits: define, assign, report.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
NameArgument = Annotated[str, typer.Argument(help="Experiment name.")]


@contextlib.contextmanager
def _client(config: Path | None) -> Iterator[Any]:
    """An ``Experiments`` client whose exposures are flushed and project closed on exit."""
    from flywheel.experiments import Experiments

    project = open_project(config)
    try:
        with Experiments(project) as ex:
            yield ex
    finally:
        project.close()


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _show_info(info: Any) -> None:
    spec = info.spec
    console.print(
        f"[bold]{info.name}[/] ({info.kind}, {info.status.value}) unit={spec.unit} "
        f"layer={info.layer} traffic={info.layer_share:.1%}"
        + (f" winner={info.winner}" if info.winner else "")
    )
    if spec.description:
        console.print(spec.description)
    table = Table("variant" if not spec.is_bandit else "arm", "share")
    for arm in spec.arms:
        share = "adaptive" if spec.is_bandit else f"{info.shares[arm]:.1%}"
        table.add_row(arm + (" (control)" if arm == spec.control_arm else ""), share)
    console.print(table)
    if spec.bandit is not None:
        b = spec.bandit
        console.print(
            f"bandit: {b.policy.value}, min exploration {b.min_exploration:.1%} per arm"
            + (f", context {list(b.context)}" if b.context else "")
        )
    for m in spec.all_metrics():
        role = "guardrail" if m in spec.guardrails else "metric"
        event = f"{m.event}/{m.denominator}" if m.denominator else m.event
        console.print(f"{role}: {m.name} = {m.kind.value} of {event} ({m.direction} is good)")


@app.command("create")
def create(
    file: Annotated[Path, typer.Argument(help="Experiment definition (YAML).", exists=False)],
    draft: Annotated[bool, typer.Option(help="Store it without starting it.")] = False,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create (and start) an experiment from a YAML definition."""
    from flywheel.experiments import ExperimentSpec

    spec = ExperimentSpec.from_yaml(file)
    with _client(config) as ex:
        info = ex.create(spec, draft=draft)
    if as_json:
        _print_json(info.to_dict())
        return
    console.print(f"created experiment [bold]{info.name}[/] ({info.status.value})")
    _show_info(info)


@app.command("list")
def list_experiments(
    status: Annotated[
        str | None, typer.Option(help="Only draft, running or stopped experiments.")
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Every experiment with its kind, status, layer and variants."""
    with _client(config) as ex:
        infos = ex.list(status)
    if as_json:
        _print_json([i.to_dict() for i in infos])
        return
    table = Table("experiment", "kind", "status", "layer", "traffic", "variants", "created")
    for i in infos:
        table.add_row(
            i.name,
            i.kind,
            i.status.value,
            i.layer,
            f"{i.layer_share:.0%}",
            ", ".join(i.spec.arms),
            f"{i.created_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)


@app.command("show")
def show(name: NameArgument, config: ConfigOption = None, as_json: JsonOption = False) -> None:
    """An experiment's definition, status and allocation."""
    with _client(config) as ex:
        info = ex.get(name)
    if as_json:
        _print_json(info.to_dict())
        return
    _show_info(info)


@app.command("start")
def start(name: NameArgument, config: ConfigOption = None) -> None:
    """Start a draft experiment."""
    with _client(config) as ex:
        info = ex.start(name)
    console.print(f"started experiment {info.name}")


@app.command("stop")
def stop(
    name: NameArgument,
    winner: Annotated[
        str | None, typer.Option(help="The variant every unit gets from now on (default: control).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Stop an experiment and release its layer traffic."""
    with _client(config) as ex:
        info = ex.stop(name, winner=winner)
    console.print(
        f"stopped experiment {info.name}; every unit now gets {winner or info.spec.control_arm}"
    )


@app.command("traffic")
def traffic(
    name: NameArgument,
    weight: Annotated[
        list[str] | None, typer.Option("--weight", "-w", help="VARIANT=WEIGHT (repeatable).")
    ] = None,
    share: Annotated[
        float | None, typer.Option("--traffic", help="The experiment's share of its layer.")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Change variant weights and/or traffic, moving as few units as possible."""
    from flywheel.experiments import InvalidExperiment

    weights: dict[str, float] | None = None
    if weight:
        weights = {}
        for item in weight:
            variant, sep, value = item.partition("=")
            try:
                weights[variant] = float(value)
            except ValueError:
                raise InvalidExperiment("--weight", f"{item!r} is not VARIANT=NUMBER") from None
            if not sep:
                raise InvalidExperiment("--weight", f"{item!r} is not VARIANT=NUMBER")
    with _client(config) as ex:
        info, moved = ex.update_traffic(name, weights=weights, traffic=share)
    console.print(f"updated {info.name}: {moved:.2%} of its units changed variant")
    _show_info(info)


def _context(value: str | None) -> dict[str, Any] | None:
    from flywheel.experiments import InvalidExperiment

    if value is None:
        return None
    try:
        data = json.loads(value)
    except json.JSONDecodeError as exc:
        raise InvalidExperiment("--context", f"is not valid JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise InvalidExperiment("--context", "must be a JSON object")
    return data


@app.command("assign")
def assign(
    name: NameArgument,
    unit_ids: Annotated[list[str], typer.Argument(help="Unit ids (user ids, session ids, ...).")],
    context: Annotated[
        str | None, typer.Option(help='Context as JSON, e.g. \'{"country": "US"}\'.')
    ] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Assign units (logs an exposure for each unit that is in the experiment)."""
    ctx = _context(context)
    with _client(config) as ex:
        results = [ex.assign(name, unit, ctx) for unit in unit_ids]
    if as_json:
        _print_json([a.to_dict() for a in results])
        return
    table = Table("unit", "variant", "propensity", "in experiment", "decision id")
    for a in results:
        table.add_row(
            a.unit_id,
            a.variant,
            f"{a.propensity:.3f}",
            "yes" if a.in_experiment else f"no ({a.reason})",
            a.decision_id or "",
        )
    console.print(table)


@app.command("log-reward")
def log_reward(
    name: NameArgument,
    unit_id: Annotated[str, typer.Argument(help="The unit that earned the reward.")],
    reward: Annotated[float, typer.Argument(help="The reward (e.g. 1 for a click, 0 for none).")],
    decision_id: Annotated[
        str | None, typer.Option(help="The decision it rewards (default: the unit's latest).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Log one reward; a bandit's shared state is updated at once."""
    with _client(config) as ex:
        ex.log_reward(name, unit_id, reward, decision_id=decision_id)
    console.print(f"logged reward {reward:g} for {unit_id} in {name}")


@app.command("log-events")
def log_events(
    file: Annotated[
        Path, typer.Argument(help="JSON lines: unit_id, event_type, value, ts ('-' for stdin).")
    ],
    batch: Annotated[int, typer.Option(min=1, help="Events per transaction.")] = 5_000,
    config: ConfigOption = None,
) -> None:
    """Load metric events (clicks, purchases, ...) from a JSON-lines file."""
    from flywheel.experiments import InvalidExperiment

    if str(file) == "-":
        lines = sys.stdin.read().splitlines()
    else:
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise InvalidExperiment("file", f"cannot read {file}: {exc.strerror}") from None
    events = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise InvalidExperiment(f"line {number}", f"is not JSON: {exc.msg}") from None
    inserted = 0
    with _client(config) as ex, progress_bar(transient=True) as progress:
        task = progress.add_task("logging events", total=len(events))
        for start in range(0, len(events), batch):
            inserted += ex.log_events(events[start : start + batch])
            progress.advance(task, len(events[start : start + batch]))
    console.print(f"stored {inserted} new events of {len(events)}")


@app.command("consume")
def consume(
    stream: Annotated[str, typer.Argument(help="Event-log stream to read (JSON events).")],
    unit_field: Annotated[str, typer.Option(help="Field holding the unit id.")] = "user_id",
    type_field: Annotated[str, typer.Option(help="Field holding the event type.")] = "event_type",
    event_type: Annotated[
        str | None, typer.Option(help="One event type for every event of the stream.")
    ] = None,
    follow: Annotated[bool, typer.Option(help="Keep reading until interrupted.")] = False,
    config: ConfigOption = None,
) -> None:
    """Store a stream's events as experiment events (and bandit rewards), exactly once."""
    from flywheel.experiments import ConsumeStats, EventStreamConsumer

    total = ConsumeStats()
    with _client(config) as ex:
        consumer = EventStreamConsumer(
            ex, stream, unit_field=unit_field, type_field=type_field, event_type=event_type
        )
        try:
            while True:
                stats = consumer.poll(count=5_000, block_ms=1_000 if follow else 0)
                total.add(stats)
                if not stats.read and not follow:
                    break
        except KeyboardInterrupt:
            pass
        finally:
            consumer.close()
    console.print(
        f"read {total.read} events from {stream}: stored {total.stored}, skipped {total.skipped}"
        f", bandit updates {total.bandits_updated}"
    )


@app.command("update-bandit")
def update_bandit(name: NameArgument, config: ConfigOption = None) -> None:
    """Fold pending rewards into a bandit's state (servers do this every second)."""
    with _client(config) as ex:
        state = ex.update_bandit(name)
    console.print(
        f"bandit {name} at state version {state.version}: {int(state.pulls.sum())} rewards"
    )


@app.command("report")
def report(
    name: NameArgument,
    pre_period_days: Annotated[
        float, typer.Option(min=0.0, help="Days before exposure used as the CUPED covariate.")
    ] = 14.0,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Per-variant units, exposures and metrics with tests, CUPED, SRM and guardrails."""
    with _client(config) as ex:
        result = ex.report(name, pre_period_days=pre_period_days)
    if as_json:
        _print_json(result.to_dict())
        return
    for renderable in result.render():
        console.print(renderable)


@app.command("history")
def history(
    name: NameArgument,
    metric: Annotated[
        str | None, typer.Option(help="Metric to follow (default: the primary metric).")
    ] = None,
    buckets: Annotated[int, typer.Option(min=1, max=500, help="Points over time.")] = 20,
    since: Annotated[float | None, typer.Option(min=0, help="From this time (Unix s).")] = None,
    until: Annotated[float | None, typer.Option(min=0, help="To this time (Unix s).")] = None,
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """A metric's difference, p-value and always-valid p-value over time; a bandit's allocation."""
    with _client(config) as ex:
        result = ex.history(name, metric=metric, buckets=buckets, since=since, until=until)
    if as_json:
        _print_json(result.to_dict())
        return
    for renderable in result.render():
        console.print(renderable)


@app.command("evaluate")
def evaluate(
    name: NameArgument,
    target: Annotated[
        str, typer.Option(help="'arm:NAME', 'uniform' or 'current' (the bandit's policy).")
    ],
    config: ConfigOption = None,
    as_json: JsonOption = False,
) -> None:
    """Offline evaluation of a policy on the logged decisions: replay, IPS, SNIPS, DR."""
    with _client(config) as ex:
        result = ex.evaluate(name, target)
    if as_json:
        _print_json(result.to_dict())
        return
    table = Table("estimator", "value", "95% CI", "decisions used", title=f"{name}: {target}")
    for label, est in (
        ("logged policy", result.logged_value),
        ("replay", result.replay),
        ("IPS", result.ips),
        ("SNIPS", result.snips),
        ("doubly robust", result.doubly_robust),
    ):
        table.add_row(
            label, f"{est.value:.4g}", f"[{est.ci_low:.4g}, {est.ci_high:.4g}]", str(est.n)
        )
    console.print(table)
