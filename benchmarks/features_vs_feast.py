"""Feature store benchmark: Flywheel vs Feast on the same data, in the same run.

Run with ``make bench-features`` (or ``.venv/bin/python benchmarks/features_vs_feast.py``).
Feast is installed by this script into ``.bench/feast-venv`` (``feast[duckdb,redis]``); each
measurement runs in its own process per system so peak memory (max RSS) is per task.

Measured (sizes are flags; defaults fit a shared 2-core machine in a few minutes):
- online reads, Python API, 1 and 100 entities x 10 features, p50/p99 over --calls calls after
  warm-up, --entities entities stored; SQLite online store for both, then Redis for both;
- point-in-time join, --pit-rows feature rows x --pit-entities entity rows, TTL 7 days, checked
  against an independent pandas reference (merge_asof + TTL), Feast with its duckdb store; a
  result with another row count, or any value that differs, is an error (the run fails);
- materialization rows/s into Redis, --mat-rows rows for both; the rows are counted back from
  Redis afterwards (each system's keys for the view), never taken from the system's own report,
  and a count that is not --mat-rows is an error;
- read p99 while a materialization of the same view runs (errors counted);
- HTTP feature server, 100 entities: `flywheel features serve` vs `feast serve`;
- stream freshness (push -> visible online) and processor throughput (Flywheel only: Feast
  needs a separate stream engine for this).
Load stays on 127.0.0.1; Redis keys use their own prefix / project and are deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
FEAST_VENV = ROOT / ".bench" / "feast-venv"
FEAST_PY = FEAST_VENV / "bin" / "python"
FEAST_SPEC = "feast[duckdb,redis]==0.67.0"
REDIS_URL = "redis://127.0.0.1:6379/0"
N_FEATURES = 10


# -- shared helpers (both interpreters) -------------------------------------------------------


def _pct(lat: list[float], q: float) -> float:
    s = sorted(lat)
    return s[min(len(s) - 1, round(q / 100 * (len(s) - 1)))] * 1000


def _timed_reads(fn: Any, batches: list[Any], warmup: int) -> dict[str, float]:
    for b in batches[:warmup]:
        fn(b)
    lat = []
    for b in batches[warmup:]:
        t = time.perf_counter()
        fn(b)
        lat.append(time.perf_counter() - t)
    return {"p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99)}


def _batches(n_entities: int, size: int, count: int, seed: int) -> list[list[int]]:
    import random

    rng = random.Random(seed)
    return [[rng.randrange(n_entities) for _ in range(size)] for _ in range(count)]


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _emit(result: dict[str, Any]) -> None:
    result["max_rss_mb"] = round(_maxrss_mb(), 1)
    print("RESULT " + json.dumps(result), flush=True)


# -- data -----------------------------------------------------------------------------------


def make_data(work: Path, args: argparse.Namespace) -> None:
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    base = pd.Timestamp("2026-11-20", tz="UTC")

    def table(n: int, ts: Any) -> pd.DataFrame:
        cols: dict[str, Any] = {"user_id": np.arange(n, dtype="int64"), "event_timestamp": ts}
        for i in range(N_FEATURES // 2):
            cols[f"f{i}"] = rng.random(n)
            cols[f"g{i}"] = rng.integers(0, 1_000_000, n, dtype="int64")
        return pd.DataFrame(cols)

    table(args.entities, base).to_parquet(data / "online.parquet", index=False)
    table(args.mat_rows, base).to_parquet(data / "mat.parquet", index=False)  # one file, both

    # Point-in-time data: distinct event times per entity (no ties, so any correct engine agrees).
    n_ent = args.pit_entities
    per = max(1, args.pit_rows // n_ent)
    users = np.repeat(np.arange(n_ent, dtype="int64"), per)
    offsets = rng.permutation(30 * 86400)[: per * 8].reshape(8, per)  # distinct seconds
    secs = offsets[rng.integers(0, 8, n_ent)].reshape(-1)
    start = pd.Timestamp("2026-10-01", tz="UTC")
    pit = pd.DataFrame(
        {
            "user_id": users,
            "event_timestamp": start + pd.to_timedelta(secs, unit="s"),
            "a": rng.random(len(users)),
            "b": rng.integers(0, 1000, len(users), dtype="int64"),
            "c": rng.random(len(users)),
        }
    )
    pit.to_parquet(data / "pit.parquet", index=False)
    ent = pd.DataFrame(
        {
            "user_id": rng.integers(0, int(n_ent * 1.05), args.pit_entities, dtype="int64"),
            "event_timestamp": start
            + pd.to_timedelta(rng.integers(0, 45 * 86400, args.pit_entities), unit="s"),
        }
    )
    ent.to_parquet(data / "pit_entities.parquet", index=False)
    # Independent reference: pandas merge_asof (backward, by key) + the 7-day TTL.
    left = ent.assign(_row=np.arange(len(ent))).sort_values("event_timestamp")
    r = pit.rename(columns={"event_timestamp": "_fts"}).sort_values("_fts")
    ref = pd.merge_asof(
        left, r, left_on="event_timestamp", right_on="_fts", by="user_id", direction="backward"
    )
    stale = ref["_fts"].isna() | (ref["_fts"] < ref["event_timestamp"] - pd.Timedelta(days=7))
    ref.loc[stale, ["a", "b", "c"]] = np.nan
    ref.sort_values("_row")[["a", "b", "c"]].reset_index(drop=True).to_parquet(
        data / "pit_reference.parquet", index=False
    )


def compare_to_reference(work: Path, got: Any) -> dict[str, Any]:
    import numpy as np
    import pandas as pd

    ref = pd.read_parquet(work / "data" / "pit_reference.parquet")
    out: dict[str, Any] = {"rows": len(got), "expected_rows": len(ref)}
    if len(got) != len(ref):
        out["error"] = f"wrong answer: {len(got)} rows returned, the reference has {len(ref)}"
        return out
    bad = 0
    for col in ("a", "b", "c"):
        x = pd.to_numeric(got[col], errors="coerce").to_numpy(dtype="float64")
        y = ref[col].to_numpy(dtype="float64")
        bad += int((~((np.isnan(x) & np.isnan(y)) | (x == y))).sum())
    out["mismatches"] = bad
    out["null_rows"] = int(ref["a"].isna().sum())
    if bad:
        out["error"] = f"wrong answer: {bad} values differ from the reference"
    return out


# -- Flywheel workers -------------------------------------------------------------------------


def _fw_store(work: Path, online: str, source: str = "online.parquet") -> Any:
    import yaml

    from flywheel.features import Entity, FeatureStore, FeatureView, Field, ParquetSource

    (work / "flywheel.yaml").write_text(
        yaml.safe_dump(
            {
                "project": "bench",
                "online_store": online,
                "event_log": online if online.startswith("redis") else "sqlite:///.flywheel/ev.db",
            }
        )
    )
    store = FeatureStore(work)
    user = Entity("user", "user_id")
    schema = [Field(f"f{i}", "float64") for i in range(N_FEATURES // 2)]
    schema += [Field(f"g{i}", "int64") for i in range(N_FEATURES // 2)]
    views = [
        FeatureView("stats", [user], ParquetSource(f"data/{source}"), schema),
        FeatureView(
            "pit",
            [user],
            ParquetSource("data/pit.parquet"),
            [Field("a", "float64"), Field("b", "int64"), Field("c", "float64")],
            ttl="7d",
        ),
    ]
    store.apply([user, *views])
    return store


FEATURES = [f"stats:f{i}" for i in range(N_FEATURES // 2)] + [
    f"stats:g{i}" for i in range(N_FEATURES // 2)
]
WIDE = (
    __import__("datetime").datetime(2026, 1, 1, tzinfo=__import__("datetime").UTC),
    __import__("datetime").datetime(2027, 1, 1, tzinfo=__import__("datetime").UTC),
)


def fw_online(work: Path, online: str, args: argparse.Namespace) -> None:
    store = _fw_store(work, online)
    store.materialize(*WIDE, ["stats"])
    out: dict[str, Any] = {}
    for size in (1, 100):
        batches = _batches(args.entities, size, args.calls + args.warmup, size)
        out[f"read_{size}"] = _timed_reads(
            lambda b: store.get_online_features(FEATURES, {"user_id": b}).to_dict(),
            batches,
            args.warmup,
        )
    _emit(out)


def fw_materialize(work: Path, online: str, args: argparse.Namespace) -> None:
    store = _fw_store(work, online, "mat.parquet")
    t = time.perf_counter()
    report = store.materialize(*WIDE, ["stats"])
    # The rows are counted back from Redis by the orchestrator; ``reported_rows`` is only shown.
    _emit({"seconds": time.perf_counter() - t, "reported_rows": report.rows})


def fw_pit(work: Path, args: argparse.Namespace) -> None:
    import pandas as pd

    store = _fw_store(work, f"sqlite:///{work}/.flywheel/o.db")
    ent = pd.read_parquet(work / "data" / "pit_entities.parquet")
    store.get_historical_features(ent.head(1000), ["pit:a"])  # warm-up (catalog, duckdb)
    t = time.perf_counter()
    got = store.get_historical_features(ent, ["pit:a", "pit:b", "pit:c"])
    seconds = time.perf_counter() - t
    _emit({"seconds": seconds, **compare_to_reference(work, got)})


def fw_read_during(work: Path, online: str, args: argparse.Namespace) -> None:
    store = _fw_store(work, online)
    store.materialize(*WIDE, ["stats"])
    code = (
        "import sys; from datetime import datetime, UTC;"
        "from flywheel.features import FeatureStore;"
        "s = FeatureStore(sys.argv[1]);"
        "s.materialize(datetime(2026,1,1,tzinfo=UTC), datetime(2027,1,1,tzinfo=UTC), ['stats'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(work)])
    batches = _batches(args.entities, 100, 1000, 7)
    lat, errors, i = [], 0, 0
    while proc.poll() is None:
        t = time.perf_counter()
        try:
            store.get_online_features(FEATURES, {"user_id": batches[i % len(batches)]})
            lat.append(time.perf_counter() - t)
        except Exception:
            errors += 1
        i += 1
    _emit({"reads": len(lat), "errors": errors, "p99_ms": _pct(lat, 99) if lat else None})


def fw_stream(work: Path, online: str, args: argparse.Namespace) -> None:
    from datetime import UTC, datetime

    from flywheel.features import Aggregation, Entity, EventStream, Field, StreamFeatureView

    store = _fw_store(work, online)
    user = Entity("user", "user_id")
    clicks = EventStream("clicks", [Field("user_id", "int64"), Field("item_id", "int64")], "ts")
    view = StreamFeatureView(
        "click_aggs",
        [user],
        clicks,
        [Aggregation("item_id", "count", "1h"), Aggregation("item_id", "count_distinct", "1d")],
    )
    store.apply([user, clicks, view])
    # Throughput: one processor drains a backlog.
    import random

    rng = random.Random(1)
    now = datetime.now(UTC)
    rows = [
        {"user_id": rng.randrange(10_000), "item_id": rng.randrange(1000), "ts": now}
        for _ in range(args.stream_events)
    ]
    for i in range(0, len(rows), 5000):
        store.push("clicks", rows[i : i + 5000])
    proc = store.processor(["clicks"], batch_size=5000, archive=True)
    t, cpu = time.perf_counter(), time.process_time()
    stats = proc.run(until_idle=True, block_ms=10)
    throughput = stats.applied / (time.perf_counter() - t)
    per_cpu_second = stats.applied / (time.process_time() - cpu)  # less sensitive to load
    # Freshness: push one event, poll the online store until it shows, processor in a subprocess.
    code = (
        "import sys; from flywheel.features import FeatureStore;"
        "FeatureStore(sys.argv[1]).processor(['clicks'], consumer='fresh', batch_size=500)"
        ".run(block_ms=50)"
    )
    sub = subprocess.Popen([sys.executable, "-c", code, str(work)])
    lat = []
    for k in range(-3, args.fresh_samples):  # the first three wait for the processor to start
        uid = 1_000_000 + int(time.time() * 1000) % 1_000_000_000 + k
        t = time.perf_counter()
        store.push("clicks", [{"user_id": uid, "item_id": 1, "ts": datetime.now(UTC)}])
        while True:
            got = store.get_online_features(["click_aggs:item_id_count_1h"], {"user_id": [uid]})
            if got.to_dict()["item_id_count_1h"][0] >= 1:
                break
            time.sleep(0.001)
        if k >= 0:
            lat.append(time.perf_counter() - t)
    sub.kill()
    sub.wait()
    _emit(
        {
            "events_per_s": throughput,
            "events_per_cpu_s": per_cpu_second,
            "fresh_p50_ms": _pct(lat, 50),
            "fresh_p99_ms": _pct(lat, 99),
        }
    )


def fw_http(work: Path, online: str, args: argparse.Namespace) -> None:
    store = _fw_store(work, online)
    store.materialize(*WIDE, ["stats"])
    port = 18431
    env = {**os.environ, "FLYWHEEL_CONFIG": str(work / "flywheel.yaml")}
    server = subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", "features", "serve", "--port", str(port)],
        env=env,
        cwd=work,
        stdout=subprocess.DEVNULL,
    )
    try:
        client = _wait_http(port, "/features/catalog")
        batches = _batches(args.entities, 100, args.http_calls + 50, 3)

        def call(b: list[int]) -> None:
            client.post("/features/online", {"features": FEATURES, "entities": {"user_id": b}})

        _emit({"read_100": _timed_reads(call, batches, 50)})
    finally:
        server.terminate()
        server.wait()


class _Http:
    """A keep-alive JSON client from the standard library (both venvs have it)."""

    def __init__(self, port: int) -> None:
        import http.client

        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str) -> int:
        self.conn.request("GET", path)
        r = self.conn.getresponse()
        r.read()
        return r.status

    def post(self, path: str, body: Any) -> bytes:
        self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = self.conn.getresponse()
        data = r.read()
        if r.status != 200:
            raise RuntimeError(f"HTTP {r.status}: {data[:200]!r}")
        return data


def _wait_http(port: int, path: str) -> _Http:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            client = _Http(port)
            if client.get(path) < 500:
                return client
        except Exception:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server did not answer {path}")


# -- Feast workers (run by the Feast venv's interpreter) ---------------------------------------


def _feast_store(work: Path, online: str, source: str = "online.parquet") -> Any:
    from datetime import timedelta

    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.types import Float64, Int64

    if online == "sqlite":
        online_cfg = f"  type: sqlite\n  path: {work}/feast_online.db\n"
    else:
        online_cfg = "  type: redis\n  connection_string: 127.0.0.1:6379,db=0\n"
    (work / "feature_store.yaml").write_text(
        f"project: {FEAST_PROJECT}\n"
        f"registry: {work}/feast_registry.db\n"
        "provider: local\n"
        "offline_store:\n  type: duckdb\n"
        f"online_store:\n{online_cfg}"
        "entity_key_serialization_version: 3\n"
    )
    store = FeatureStore(repo_path=str(work))
    user = Entity(name="user", join_keys=["user_id"])
    schema = [Field(name=f"f{i}", dtype=Float64) for i in range(N_FEATURES // 2)]
    schema += [Field(name=f"g{i}", dtype=Int64) for i in range(N_FEATURES // 2)]
    stats = FeatureView(
        name="stats",
        entities=[user],
        ttl=timedelta(days=3650),
        schema=schema,
        source=FileSource(path=str(work / "data" / source), timestamp_field="event_timestamp"),
    )
    pit = FeatureView(
        name="pit",
        entities=[user],
        ttl=timedelta(days=7),
        schema=[
            Field(name="a", dtype=Float64),
            Field(name="b", dtype=Int64),
            Field(name="c", dtype=Float64),
        ],
        source=FileSource(
            path=str(work / "data" / "pit.parquet"), timestamp_field="event_timestamp"
        ),
    )
    store.apply([user, stats, pit])
    return store


def feast_online(work: Path, online: str, args: argparse.Namespace) -> None:
    store = _feast_store(work, online)
    store.materialize(WIDE[0], WIDE[1], ["stats"])
    out: dict[str, Any] = {}
    for size in (1, 100):
        batches = _batches(args.entities, size, args.calls + args.warmup, size)
        out[f"read_{size}"] = _timed_reads(
            lambda b: store.get_online_features(
                FEATURES, entity_rows=[{"user_id": u} for u in b]
            ).to_dict(),
            batches,
            args.warmup,
        )
    _emit(out)


def feast_materialize(work: Path, online: str, args: argparse.Namespace) -> None:
    store = _feast_store(work, online, "mat.parquet")
    t = time.perf_counter()
    store.materialize(WIDE[0], WIDE[1], ["stats"])
    # Feast reports no row count: the orchestrator counts its keys in Redis afterwards.
    _emit({"seconds": time.perf_counter() - t})


def feast_pit(work: Path, args: argparse.Namespace) -> None:
    import pandas as pd

    store = _feast_store(work, "sqlite")
    ent = pd.read_parquet(work / "data" / "pit_entities.parquet")
    store.get_historical_features(entity_df=ent.head(1000), features=["pit:a"]).to_df()
    t = time.perf_counter()
    got = store.get_historical_features(
        entity_df=ent.assign(_row=range(len(ent))), features=["pit:a", "pit:b", "pit:c"]
    ).to_df()
    seconds = time.perf_counter() - t
    got = got.sort_values("_row").reset_index(drop=True) if "_row" in got else got
    _emit({"seconds": seconds, **compare_to_reference(work, got)})


def feast_read_during(work: Path, online: str, args: argparse.Namespace) -> None:
    store = _feast_store(work, online)
    store.materialize(WIDE[0], WIDE[1], ["stats"])
    code = (
        "import sys; from datetime import datetime, UTC; from feast import FeatureStore;"
        "s = FeatureStore(repo_path=sys.argv[1]);"
        "s.materialize(datetime(2026,1,1,tzinfo=UTC), datetime(2027,1,1,tzinfo=UTC), ['stats'])"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(work)])
    batches = _batches(args.entities, 100, 1000, 7)
    lat, errors, i = [], 0, 0
    while proc.poll() is None:
        t = time.perf_counter()
        try:
            store.get_online_features(
                FEATURES, entity_rows=[{"user_id": u} for u in batches[i % len(batches)]]
            )
            lat.append(time.perf_counter() - t)
        except Exception:
            errors += 1
        i += 1
    _emit({"reads": len(lat), "errors": errors, "p99_ms": _pct(lat, 99) if lat else None})


def feast_http(work: Path, online: str, args: argparse.Namespace) -> None:
    store = _feast_store(work, online)
    store.materialize(WIDE[0], WIDE[1], ["stats"])
    port = 18432
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "feast"), "serve", "-h", "127.0.0.1", "-p", str(port)],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = _wait_http(port, "/health")
        batches = _batches(args.entities, 100, args.http_calls + 50, 3)

        def call(b: list[int]) -> None:
            client.post("/get-online-features", {"features": FEATURES, "entities": {"user_id": b}})

        _emit({"read_100": _timed_reads(call, batches, 50)})
    finally:
        server.terminate()
        server.wait()


WORKERS = {
    "fw_online": fw_online,
    "fw_materialize": fw_materialize,
    "fw_pit": fw_pit,
    "fw_read_during": fw_read_during,
    "fw_stream": fw_stream,
    "fw_http": fw_http,
    "feast_online": feast_online,
    "feast_materialize": feast_materialize,
    "feast_pit": feast_pit,
    "feast_read_during": feast_read_during,
    "feast_http": feast_http,
}


# -- orchestration ----------------------------------------------------------------------------


def ensure_feast() -> str:
    if not FEAST_PY.exists():
        print(f"installing {FEAST_SPEC} into {FEAST_VENV} ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "venv", str(FEAST_VENV)],
            check=True,
        )
        subprocess.run(
            [str(FEAST_PY), "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True
        )
        subprocess.run([str(FEAST_PY), "-m", "pip", "install", "-q", FEAST_SPEC], check=True)
    out = subprocess.run(
        [str(FEAST_PY), "-c", "import feast; print(feast.__version__)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


# What each system writes to Redis for the ``stats`` view, one key per entity:
# Flywheel: ``PREFIX TABLE:KEY`` strings, TABLE = ``stats__v<N>`` (prefix set by ``--online``);
# Feast (Redis online store format): a hash per entity, key = serialized entity key + project
# name, holding ``_ts:<view>`` (the event time) and one field per feature.
FW_MAT_KEYS = "fwbench:fw_materialize:stats__*"
FEAST_PROJECT = "fwbenchfeast"


def redis_rows(system: str) -> int:
    """The number of entity rows of the ``stats`` view that ``system`` holds in Redis, read back
    from Redis itself (not the system's report)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    if system == "flywheel":
        return sum(1 for _ in client.scan_iter(match=FW_MAT_KEYS, count=10_000))
    keys = list(client.scan_iter(match=f"*{FEAST_PROJECT}", count=10_000))
    held = 0
    for i in range(0, len(keys), 10_000):
        with client.pipeline(transaction=False) as pipe:
            for key in keys[i : i + 10_000]:
                pipe.hexists(key, "_ts:stats")
            held += sum(bool(x) for x in pipe.execute())
    return held


def check_materialized(result: dict[str, Any], system: str, expected: int) -> None:
    """Count ``system``'s rows back from Redis into ``result``: rows/s is computed from that
    count, and a count other than ``expected`` (rows in the source) is an error."""
    if "error" in result:
        return
    rows = redis_rows(system)
    result["rows"] = rows
    result["rows_per_s"] = rows / result["seconds"] if result.get("seconds") else None
    if rows != expected:
        result["error"] = f"Redis holds {rows:,} rows of the view after materializing {expected:,}"


def _cleanup_redis(prefixes: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    for pattern in [f"{p}*" for p in prefixes] + [f"*{FEAST_PROJECT}*"]:
        keys = list(client.scan_iter(match=pattern, count=10_000))
        for i in range(0, len(keys), 10_000):
            client.delete(*keys[i : i + 10_000])


def run_worker(python: str, name: str, work: Path, argv: list[str], *extra: str) -> dict[str, Any]:
    cmd = [
        python,
        str(Path(__file__).resolve()),
        "--worker",
        name,
        "--work",
        str(work),
        *extra,
        *argv,
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "FEAST_USAGE": "False"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=1800)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    return {"error": " | ".join(tail)}


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--worker")
    ap.add_argument("--work")
    ap.add_argument("--online", default="sqlite")
    ap.add_argument("--entities", type=int, default=100_000)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--http-calls", type=int, default=500)
    ap.add_argument("--pit-rows", type=int, default=1_000_000)
    ap.add_argument("--pit-entities", type=int, default=100_000)
    # One size for both systems (#17 item 14): rows/s at different sizes is not comparable.
    ap.add_argument("--mat-rows", type=int, default=1_000_000)
    ap.add_argument("--stream-events", type=int, default=50_000)
    ap.add_argument("--fresh-samples", type=int, default=200)
    ap.add_argument(
        "--only", default="", help="comma-separated tasks: online,pit,mat,during,http,stream"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes, Flywheel only (Feast skipped), tasks online,pit,mat (CI)",
    )
    args = ap.parse_args()
    if args.smoke and not args.worker:
        args.entities, args.calls, args.warmup, args.http_calls = 1000, 50, 10, 20
        args.pit_rows, args.pit_entities = 10_000, 1000
        args.mat_rows = 10_000
        args.stream_events, args.fresh_samples = 1000, 10
        args.only = args.only or "online,pit,mat"

    if args.worker:
        work = Path(args.work)
        fn = WORKERS[args.worker]
        if args.worker.endswith("_pit"):
            fn(work, args)
        else:
            online = args.online
            if args.worker.startswith("fw_"):
                online = (
                    f"sqlite:///{work}/.flywheel/online.db"
                    if online == "sqlite"
                    else f"{REDIS_URL}?prefix=fwbench:{args.worker}:"
                )
            fn(work, online, args)
        return

    if args.smoke:
        print("peer Feast: skipped in --smoke (its venv is not installed in smoke mode)")
        feast_version = "skipped"
    else:
        feast_version = ensure_feast()
    import duckdb
    import redis

    import flywheel

    argv = [
        f"--entities={args.entities}",
        f"--calls={args.calls}",
        f"--warmup={args.warmup}",
        f"--http-calls={args.http_calls}",
        f"--pit-rows={args.pit_rows}",
        f"--pit-entities={args.pit_entities}",
        f"--mat-rows={args.mat_rows}",
        f"--stream-events={args.stream_events}",
        f"--fresh-samples={args.fresh_samples}",
    ]
    only = set(filter(None, args.only.split(","))) or {
        "online",
        "pit",
        "mat",
        "during",
        "http",
        "stream",
    }
    load_before = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="fw-bench-features-"))
    print(f"preparing data in {base} ...", flush=True)
    make_data(base, args)
    fw_py, feast_py = sys.executable, str(FEAST_PY)
    results: dict[str, dict[str, Any]] = {}

    def run(key: str, python: str, worker: str, *extra: str) -> dict[str, Any]:
        if args.smoke and key.startswith("feast_"):
            results[key] = {"error": "skipped in --smoke"}
            return results[key]
        work = base / key
        work.mkdir()
        os.symlink(base / "data", work / "data")
        print(f"  running {key} ...", flush=True)
        res = run_worker(python, worker, work, argv, *extra)
        results[key] = res
        return res

    try:
        for store in ("sqlite", "redis"):
            if "online" in only:
                run(f"fw_online_{store}", fw_py, "fw_online", f"--online={store}")
                run(f"feast_online_{store}", feast_py, "feast_online", f"--online={store}")
                _cleanup_redis(["fwbench:"])
        if "pit" in only:
            run("fw_pit", fw_py, "fw_pit")
            run("feast_pit", feast_py, "feast_pit")
        if "mat" in only:
            _cleanup_redis(["fwbench:"])  # the counts read back must see only this run's keys
            check_materialized(
                run("fw_mat", fw_py, "fw_materialize", "--online=redis"), "flywheel", args.mat_rows
            )
            check_materialized(
                run("feast_mat", feast_py, "feast_materialize", "--online=redis"),
                "feast",
                args.mat_rows,
            )
            _cleanup_redis(["fwbench:"])
        if "during" in only:
            run("fw_during", fw_py, "fw_read_during", "--online=redis")
            run("feast_during", feast_py, "feast_read_during", "--online=redis")
            _cleanup_redis(["fwbench:"])
        if "http" in only:
            run("fw_http", fw_py, "fw_http", "--online=redis")
            run("feast_http", feast_py, "feast_http", "--online=redis")
            _cleanup_redis(["fwbench:"])
        if "stream" in only:
            run("fw_stream", fw_py, "fw_stream", "--online=redis")
            _cleanup_redis(["fwbench:"])
    finally:
        shutil.rmtree(base, ignore_errors=True)

    rv = redis.Redis.from_url(REDIS_URL).info("server")["redis_version"]
    print()
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; "
        f"load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end; "
        f"Python {platform.python_version()}"
    )
    print(
        f"versions: flywheel {flywheel.__version__}, feast {feast_version}, "
        f"duckdb {duckdb.__version__}, "
        f"redis server {rv}"
    )
    print_table(results, args)
    # A run that failed or answered wrongly (PIT rows or values, rows in Redis), on either side,
    # is a failed benchmark, not a "-" in the table; only a peer skipped in --smoke is not.
    failed = {k: v["error"] for k, v in results.items() if "error" in v and not _skipped(v)}
    if failed:
        raise SystemExit(f"benchmark runs failed or answered wrongly: {failed}")


def _skipped(result: dict[str, Any]) -> bool:
    return str(result.get("error", "")).startswith("skipped")


def _f(x: Any, unit: str = "") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.2f}{unit}" if x < 100 else f"{x:,.0f}{unit}"
    return f"{x}{unit}"


def print_table(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str, str]] = []

    def get(key: str, *path: str) -> Any:
        cur: Any = results.get(key, {})
        for p in path:
            if not isinstance(cur, dict):
                return None
            cur = cur.get(p)
        return cur

    def ratio(fw: Any, feast: Any, higher_better: bool = False) -> str:
        if (
            not isinstance(fw, int | float)
            or not isinstance(feast, int | float)
            or not fw
            or not feast
        ):
            return "-"
        r = fw / feast if higher_better else feast / fw
        return f"{r:,.1f}x better" if r >= 1 else f"{1 / r:,.1f}x worse"

    def checked_ratio(task: str, *path: str, higher_better: bool = False) -> str:
        """The ratio of a task whose answers are checked: none when either side is wrong."""
        sides = (results.get(f"fw_{task}", {}), results.get(f"feast_{task}", {}))
        if any("error" in side and not _skipped(side) for side in sides):
            return "not compared: a side failed"
        return ratio(get(f"fw_{task}", *path), get(f"feast_{task}", *path), higher_better)

    for store in ("sqlite", "redis"):
        for size in (1, 100):
            for q in ("p50_ms", "p99_ms"):
                fw = get(f"fw_online_{store}", f"read_{size}", q)
                fe = get(f"feast_online_{store}", f"read_{size}", q)
                rows.append(
                    (
                        f"online read {store}, {size} x {N_FEATURES} feat, {q[:3]} (ms)",
                        _f(fw),
                        _f(fe),
                        ratio(fw, fe),
                    )
                )
    fw, fe = get("fw_pit", "seconds"), get("feast_pit", "seconds")
    rows.append(
        (
            f"PIT join {args.pit_rows:,} x {args.pit_entities:,}, TTL 7d (s)",
            _f(fw),
            _f(fe),
            checked_ratio("pit", "seconds"),
        )
    )
    for key, label in (("rows", "PIT rows returned"), ("mismatches", "PIT values != reference")):
        rows.append((label, _f(get("fw_pit", key)), _f(get("feast_pit", key)), ""))
    fw, fe = get("fw_mat", "rows_per_s"), get("feast_mat", "rows_per_s")
    rows.append(
        (
            f"materialize {args.mat_rows:,} rows -> Redis, rows/s",
            _f(fw),
            _f(fe),
            checked_ratio("mat", "rows_per_s", higher_better=True),
        )
    )
    rows.append(
        (
            "  rows counted back in Redis",
            _f(get("fw_mat", "rows")),
            _f(get("feast_mat", "rows")),
            "",
        )
    )
    fw, fe = get("fw_during", "p99_ms"), get("feast_during", "p99_ms")
    rows.append(("read p99 during materialization, Redis (ms)", _f(fw), _f(fe), ratio(fw, fe)))
    rows.append(
        (
            "  reads ok / failed during materialization",
            f"{get('fw_during', 'reads')} / {get('fw_during', 'errors')}",
            f"{get('feast_during', 'reads')} / {get('feast_during', 'errors')}",
            "",
        )
    )
    for q in ("p50_ms", "p99_ms"):
        fw, fe = get("fw_http", "read_100", q), get("feast_http", "read_100", q)
        rows.append(
            (f"HTTP server, 100 entities, Redis, {q[:3]} (ms)", _f(fw), _f(fe), ratio(fw, fe))
        )
    rows.append(
        ("stream processor events/s (1 process)", _f(get("fw_stream", "events_per_s")), "n/a", "")
    )
    rows.append(
        (
            "  events per CPU-second of that process",
            _f(get("fw_stream", "events_per_cpu_s")),
            "n/a",
            "",
        )
    )
    rows.append(
        (
            "push -> online visible p50 / p99 (ms)",
            f"{_f(get('fw_stream', 'fresh_p50_ms'))} / {_f(get('fw_stream', 'fresh_p99_ms'))}",
            "n/a",
            "",
        )
    )
    for key in ("online_redis", "pit", "mat"):
        rows.append(
            (
                f"peak memory (max RSS MB), {key}",
                _f(get(f"fw_{key}", "max_rss_mb")),
                _f(get(f"feast_{key}", "max_rss_mb")),
                ratio(get(f"fw_{key}", "max_rss_mb"), get(f"feast_{key}", "max_rss_mb")),
            )
        )
    width = max(len(r[0]) for r in rows)
    print(f"| {'measure'.ljust(width)} | Flywheel | Feast | Flywheel vs Feast |")
    print(f"|{'-' * (width + 2)}|---------:|------:|-------------------|")
    for label, a, b, c in rows:
        print(f"| {label.ljust(width)} | {a} | {b} | {c} |")
    errors = {k: v["error"] for k, v in results.items() if "error" in v}
    for k, v in errors.items():
        print(f"error in {k}: {v}")


if __name__ == "__main__":
    main()
