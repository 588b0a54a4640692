"""HTTP routes under ``/experiments``: define, assign, log, update bandits, report, evaluate.

Reads need a ``reader`` token (open on loopback unless ``auth.required``); everything that writes
(creating, stopping, changing traffic, assigning, which logs an exposure, and logging events or
rewards) needs a ``writer`` token. Errors are ``{"error": "..."}`` with 400/404/409.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any, cast

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field

from flywheel.auth import Principal, require_reader, require_writer
from flywheel.experiments._client import Experiments
from flywheel.project import Project, current_project

log = logging.getLogger(__name__)

_errors: dict[int | str, dict[str, Any]] = {
    400: {"description": "Bad input; the message names the field."},
    404: {"description": "No such experiment."},
    409: {"description": "Conflicts with the experiment's state or its layer's free traffic."},
}

router = APIRouter(prefix="/experiments", tags=["experiments"])


def experiments_for(project: Project) -> Experiments:
    """The one ``Experiments`` client of this process for ``project`` (kept on the project)."""
    return project.attached("experiments.client", lambda: Experiments(project))


def _client(project: Project = Depends(current_project)) -> Experiments:
    return experiments_for(project)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StopBody(_Body):
    winner: str | None = Field(default=None, description="Variant every unit gets from now on.")


class TrafficBody(_Body):
    weights: dict[str, float] | None = Field(default=None, description="New variant weights.")
    traffic: float | None = Field(default=None, description="Share of the layer, (0, 1].")


class AssignBody(_Body):
    unit_id: str = Field(min_length=1, max_length=200)
    context: dict[str, Any] | None = None


class RewardIn(_Body):
    unit_id: str = Field(min_length=1, max_length=200)
    reward: float
    decision_id: str | None = Field(default=None, max_length=40)
    ts: float | None = None
    event_id: str | None = Field(default=None, max_length=64)


class RewardsBody(_Body):
    rewards: list[RewardIn] = Field(max_length=100_000)


class EventIn(_Body):
    unit_id: str = Field(min_length=1, max_length=200)
    event_type: str = Field(min_length=1, max_length=100)
    value: float = 1.0
    ts: float | None = None
    event_id: str | None = Field(default=None, max_length=64)
    experiment: str | None = Field(default=None, max_length=100)
    decision_id: str | None = Field(default=None, max_length=40)


class EventsBody(_Body):
    events: list[EventIn] = Field(max_length=100_000)


class EvaluateBody(_Body):
    target: str = Field(description="'uniform', 'current' or 'arm:NAME'.")


@router.get("", responses=_errors)
def list_experiments(
    status: str | None = Query(default=None, description="draft, running or stopped"),
    client: Experiments = Depends(_client),
    _: Principal = Depends(require_reader),
) -> list[dict[str, Any]]:
    """Every experiment, oldest first."""
    return [info.to_dict() for info in client.list(status)]


@router.post("", status_code=201, responses=_errors)
def create_experiment(
    spec: dict[str, Any],
    draft: bool = Query(default=False, description="Store without starting."),
    client: Experiments = Depends(_client),
    _: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Create (and start) an experiment from its definition (the YAML fields, as JSON)."""
    return client.create(spec, draft=draft).to_dict()


@router.post("/events", responses=_errors)
def log_events(
    body: EventsBody, client: Experiments = Depends(_client), _: Principal = Depends(require_writer)
) -> dict[str, Any]:
    """Store metric events (clicks, purchases, ...) in one transaction."""
    inserted = client.log_events([e.model_dump() for e in body.events])
    return {"received": len(body.events), "inserted": inserted}


@router.get("/{name}", responses=_errors)
def show_experiment(
    name: str, client: Experiments = Depends(_client), _: Principal = Depends(require_reader)
) -> dict[str, Any]:
    """One experiment: definition, status, allocation."""
    return client.get(name).to_dict()


@router.post("/{name}/start", responses=_errors)
def start_experiment(
    name: str, client: Experiments = Depends(_client), _: Principal = Depends(require_writer)
) -> dict[str, Any]:
    """Start a draft experiment."""
    return client.start(name).to_dict()


@router.post("/{name}/stop", responses=_errors)
def stop_experiment(
    name: str,
    body: StopBody | None = None,
    client: Experiments = Depends(_client),
    _: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Stop an experiment; every unit then gets the winner (default: control)."""
    return client.stop(name, winner=body.winner if body else None).to_dict()


@router.post("/{name}/traffic", responses=_errors)
def change_traffic(
    name: str,
    body: TrafficBody,
    client: Experiments = Depends(_client),
    _: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Change weights and/or traffic; answers with the share of units that moved (minimal)."""
    info, moved = client.update_traffic(name, weights=body.weights, traffic=body.traffic)
    return {"experiment": info.to_dict(), "moved_share": moved}


@router.post("/{name}/assign", responses=_errors)
def assign(
    name: str,
    body: AssignBody,
    client: Experiments = Depends(_client),
    _: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """The unit's variant and its propensity (logs an exposure when the unit is in)."""
    return client.assign(name, body.unit_id, body.context).to_dict()


@router.post("/{name}/rewards", responses=_errors)
def log_rewards(
    name: str,
    body: RewardsBody,
    client: Experiments = Depends(_client),
    _: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Log rewards; a bandit folds them into its shared state at once."""
    rows = [r.model_dump(exclude_none=True) for r in body.rewards]
    inserted = client.log_rewards(name, rows)
    return {"received": len(rows), "inserted": inserted}


@router.get("/{name}/report", responses=_errors)
def report(
    name: str,
    pre_period_days: float = Query(default=14.0, ge=0.0, le=3650.0),
    client: Experiments = Depends(_client),
    _: Principal = Depends(require_reader),
) -> dict[str, Any]:
    """Units, exposures and metrics per variant, tests, CUPED, always-valid p-values, SRM."""
    return cast(dict[str, Any], client.report(name, pre_period_days=pre_period_days).to_dict())


@router.get("/{name}/history", responses=_errors)
def history(
    name: str,
    metric: str | None = Query(default=None, description="A metric name (default: the primary)."),
    buckets: int = Query(default=50, ge=1, le=500, description="Points over the experiment."),
    since: float | None = Query(default=None, ge=0, le=1e11, description="Unix seconds."),
    until: float | None = Query(default=None, ge=0, le=1e11, description="Unix seconds."),
    client: Experiments = Depends(_client),
    _: Principal = Depends(require_reader),
) -> dict[str, Any]:
    """The metric's comparison over time (units, means, difference with CI, p-value and
    always-valid p-value per point); for a bandit, its arm probabilities at every update.
    ``since``/``until`` spread the points over that time range only (each is still the
    analysis of everything known at its time)."""
    history = client.history(name, metric=metric, buckets=buckets, since=since, until=until)
    return cast(dict[str, Any], history.to_dict())


@router.get("/{name}/bandit", responses=_errors)
def bandit(
    name: str, client: Experiments = Depends(_client), _: Principal = Depends(require_reader)
) -> dict[str, Any]:
    """A bandit's shared state and, if it is not contextual, its current arm probabilities."""
    info = client.get(name)
    state = client.bandit_state(name)
    out: dict[str, Any] = {"experiment": name, "state": state.to_dict(), "probabilities": None}
    if info.spec.bandit is not None and not info.spec.bandit.policy.contextual:
        probs = client.policy(name).probabilities()
        out["probabilities"] = dict(zip(info.spec.arms, probs.tolist(), strict=True))
    return out


@router.post("/{name}/evaluate", responses=_errors)
def evaluate(
    name: str,
    body: EvaluateBody,
    client: Experiments = Depends(_client),
    _: Principal = Depends(require_reader),
) -> dict[str, Any]:
    """Off-policy estimates (replay, IPS, SNIPS, doubly robust) of a target policy."""
    return cast(dict[str, Any], client.evaluate(name, body.target).to_dict())


@contextlib.asynccontextmanager
async def bandit_updater(project: Project) -> AsyncIterator[None]:
    """``flywheel up`` service: every second, folds pending rewards into bandit state and
    consumes the event-log streams named in ``experiments.event_streams``."""
    from flywheel.experiments._stream import EventStreamConsumer

    client = experiments_for(project)
    settings = project.config.experiments
    consumers = [
        EventStreamConsumer(
            client, stream, unit_field=settings.unit_field, type_field=settings.type_field
        )
        for stream in settings.event_streams
    ]
    stop = asyncio.Event()

    def work() -> None:
        for consumer in consumers:
            while consumer.poll(count=5_000).read:
                pass
        client.update_all_bandits()

    async def loop() -> None:
        while not stop.is_set():
            try:
                await asyncio.to_thread(work)
            except Exception as exc:  # a store is down: retry in a second
                log.warning("experiments background work failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        stop.set()
        await task
        await asyncio.to_thread(client.close)
        for consumer in consumers:
            consumer.close()


__all__ = ["bandit_updater", "experiments_for", "router"]
