"""The reconciler: which version serves which name, kept current by polling the stores.

It owns the routing state of one process: each served model's ``production`` version, the
endpoint table, and this replica's canary gate statistics. ``target`` answers from memory (no
database query on the request path). ``reconcile_once`` (run every ``serving.poll_interval_ms``)
polls:

  * the registry's ``audit_log(since_id=...)``: a promotion or rollback of a model served by its
    stage loads the new version, warms it, then swaps it in (in-flight requests finish on the
    old one, which is retired after a grace period);
  * ``serving_events``' newest id: any endpoint change reloads the endpoint table and preloads
    its versions;
  * running canaries: this replica's gate statistics are flushed to the store, the totals of
    all replicas are evaluated, and the winner of an optimistic update advances, completes or
    rolls back the rollout (recording the reason).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace

from flywheel.errors import NotFoundError
from flywheel.serving import _metrics as m
from flywheel.serving._background import BackgroundTasks
from flywheel.serving._canary import (
    Action,
    GateStats,
    LatencyHistogram,
    RolloutState,
    apply,
    evaluate,
)
from flywheel.serving._endpoints import CanaryCounts, Endpoint, EndpointStore, Route
from flywheel.serving._errors import EndpointConflict, ModelUnavailable, UnknownModel
from flywheel.serving._pool import ServedVersion, VersionKey, VersionPool
from flywheel.serving._runtime import ModelSource

log = logging.getLogger("flywheel.serving")

PRODUCTION = "production"
CanaryKey = tuple[str, str, int]  # (endpoint, rollout id, step)


class Reconciler:
    """Stages, endpoints and canaries of one process (see the module docstring)."""

    def __init__(
        self,
        pool: VersionPool,
        source: ModelSource,
        store: EndpointStore,
        *,
        replica_id: str,
        background: BackgroundTasks,
    ) -> None:
        self.pool = pool
        self.source = source
        self.store = store
        self.replica_id = replica_id
        self.background = background
        self._production: dict[str, int] = {}
        self._endpoints: dict[str, Endpoint] = {}
        self._audit_id: int | None = None
        self._event_id = -1
        self._canary_counts: dict[CanaryKey, CanaryCounts] = {}
        self._canary_hist: dict[CanaryKey, LatencyHistogram] = {}
        self._canary_dirty = False

    def reset(self) -> None:
        """Forget the routing state (it is read again from the stores)."""
        self._production.clear()
        self._event_id = -1

    # -- routing -------------------------------------------------------------------------------

    def endpoint(self, name: str) -> Endpoint | None:
        return self._endpoints.get(name)

    def production(self, name: str) -> int | None:
        """The production version of ``name`` this process serves, if it knows one."""
        return self._production.get(name)

    async def production_version(self, name: str) -> ServedVersion:
        """The version of ``name`` in stage production (resolved once, then kept current)."""
        version = self._production.get(name)
        if version is not None:
            return await self.pool.get_version(name, version)
        await self.pool.ensure_started()
        try:
            mv = await asyncio.to_thread(self.source.resolve, f"models:/{name}@{PRODUCTION}")
        except NotFoundError:
            raise UnknownModel(
                f"no endpoint or model named {name!r} with a {PRODUCTION} version"
            ) from None
        version = int(mv.version)
        served = await self.pool.get_version(name, version)
        self._production[name] = version
        return served

    async def target(
        self, name: str, version: str | None, key: str | None
    ) -> tuple[ServedVersion, Endpoint | None]:
        """The version that serves a request to ``name`` (and the endpoint, if ``name`` is one)."""
        endpoint = self._endpoints.get(name)
        if version is not None:
            number = (
                int(version) if version.isascii() and version.isdigit() and len(version) < 10 else 0
            )
            if number < 1:
                raise UnknownModel(f"version {version!r} of {name!r} is not a version number")
            model = endpoint.model if endpoint is not None else name
            if endpoint is not None and number not in endpoint.versions():
                raise UnknownModel(f"endpoint {name!r} does not serve version {number}")
            return await self.pool.get_version(model, number), endpoint
        if endpoint is not None:
            chosen = endpoint.choose(key)
            try:
                return await self.pool.get_version(endpoint.model, chosen), endpoint
            except ModelUnavailable:
                self.count_canary(endpoint, chosen, 503, 0.0)  # a candidate that cannot load
                raise
        return await self.production_version(name), None

    def in_use(self, key: VersionKey) -> bool:
        """Whether a stage or an endpoint still routes to the version."""
        name, version = key
        if self._production.get(name) == version:
            return True
        return any(ep.model == name and version in ep.versions() for ep in self._endpoints.values())

    async def preload_production(self) -> None:
        """Load every production version the registry knows of (failures are logged)."""
        staged = getattr(self.source, "staged", None)
        pairs = await asyncio.to_thread(staged, PRODUCTION) if staged is not None else []
        for name, version in pairs:
            try:
                await self.pool.get_version(name, version)
                self._production.setdefault(name, version)
            except Exception as exc:
                log.warning("cannot preload %s/%s: %s", name, version, exc)

    # -- canary statistics -----------------------------------------------------------------------

    def count_canary(self, endpoint: Endpoint, version: int, status: int, elapsed: float) -> None:
        """Count one answer of a running canary's candidate for the rollout gates."""
        plan = endpoint.canary
        if plan is None or plan.state is not RolloutState.running or version != plan.candidate:
            return
        if 400 <= status < 500 and status != 429:
            return  # the client's fault, not the candidate's
        key = (endpoint.name, plan.rollout_id, plan.step)
        counts = self._canary_counts.get(key)
        if counts is None:
            counts = self._canary_counts[key] = CanaryCounts()
            self._canary_hist[key] = LatencyHistogram()
        counts.requests += 1
        if status >= 500:
            counts.errors += 1
        else:
            self._canary_hist[key].observe(elapsed * 1000)
        self._canary_dirty = True

    def flush_canary_counts(self) -> None:
        """Write this replica's canary counts to the store (blocking; run in a thread)."""
        counts = {
            key: CanaryCounts(c.requests, c.errors, list(self._canary_hist[key].counts))
            for key, c in self._canary_counts.items()
        }
        self.store.flush_canary_counts(self.replica_id, counts)

    # -- reconciling -----------------------------------------------------------------------------

    async def run_forever(self, interval_s: float) -> None:
        while True:
            try:
                await self.reconcile_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("serving reconciler: %s", exc)
            await asyncio.sleep(interval_s)

    async def reconcile_once(self) -> None:
        """One pass: stages, endpoints, canaries (see the module docstring)."""
        for step in (self.refresh_stages, self.refresh_endpoints, self.drive_canaries):
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one failing source must not stop the others
                log.warning("serving reconciler (%s): %s", step.__name__, exc)

    async def refresh_stages(self) -> None:
        since = self._audit_id if self._audit_id is not None else 0
        entries = await asyncio.to_thread(self.source.audit_log, since)
        if not entries:
            if self._audit_id is None:
                self._audit_id = 0
            return
        self._audit_id = max(int(e.id) for e in entries)
        if since == 0 and not self._production:
            return
        changed = {e.model for e in entries if e.model in self._production}
        for name in changed:
            try:
                mv = await asyncio.to_thread(self.source.resolve, f"models:/{name}@{PRODUCTION}")
            except NotFoundError:
                self._production.pop(name, None)
                log.info("model %s has no %s version any more", name, PRODUCTION)
                continue
            new = int(mv.version)
            if self._production.get(name) != new:
                await self.pool.get_version(name, new)  # load and warm before switching
                old = self._production.get(name)
                self._production[name] = new
                log.info("model %s: %s is now v%s (was v%s)", name, PRODUCTION, new, old)
                if old is not None:
                    self.pool.retire_later((name, old), self.in_use)

    async def refresh_endpoints(self) -> None:
        last = await asyncio.to_thread(self.store.last_event_id)
        if last == self._event_id:
            return
        endpoints = await asyncio.to_thread(self.store.list)
        previous = self._endpoints
        self._endpoints = {ep.name: ep for ep in endpoints}
        self._event_id = last
        for ep in endpoints:
            plan = ep.canary
            if plan is not None:
                m.CANARY_STEP.labels(ep.name, ep.model, str(plan.candidate)).set(plan.weight)
            for version in ep.versions():
                if (ep.model, version) not in self.pool:
                    self.background.spawn(self._preload(ep.model, version))
        for name, ep in previous.items():
            for version in ep.versions():
                if not self.in_use((ep.model, version)):
                    self.pool.retire_later((ep.model, version), self.in_use)
            if name not in self._endpoints:
                log.info("endpoint %s removed", name)

    async def _preload(self, model: str, version: int) -> None:
        try:
            await self.pool.get_version(model, version)
        except Exception as exc:
            log.warning("cannot preload %s/%s: %s", model, version, exc)

    async def drive_canaries(self) -> None:
        if self._canary_dirty:
            self._canary_dirty = False
            await asyncio.to_thread(self.flush_canary_counts)
        for ep in list(self._endpoints.values()):
            plan = ep.canary
            if plan is None or plan.state is not RolloutState.running:
                continue
            requests, errors, hists = await asyncio.to_thread(
                self.store.canary_totals, ep.name, plan.rollout_id, plan.step
            )
            latency = LatencyHistogram()
            for counts in hists:
                latency.merge(LatencyHistogram(counts))
            decision = evaluate(plan, GateStats(requests, errors, latency))
            if decision.action is Action.hold:
                continue
            new_plan = apply(plan, decision)
            routes = ep.routes
            if new_plan.state is RolloutState.succeeded:
                routes = (Route(plan.candidate, 100.0),)
            elif new_plan.state is RolloutState.rolled_back:
                routes = (Route(plan.baseline, 100.0),)
            updated = replace(ep, routes=routes, canary=new_plan)
            try:
                await asyncio.to_thread(
                    self.store.put,
                    updated,
                    kind=f"canary_{decision.action.value}",
                    actor=f"canary@{self.replica_id}",
                    expect_revision=ep.revision,
                    detail={"reason": decision.reason},
                )
            except EndpointConflict:
                continue  # another replica moved it first
            log.info("endpoint %s: canary %s: %s", ep.name, decision.action.value, decision.reason)
        # Refresh now so that this replica routes by the new state without waiting a tick.
        await self.refresh_endpoints()


__all__ = ["PRODUCTION", "Reconciler"]
