"""The reconciler alone (a fake model source, the real endpoint store): routing from memory,
stage changes picked up from the audit log, endpoint changes, and the canary gate counts."""

from __future__ import annotations

import asyncio

import pytest

from flywheel.project import Project
from flywheel.serving import RolloutState, UnknownModel, deploy, pause, resume, set_routes
from flywheel.serving._background import BackgroundTasks
from flywheel.serving._endpoints import EndpointStore
from flywheel.serving._pool import VersionPool
from flywheel.serving._reconciler import Reconciler
from tests.serving.conftest import FakeModel, FakeSource, linear


def _reconciler(project: Project, source: FakeSource) -> Reconciler:
    background = BackgroundTasks()
    pool = VersionPool(source, project.config.serving, background)
    pool.start()
    return Reconciler(
        pool, source, EndpointStore(project.db), replica_id="r1", background=background
    )


def test_a_model_name_routes_to_production_and_follows_a_promotion(
    project: Project, source: FakeSource
) -> None:
    for v in (1, 2):
        source.add("m", v, FakeModel(linear(float(v))))
    source.set_stage("m", 1, "production")

    async def scenario() -> None:
        rec = _reconciler(project, source)
        await rec.reconcile_once()
        served, endpoint = await rec.target("m", None, None)
        assert (served.version, endpoint) == (1, None)
        assert (await rec.target("m", "2", None))[0].version == 2  # an explicit version
        source.set_stage("m", 2, "production")
        assert (await rec.target("m", None, None))[0].version == 1  # memory, until reconciled
        await rec.reconcile_once()
        assert (await rec.target("m", None, None))[0].version == 2
        assert rec.in_use(("m", 2)) and not rec.in_use(("m", 1))
        with pytest.raises(UnknownModel, match="not a version number"):
            await rec.target("m", "²", None)
        with pytest.raises(UnknownModel, match="no endpoint or model named 'nope'"):
            await rec.target("nope", None, None)
        await rec.background.cancel_all()
        await rec.pool.close()

    asyncio.run(scenario())


def test_endpoints_are_read_on_change_and_route_by_key(
    project: Project, source: FakeSource
) -> None:
    for v in (1, 2):
        source.add("m", v, FakeModel(linear(float(v))))
    set_routes(project, "shop", model="m", routes=[(1, 50), (2, 50)], source=source)

    async def scenario() -> None:
        rec = _reconciler(project, source)
        assert rec.endpoint("shop") is None
        await rec.refresh_endpoints()
        endpoint = rec.endpoint("shop")
        assert endpoint is not None and endpoint.versions() == {1, 2}
        chosen = {k: (await rec.target("shop", None, k))[0].version for k in map(str, range(40))}
        assert set(chosen.values()) == {1, 2}
        again = {k: (await rec.target("shop", None, k))[0].version for k in chosen}
        assert again == chosen  # sticky per key
        with pytest.raises(UnknownModel, match="does not serve version 3"):
            await rec.target("shop", "3", None)
        await rec.background.cancel_all()
        await rec.pool.close()

    asyncio.run(scenario())


def test_canary_counts_only_the_candidates_server_side_answers(
    project: Project, source: FakeSource
) -> None:
    for v in (1, 2):
        source.add("m", v, FakeModel(linear(float(v))))
    set_routes(project, "shop", model="m", routes=[(1, 100)], source=source)
    deploy(project, "shop", version=2, canary="50,100", step_requests=1000, source=source)

    async def scenario() -> None:
        rec = _reconciler(project, source)
        await rec.refresh_endpoints()
        endpoint = rec.endpoint("shop")
        assert endpoint is not None and endpoint.canary is not None
        rec.count_canary(endpoint, 1, 500, 0.01)  # the baseline: not counted
        rec.count_canary(endpoint, 2, 404, 0.01)  # the client's fault: not counted
        rec.count_canary(endpoint, 2, 200, 0.01)
        rec.count_canary(endpoint, 2, 503, 0.01)
        rec.count_canary(endpoint, 2, 429, 0.01)  # overload counts against it
        await asyncio.to_thread(rec.flush_canary_counts)
        plan = endpoint.canary
        requests, errors, _ = rec.store.canary_totals("shop", plan.rollout_id, plan.step)
        assert (requests, errors) == (3, 1)
        await rec.background.cancel_all()
        await rec.pool.close()

    asyncio.run(scenario())


def test_a_paused_canary_keeps_its_share_and_is_not_evaluated_until_resumed(
    project: Project, source: FakeSource
) -> None:
    for v in (1, 2):
        source.add("m", v, FakeModel(linear(float(v))))
    set_routes(project, "shop", model="m", routes=[(1, 100)], source=source)
    deploy(project, "shop", version=2, canary="20,100", step_requests=3, source=source)

    async def scenario() -> None:
        rec = _reconciler(project, source)
        await rec.refresh_endpoints()
        endpoint = rec.endpoint("shop")
        assert endpoint is not None and endpoint.canary is not None
        for _ in range(3):  # enough to pass step 1 ...
            rec.count_canary(endpoint, 2, 200, 0.001)
        await asyncio.to_thread(rec.flush_canary_counts)
        pause(project, "shop", reason="hold for the sale")  # ... but paused before evaluation
        await rec.refresh_endpoints()
        paused = rec.endpoint("shop")
        assert paused is not None and paused.canary is not None
        assert paused.canary.state is RolloutState.paused
        rec.count_canary(paused, 2, 500, 0.001)  # answers while paused are not counted
        await rec.drive_canaries()
        held = rec.endpoint("shop")
        assert held is not None and held.canary is not None
        assert (held.canary.state, held.canary.step) == (RolloutState.paused, 0)
        assert [(r.version, r.weight) for r in held.effective_routes()] == [(1, 80.0), (2, 20.0)]
        plan = held.canary
        assert rec.store.canary_totals("shop", plan.rollout_id, 0)[:2] == (3, 0)

        resume(project, "shop", reason="sale over")
        await rec.refresh_endpoints()
        await rec.drive_canaries()  # the gates run again on what step 1 gathered
        moved = rec.endpoint("shop")
        assert moved is not None and moved.canary is not None
        assert (moved.canary.state, moved.canary.step) == (RolloutState.running, 1)
        kinds = [e.kind for e in rec.store.events("shop")]
        assert kinds[-3:] == ["canary_pause", "canary_resume", "canary_advance"]
        await rec.background.cancel_all()
        await rec.pool.close()

    asyncio.run(scenario())
