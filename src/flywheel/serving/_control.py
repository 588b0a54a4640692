"""Endpoint operations shared by the CLI and the HTTP control API.

Each writes the endpoint and an event in one transaction; every replica picks the change up on
its next poll. Versions are checked against the registry before anything is written.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from flywheel.project import Project
from flywheel.serving._canary import CanaryPlan, RolloutState, parse_steps
from flywheel.serving._endpoints import Endpoint, EndpointStore, Route, Shadow, new_rollout_id
from flywheel.serving._errors import EndpointConflict, ServingError, UnknownModel
from flywheel.serving._runtime import ModelSource, RegistrySource

MAX_VERSION = 2**31 - 1


def _check_version(source: ModelSource, model: str, version: int) -> None:
    if not 1 <= version <= MAX_VERSION:
        raise UnknownModel(f"model {model!r} has no version {version}")
    try:
        source.resolve(f"models:/{model}/{version}")
    except Exception as exc:
        if getattr(exc, "status_code", None) == 404:
            raise UnknownModel(f"model {model!r} has no version {version}") from None
        raise


def _production(source: ModelSource, model: str) -> int | None:
    try:
        return int(source.resolve(f"models:/{model}@production").version)
    except Exception as exc:
        if getattr(exc, "status_code", None) == 404:
            return None
        raise


def deploy(
    project: Project,
    endpoint: str,
    *,
    version: int,
    model: str | None = None,
    canary: str | tuple[int, ...] | None = None,
    step_requests: int = 100,
    max_error_rate: float = 0.01,
    max_p99_ms: float | None = None,
    actor: str = "",
    source: ModelSource | None = None,
) -> Endpoint:
    """Point ``endpoint`` at ``version`` of ``model``: at once, or as a canary rollout.

    With ``canary`` (steps like ``"5,25,50,100"``) the current primary version (or the model's
    production version for a new endpoint) stays the baseline while the candidate moves through
    the steps, gated on ``step_requests``, ``max_error_rate`` and ``max_p99_ms``.
    """
    store = EndpointStore(project.db)
    source = source or RegistrySource(project)
    current = store.find(endpoint)
    model = model or (current.model if current is not None else endpoint)
    if current is not None and current.model != model:
        raise ServingError(
            f"endpoint {endpoint!r} serves model {current.model!r}, not {model!r}; "
            "delete it first to serve another model"
        )
    if step_requests < 1:
        raise ServingError(f"step_requests must be >= 1, got {step_requests}")
    if not (0.0 <= max_error_rate <= 1.0):
        raise ServingError(f"max_error_rate must be in [0, 1], got {max_error_rate}")
    if max_p99_ms is not None and max_p99_ms <= 0:
        raise ServingError(f"max_p99_ms must be > 0, got {max_p99_ms}")
    _check_version(source, model, version)
    steps = parse_steps(canary) if isinstance(canary, str) else canary
    if current is not None and current.canary is not None and current.canary.active:
        raise EndpointConflict(
            f"endpoint {endpoint!r} has a canary of v{current.canary.candidate} "
            f"{current.canary.state.value}; roll it back first (`flywheel serve rollback "
            f"{endpoint}`)"
        )
    baseline = current.primary_version if current is not None else _production(source, model)
    plan = None
    if steps and baseline is not None and baseline != version:
        plan = CanaryPlan(
            rollout_id=new_rollout_id(),
            baseline=baseline,
            candidate=version,
            steps=tuple(steps),
            step_requests=step_requests,
            max_error_rate=max_error_rate,
            max_p99_ms=max_p99_ms,
        )
        routes: tuple[Route, ...] = (Route(baseline, 100.0),)
    else:
        routes = (Route(version, 100.0),)
    shadow = current.shadow if current is not None else None
    ep = Endpoint(name=endpoint, model=model, routes=routes, shadow=shadow, canary=plan)
    kind = "canary_start" if plan is not None else "deploy"
    return store.put(
        ep,
        kind=kind,
        actor=actor,
        expect_revision=current.revision if current is not None else None,
    )


def set_routes(
    project: Project,
    endpoint: str,
    *,
    model: str,
    routes: list[tuple[int, float]],
    shadow: tuple[int, float] | None = None,
    actor: str = "",
    source: ModelSource | None = None,
) -> Endpoint:
    """Create or replace an endpoint with a weighted split (and an optional shadow)."""
    source = source or RegistrySource(project)
    for version, _ in routes:
        _check_version(source, model, version)
    if shadow is not None:
        _check_version(source, model, shadow[0])
    store = EndpointStore(project.db)
    current = store.find(endpoint)
    if current is not None and current.canary is not None and current.canary.active:
        raise EndpointConflict(
            f"endpoint {endpoint!r} has a canary {current.canary.state.value}; roll it back first"
        )
    ep = Endpoint(
        name=endpoint,
        model=model,
        routes=tuple(Route(v, float(w)) for v, w in routes),
        shadow=None if shadow is None else Shadow(shadow[0], float(shadow[1])),
    )
    return store.put(ep, kind="update", actor=actor)


def set_shadow(
    project: Project,
    endpoint: str,
    *,
    version: int | None,
    share: float = 1.0,
    actor: str = "",
    source: ModelSource | None = None,
) -> Endpoint:
    """Mirror ``share`` of ``endpoint``'s traffic to ``version`` (None: stop mirroring)."""
    store = EndpointStore(project.db)
    current = store.get(endpoint)
    if version is not None:
        _check_version(source or RegistrySource(project), current.model, version)
    shadow = None if version is None else Shadow(version, float(share))
    return store.put(
        replace(current, shadow=shadow),
        kind="shadow",
        actor=actor,
        expect_revision=current.revision,
    )


def rollback(project: Project, endpoint: str, *, reason: str = "", actor: str = "") -> Endpoint:
    """Abort a running or paused canary: all traffic back to the baseline, ``reason`` recorded."""
    store = EndpointStore(project.db)
    current = store.get(endpoint)
    plan = current.canary
    if plan is None or not plan.active:
        raise EndpointConflict(f"endpoint {endpoint!r} has no canary running or paused")
    why = reason or "rolled back by hand"
    new_plan = replace(plan, state=RolloutState.rolled_back, reason=why)
    return store.put(
        replace(current, routes=(Route(plan.baseline, 100.0),), canary=new_plan),
        kind="canary_rollback",
        actor=actor,
        expect_revision=current.revision,
        detail={"reason": why},
    )


def _set_canary_state(
    project: Project,
    endpoint: str,
    *,
    want: RolloutState,
    reason: str,
    actor: str,
) -> Endpoint:
    store = EndpointStore(project.db)
    current = store.get(endpoint)
    plan = current.canary
    frm = RolloutState.running if want is RolloutState.paused else RolloutState.paused
    if plan is None or plan.state is not frm:
        state = "no canary" if plan is None else f"a canary that is {plan.state.value}"
        raise EndpointConflict(
            f"endpoint {endpoint!r} has {state}; only a {frm.value} canary can be "
            f"{'paused' if want is RolloutState.paused else 'resumed'}"
        )
    verb = "paused" if want is RolloutState.paused else "resumed"
    why = reason or f"{verb} by hand"
    return store.put(
        replace(current, canary=replace(plan, state=want, reason=why)),
        kind="canary_pause" if want is RolloutState.paused else "canary_resume",
        actor=actor,
        expect_revision=current.revision,
        detail={"reason": why},
    )


def pause(project: Project, endpoint: str, *, reason: str = "", actor: str = "") -> Endpoint:
    """Pause a running canary: its traffic share stays as it is, and it neither advances nor
    rolls back on its own until resumed (answers meanwhile are not counted). ``reason`` is
    recorded in the endpoint's events. Raises ``EndpointConflict`` unless a canary is running."""
    return _set_canary_state(
        project, endpoint, want=RolloutState.paused, reason=reason, actor=actor
    )


def resume(project: Project, endpoint: str, *, reason: str = "", actor: str = "") -> Endpoint:
    """Resume a paused canary at the step it was paused in (its gates are evaluated again).
    Raises ``EndpointConflict`` unless the canary is paused."""
    return _set_canary_state(
        project, endpoint, want=RolloutState.running, reason=reason, actor=actor
    )


def describe(project: Project, endpoint: str, events: int = 20) -> dict[str, Any]:
    """An endpoint with its latest events (newest last)."""
    store = EndpointStore(project.db)
    ep = store.get(endpoint)
    history = store.events(endpoint)
    return {**ep.to_dict(), "events": [e.to_dict() for e in history[-events:]]}


__all__ = ["deploy", "describe", "pause", "resume", "rollback", "set_routes", "set_shadow"]
