"""Push validation, the stream processor, offline/online parity, kill-and-restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.features import FeatureStore, PushValidationError
from flywheel.features._online_read import read_online
from flywheel.project import Project
from tests.conftest import make_project
from tests.features.conftest import click_aggs_view, user_entity

FEATURES = [f"click_aggs:{a.feature_name}" for a in click_aggs_view().aggregations]


def _store(project: Project) -> FeatureStore:
    store = FeatureStore(project)
    store.apply([user_entity(), click_aggs_view()])
    return store


def test_push_validates_every_row_and_writes_nothing_on_error(stream_project: Project) -> None:
    store = _store(stream_project)
    now = datetime.now(UTC)
    good = {"user_id": 1, "item_id": 5, "amount": 2.5, "ts": now}
    with pytest.raises(PushValidationError) as err:
        store.push("clicks", [good, {**good, "amount": "lots"}])
    assert (err.value.row, err.value.field) == (1, "amount")
    assert "expected a number" in str(err.value)
    with pytest.raises(PushValidationError, match="row 0, field 'user_id'"):
        store.push("clicks", [{"item_id": 1, "ts": now}])
    with pytest.raises(PushValidationError, match="not in the stream's schema"):
        store.push("clicks", [{**good, "colour": "red"}])
    assert store.event_log.lag("clicks", "flywheel") == 0
    result = store.push("clicks", pd.DataFrame([good, good]))
    assert result.count == 2
    stats = store.processor(["clicks"]).run(until_idle=True, block_ms=10)
    assert stats.applied == 2
    resp = store.get_online_features(["click_aggs:item_id_count_1h"], [{"user_id": 1}])
    assert resp.to_dict()["item_id_count_1h"] == [2]
    assert resp.statuses["item_id_count_1h"] == ["present"]


def _events(n: int, seed: int, start: datetime) -> list[dict[str, object]]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        # Mostly in order; some a few minutes late (inside allowed_lateness=10m), some far too late.
        jitter = -int(rng.integers(0, 600)) if rng.random() < 0.2 else 0
        if rng.random() < 0.03:
            jitter = -7200
        out.append(
            {
                "user_id": int(rng.integers(0, 6)),
                "item_id": int(rng.integers(0, 8)),
                "amount": float(np.round(rng.random() * 10, 3)) if rng.random() > 0.1 else None,
                "ts": start + timedelta(seconds=i * 37 + jitter),
            }
        )
    return out


# The click_aggs view, restated here (not read from Flywheel): feature, column, function,
# window and tile in seconds, n; allowed lateness 10 minutes.
BRUTE_SPECS = [
    ("item_id_count_1h", "item_id", "count", 3600, 300, 0),
    ("amount_sum_1h", "amount", "sum", 3600, 300, 0),
    ("amount_mean_1d", "amount", "mean", 86400, 7200, 0),
    ("amount_min_1h", "amount", "min", 3600, 300, 0),
    ("amount_max_1h", "amount", "max", 3600, 300, 0),
    ("item_id_last_1d", "item_id", "last", 86400, 7200, 0),
    ("item_id_count_distinct_1d", "item_id", "count_distinct", 86400, 7200, 0),
    ("item_id_last_n_1d", "item_id", "last_n", 86400, 7200, 3),
]
BRUTE_LATENESS_S = 600


def brute_force_aggregates(
    log: list[tuple[str, dict[str, object]]], users: list[int], t: datetime
) -> dict[str, list[object]]:
    """Every aggregate at ``t`` from the raw events in log order, by the documented semantics
    and nothing else: an event is dropped when it is more than the allowed lateness older than
    the newest event already accepted for its user; a window of W at t covers the tiles
    (tile(t) - W/tile, tile(t)]; ``last``/``last_n`` order by (event time, event id)."""
    accepted: dict[int, list[tuple[int, str, dict[str, object]]]] = {}
    newest: dict[int, int] = {}
    for eid, row in log:
        user, ts = int(row["user_id"]), int(row["ts"].timestamp())  # type: ignore[attr-defined]
        if user in newest and ts < newest[user] - BRUTE_LATENESS_S:
            continue
        newest[user] = max(newest.get(user, ts), ts)
        accepted.setdefault(user, []).append((ts, eid, row))
    now = int(t.timestamp())
    out: dict[str, list[object]] = {name: [] for name, *_ in BRUTE_SPECS}
    for user in users:
        for name, col, fn, window, tile, n in BRUTE_SPECS:
            hi = now // tile
            inside = [e for e in accepted.get(user, []) if hi - window // tile < e[0] // tile <= hi]
            values = [(ts, eid, r[col]) for ts, eid, r in inside if r[col] is not None]
            nums = [float(v) for _, _, v in values]  # type: ignore[arg-type]
            value: object
            if fn == "count":
                value = len(inside)
            elif fn == "count_distinct":
                value = len({v for _, _, v in values})
            elif not values:
                value = None
            elif fn == "sum":
                value = sum(nums)
            elif fn == "mean":
                value = sum(nums) / len(nums)
            elif fn == "min":
                value = min(nums)
            elif fn == "max":
                value = max(nums)
            elif fn == "last":
                value = max(values, key=lambda x: (x[0], x[1]))[2]
            else:
                value = [v for _, _, v in sorted(values, key=lambda x: (x[0], x[1]))[::-1][:n]]
            out[name].append(value)
    return out


def test_online_and_offline_aggregations_agree(stream_project: Project) -> None:
    store = _store(stream_project)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = _events(1200, seed=3, start=start)
    proc = store.processor(["clicks"], batch_size=97)
    checked = 0
    log: list[tuple[str, dict[str, object]]] = []
    for chunk in range(0, len(events), 200):
        part = events[chunk : chunk + 200]
        log += list(zip(store.push("clicks", part).ids, part, strict=True))
        proc.run(until_idle=True, block_ms=5)
        t = max(e["ts"] for e in part)  # "now" at this point of the replay
        t_us = int(t.timestamp() * 1_000_000)
        users = list(range(7))  # user 6 never has events
        resolved = store.definitions.resolve(FEATURES)
        online = read_online(
            store.online_store, resolved, {"user_id": users}, now_us=t_us
        ).to_dict()
        offline = store.get_historical_features(
            pd.DataFrame({"user_id": users, "event_timestamp": [t] * len(users)}), FEATURES
        )
        brute = brute_force_aggregates(log, users, t)  # type: ignore[arg-type]
        assert set(brute) == {f.split(":")[1] for f in FEATURES}
        for feat in [f.split(":")[1] for f in FEATURES]:
            for u in users:
                on, off, ref = online[feat][u], offline[feat].iloc[u], brute[feat][u]
                if isinstance(ref, list):
                    assert on == ref and list(off) == ref, (feat, u, t)
                elif ref is None:
                    assert on is None and (off is None or pd.isna(off)), (feat, u, t)
                else:
                    assert on == pytest.approx(ref) and float(off) == pytest.approx(ref), (
                        feat,
                        u,
                        t,
                    )
                checked += 1
    assert proc.stats.late > 0  # the far-too-late events were dropped (and not archived)
    assert checked == 6 * 7 * 8


SCRIPT = """
import sys
from flywheel.features import FeatureStore
store = FeatureStore(sys.argv[1])
store.processor(["clicks"], consumer="p0", batch_size=20).run()
"""


def _snapshot(store: FeatureStore, t: datetime) -> dict[str, list[object]]:
    resolved = store.definitions.resolve(FEATURES)
    t_us = int(t.timestamp() * 1_000_000)
    return read_online(
        store.online_store, resolved, {"user_id": list(range(6))}, now_us=t_us
    ).to_dict()


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_processor_and_restart_loses_nothing_counts_nothing_twice(
    tmp_path: Path, backend: dict[str, str]
) -> None:
    def urls(tag: str) -> dict[str, str]:
        return {
            k: v.replace(".db", f"-{tag}.db").replace("?prefix=", f"?prefix={tag}")
            for k, v in backend.items()
        }

    crashed = make_project(tmp_path / "crashed", **urls("a"))
    clean = make_project(tmp_path / "clean", **urls("b"))
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = [
        {**e, "ts": start + timedelta(seconds=i)} for i, e in enumerate(_events(1500, 5, start))
    ]
    stores = [_store(crashed), _store(clean)]
    for s in stores:
        s.push("clicks", events)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, str(crashed.root)], env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and stores[0].event_log.lag("clicks", "flywheel") > 1200:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lag = stores[0].event_log.lag("clicks", "flywheel")
    assert 0 < lag < 1500, "the processor was not killed mid-stream"
    # Restart with the same consumer name: it redelivers its unacknowledged batch first.
    stores[0].processor(["clicks"], consumer="p0", batch_size=20).run(until_idle=True, block_ms=5)
    stores[1].processor(["clicks"], batch_size=500).run(until_idle=True, block_ms=5)
    assert stores[0].event_log.lag("clicks", "flywheel") == 0
    t = start + timedelta(seconds=1500)
    crashed_state, clean_state = _snapshot(stores[0], t), _snapshot(stores[1], t)
    assert crashed_state == clean_state
    expected = pd.DataFrame(events)
    window = expected[expected["ts"] > t - timedelta(hours=1)]
    assert sum(clean_state["item_id_count_1h"]) == len(window)


def test_restart_applies_what_was_read_ahead_in_order(
    tmp_path: Path, backend: dict[str, str]
) -> None:
    """A processor that died after reading ahead left two batches pending; on restart they are
    applied first and in order (before new events), so late events are judged as in a clean run."""

    def urls(tag: str) -> dict[str, str]:
        return {
            k: v.replace(".db", f"-{tag}.db").replace("?prefix=", f"?prefix={tag}")
            for k, v in backend.items()
        }

    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = _events(400, 11, start)
    stores = [_store(make_project(tmp_path / t, **urls(t))) for t in ("crashed", "clean")]
    for s in stores:
        s.push("clicks", events)
    log = stores[0].event_log
    log.read_new("clicks", "flywheel", "p0", 30)  # the batch being applied when it died
    log.read_new("clicks", "flywheel", "p0", 30)  # the batch read ahead meanwhile
    stats = [
        s.processor(["clicks"], consumer="p0", batch_size=30).run(until_idle=True, block_ms=5)
        for s in stores
    ]
    t = max(e["ts"] for e in events)  # type: ignore[type-var]
    assert _snapshot(stores[0], t) == _snapshot(stores[1], t)  # type: ignore[arg-type]
    assert [s.event_log.lag("clicks", "flywheel") for s in stores] == [0, 0]
    assert stats[0].applied == stats[1].applied and stats[0].late == stats[1].late > 0
    for s in stores:
        s.project.close()


def test_two_processors_share_a_stream_without_double_counting(stream_project: Project) -> None:
    import threading

    store = _store(stream_project)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = [
        {**e, "ts": start + timedelta(seconds=i)} for i, e in enumerate(_events(600, 9, start))
    ]
    store.push("clicks", events)
    stores = [FeatureStore(stream_project) for _ in range(2)]
    procs = [s.processor(["clicks"], consumer=f"c{i}", batch_size=25) for i, s in enumerate(stores)]
    threads = [
        threading.Thread(target=p.run, kwargs={"until_idle": True, "block_ms": 5}) for p in procs
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(p.stats.applied > 0 for p in procs)  # both did work
    assert sum(p.stats.applied for p in procs) == 600
    t_end = start + timedelta(seconds=600)
    snap = _snapshot(store, t_end)
    window = [e for e in events if e["ts"] > t_end - timedelta(hours=1)]
    assert sum(snap["item_id_count_1h"]) == len(window)


@pytest.mark.integration
def test_cli_stream_killed_at_a_random_point_restarts_to_the_clean_result(
    tmp_path: Path, backend: dict[str, str]
) -> None:
    """Issue #17 item 4: `flywheel features stream` is killed -9 at a random point during 20k
    events and restarted once with `--until-idle` and the default consumer name; every aggregate
    then equals a clean run's."""
    import random

    def urls(tag: str) -> dict[str, str]:
        return {
            k: v.replace(".db", f"-{tag}.db").replace("?prefix=", f"?prefix={tag}")
            for k, v in backend.items()
        }

    n = 20_000
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = _events(n, 17, start)
    stores = [_store(make_project(tmp_path / t, **urls(t))) for t in ("crashed", "clean")]
    for s in stores:
        for i in range(0, n, 5000):
            s.push("clicks", events[i : i + 5000])
    crashed = stores[0]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    cli = [sys.executable, "-m", "flywheel.cli", "features", "stream", "-s", "clicks"]
    config = ["-c", str(crashed.project.root / "flywheel.yaml"), "--batch-size", "500"]
    kill_at = random.Random().randint(1_000, n - 2_000)  # events applied before the kill
    proc = subprocess.Popen([*cli, *config], env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    log = crashed.event_log
    while time.monotonic() < deadline and log.lag("clicks", "flywheel") > n - kill_at:
        assert proc.poll() is None, "the processor exited on its own"
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    lag = log.lag("clicks", "flywheel")
    assert 0 < lag < n, f"not killed mid-stream (kill_at={kill_at})"
    assert log.pending("clicks", "flywheel") > 0  # the dead process left work pending
    done = subprocess.run(
        [*cli, *config, "--until-idle"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    stores[1].processor(["clicks"], batch_size=2000).run(until_idle=True, block_ms=5)
    assert log.lag("clicks", "flywheel") == 0, (kill_at, done.stdout)
    t = max(e["ts"] for e in events)  # type: ignore[type-var]
    assert _snapshot(crashed, t) == _snapshot(stores[1], t), f"kill_at={kill_at}"  # type: ignore[arg-type]
    for s in stores:
        s.project.close()


def test_until_idle_takes_over_what_a_gone_consumer_left_pending(stream_project: Project) -> None:
    """A processor under another name (a dead process) left batches pending: `until_idle` does
    not report done while the group has pending events, and claims them once they waited
    ``gone_ms`` (not the 30 s ``claim_idle_ms``)."""
    store = _store(stream_project)
    events = _events(300, 4, datetime(2026, 3, 1, tzinfo=UTC))
    store.push("clicks", events)
    log = store.event_log
    log.read_new("clicks", "flywheel", "host-4242", 40)
    log.read_new("clicks", "flywheel", "host-4242", 40)
    stats = store.processor(["clicks"], batch_size=50, gone_ms=100).run(until_idle=True, block_ms=5)
    assert log.lag("clicks", "flywheel") == 0 and log.pending("clicks", "flywheel") == 0
    assert stats.events == 300


def test_push_requires_every_non_nullable_field_and_the_event_id(project: Project) -> None:
    """Issue #17 item 5: a missing field (the event id included) is refused, naming it."""
    from flywheel.features import EventStream, Field

    store = FeatureStore(project)
    stream = EventStream(
        "orders",
        [
            Field("user_id", "int64"),
            Field("total", "float64"),
            Field("note", "string", nullable=True),
        ],
        "ts",
        event_id_field="order_id",
    )
    store.apply([stream])
    now = datetime.now(UTC)
    good = {"order_id": "o1", "user_id": 1, "total": 2.5, "ts": now}
    with pytest.raises(PushValidationError, match=r"row 1, field 'total'.*required but missing"):
        store.push("orders", [good, {k: v for k, v in good.items() if k != "total"}])
    with pytest.raises(PushValidationError, match=r"field 'total'.*required, got null.*nullable"):
        store.push("orders", [{**good, "total": None}])
    with pytest.raises(PushValidationError, match=r"field 'order_id'.*required but missing"):
        store.push("orders", [{k: v for k, v in good.items() if k != "order_id"}])
    assert store.event_log.lag("orders", "flywheel") == 0  # nothing half-written
    assert store.push("orders", [good, {**good, "order_id": "o2", "note": None}]).count == 2
    # A DataFrame's missing value is a null: fine for a nullable field, refused otherwise.
    frame = pd.DataFrame([{**good, "order_id": "o3", "note": None}])
    assert store.push("orders", frame).count == 1
    with pytest.raises(PushValidationError, match=r"field 'total'.*null"):
        store.push("orders", pd.DataFrame([{**good, "total": float("nan")}]))


def test_push_refuses_nan_and_infinity_naming_the_field(project: Project) -> None:
    """NaN/Infinity are refused (422 over HTTP) rather than stored as null."""
    from fastapi.testclient import TestClient

    from flywheel.api import create_app
    from flywheel.auth import TokenStore

    store = _store(project)
    now = datetime.now(UTC)
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(PushValidationError, match=r"field 'amount'.*not a finite number"):
            store.push("clicks", [{"user_id": 1, "item_id": 2, "amount": bad, "ts": now}])
    _, token = TokenStore(project.db).create("writer")
    client = TestClient(create_app(project, systems=["features"]))
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"rows": [{"user_id": 1, "item_id": 2, "amount": %s, "ts": "%s"}]}' % (
            literal,
            now.isoformat().encode(),
        )
        r = client.post(
            "/features/push/clicks",
            content=body,
            headers={"Authorization": f"Bearer {token}", "content-type": "application/json"},
        )
        assert r.status_code == 422, r.text
        assert "'amount'" in r.json()["error"] and "finite" in r.json()["error"]
    assert store.event_log.lag("clicks", "flywheel") == 0
