"""``kill -9`` in the middle of a materialization, rerun, and compare with a clean run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from flywheel.features import FeatureStore
from flywheel.features._online import table_name
from tests.conftest import make_project
from tests.features.conftest import T0, user_entity, user_stats_view

N_USERS = 40_000

SCRIPT = """
import sys
from datetime import datetime, timezone
from flywheel.features import FeatureStore
store = FeatureStore(sys.argv[1])
utc = timezone.utc
start, end = datetime(2025, 1, 1, tzinfo=utc), datetime(2027, 1, 1, tzinfo=utc)
store.materialize(start, end, batch_size=1000)
print("finished", flush=True)
"""


def _write_data(root: Path) -> None:
    rng = np.random.default_rng(7)
    n = N_USERS * 2
    df = pd.DataFrame(
        {
            "user_id": np.concatenate([np.arange(N_USERS), rng.integers(0, N_USERS, N_USERS)]),
            "ts": pd.to_datetime(T0) + pd.to_timedelta(rng.integers(0, 10_000, n), unit="s"),
            "clicks": rng.integers(0, 1000, n),
            "spend": rng.random(n),
            "country": rng.choice(["de", "fr"], n),
        }
    )
    (root / "data").mkdir(parents=True, exist_ok=True)
    df.to_parquet(root / "data" / "user_stats.parquet", index=False)


def _dump(store: FeatureStore) -> list[object]:
    keys = [str(i) for i in range(N_USERS)]
    return store.online_store.read([(table_name("user_stats@v1"), keys)])[0]


@pytest.mark.integration
@pytest.mark.slow
def test_kill_9_mid_materialization_then_rerun_equals_clean_run(
    tmp_path: Path, online_url: str
) -> None:
    crashed = make_project(
        tmp_path / "crashed",
        online_store=online_url.replace("online.db", "a.db").replace("?prefix=", "?prefix=a"),
    )
    clean = make_project(
        tmp_path / "clean",
        online_store=online_url.replace("online.db", "b.db").replace("?prefix=", "?prefix=b"),
    )
    for proj in (crashed, clean):
        _write_data(proj.root)
        FeatureStore(proj).apply([user_entity(), user_stats_view(ttl=None)])

    store = FeatureStore(crashed)
    table = table_name("user_stats@v1")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(crashed.root)], env=env, stdout=subprocess.PIPE
    )
    deadline = time.monotonic() + 60
    written = 0
    while time.monotonic() < deadline and proc.poll() is None:
        written = sum(
            r is not None
            for r in store.online_store.read([(table, [str(i) for i in range(0, N_USERS, 97)])])[0]
        )
        if written > 0:
            break
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the materialization finished before the kill"
    partial = _dump(store)
    n_partial = sum(r is not None for r in partial)
    assert 0 < n_partial < N_USERS
    assert store.describe("user_stats")["versions"][0]["freshness"] is None  # no watermark moved

    start, end = T0 - timedelta(days=400), T0 + timedelta(days=365)
    rerun = store.materialize(start, end)
    FeatureStore(clean).materialize(start, end)
    assert rerun.rows == N_USERS
    assert _dump(store) == _dump(FeatureStore(clean))
    # Idempotent: running again changes nothing.
    store.materialize(start, end)
    assert _dump(store) == _dump(FeatureStore(clean))
