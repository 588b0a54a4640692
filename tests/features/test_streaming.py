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


def test_online_and_offline_aggregations_agree(stream_project: Project) -> None:
    store = _store(stream_project)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    events = _events(1200, seed=3, start=start)
    proc = store.processor(["clicks"], batch_size=97)
    checked = 0
    for chunk in range(0, len(events), 200):
        part = events[chunk : chunk + 200]
        store.push("clicks", part)
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
        for feat in [f.split(":")[1] for f in FEATURES]:
            for u in users:
                on, off = online[feat][u], offline[feat].iloc[u]
                if isinstance(on, list):
                    assert list(off) == on, (feat, u, t)
                elif on is None:
                    assert off is None or pd.isna(off), (feat, u, t)
                else:
                    assert on == pytest.approx(float(off)), (feat, u, t)
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
