"""Traces benchmark: OTLP/HTTP ingest spans/s and search latency over stored spans.

Run with ``make bench-traces`` (or ``.venv/bin/python benchmarks/traces_bench.py [--smoke]``).

1. Ingest: a Flywheel server (``create_app(project, systems=["telemetry"])`` under uvicorn, its
   own process) receives spans from the real ``opentelemetry-sdk`` OTLP/HTTP exporter
   (``OTLPSpanExporter.export``, protobuf, batches of 512 as the SDK's batch processor sends),
   from 2 client threads. Spans/s = spans stored / wall time from the first request to the last
   answer; the store's span count is checked afterwards.
2. Search: over the stored spans (100,000 by default), each query kind is timed 30 times with
   varying values; p50/p95 per kind and overall. Every answer is checked against a brute-force
   filter over the generated spans in Python (the newest ``limit`` traces with a matching span).
3. Peer, same data and queries on SQLite: the naive layout (one table, attributes as JSON,
   ``json_extract`` to filter — no attribute index), to show what the index buys.

Both SQLite (a file) and PostgreSQL (127.0.0.1:5432, db ``test``, own schema) are measured.
``--smoke``: 2,000 spans, 3 queries per kind, for CI (PostgreSQL skipped, and said so, when it
cannot be reached).
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

POSTGRES = os.environ.get(
    "FLYWHEEL_BENCH_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BATCH = 512
CLIENT_THREADS = 2
SERVICES = ["recsys", "serving", "agent", "llm", "features"]
NAMES = ["recs.request", "recs.rank", "recs.candidates", "chat", "execute_tool", "predict"]
MODELS = ["churn", "ranker", "tiny-chat", "two-tower"]
CHECKED = [0]  # search answers compared with the brute-force reference

SERVER = r"""
import sys, uvicorn
from flywheel.api import create_app
from flywheel.project import Project
project = Project.open(sys.argv[1]); project.prepare()
uvicorn.run(create_app(project, systems=["telemetry"]), host="127.0.0.1", port=int(sys.argv[2]),
            log_level="warning")
"""


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f} ({os.cpu_count()} CPUs)"


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux ``/proc``; None elsewhere).

    CPU per span is the figure that stays meaningful on a shared machine: wall-clock rates
    fall with the load average, the work per span does not (much).
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_spans(n: int, seed: int = 7) -> list[Any]:
    """``n`` finished SDK spans in traces of 1..8 spans, with realistic attributes."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    rng = random.Random(seed)
    out: list[Any] = []
    providers = {}
    memories = {}
    for service in SERVICES:
        mem = InMemorySpanExporter()
        prov = TracerProvider(resource=Resource.create({"service.name": service}))
        prov.add_span_processor(SimpleSpanProcessor(mem))
        providers[service] = prov
        memories[service] = mem
    base = time.time_ns() - 3600 * 10**9
    made = 0
    while made < n:
        service = rng.choice(SERVICES)
        tracer = providers[service].get_tracer("bench")
        size = min(rng.randint(1, 8), n - made)
        t = base + made * 10_000_000 // 7
        user = f"u{rng.randrange(20_000)}"
        model = rng.choice(MODELS)
        root = tracer.start_span(
            rng.choice(NAMES),
            start_time=t,
            attributes={
                "flywheel.user": user,
                "flywheel.model": model,
                "http.route": "/recommendations",
                "http.status_code": 200,
            },
        )
        from opentelemetry import trace as otel_trace

        ctx = otel_trace.set_span_in_context(root)
        for i in range(size - 1):
            start = t + (i + 1) * 1_000_000
            child = tracer.start_span(
                rng.choice(NAMES),
                context=ctx,
                start_time=start,
                attributes={
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": model,
                    "gen_ai.usage.input_tokens": rng.randrange(10, 500),
                    "gen_ai.usage.output_tokens": rng.randrange(1, 200),
                    "flywheel.stage": f"s{i}",
                    "flywheel.k": rng.randrange(1, 300),
                },
            )
            child.end(end_time=start + rng.randrange(100_000, 50_000_000))
        root.end(end_time=t + size * 1_000_000 + rng.randrange(0, 80_000_000))
        made += size
    for service in SERVICES:
        providers[service].shutdown()
        out.extend(memories[service].get_finished_spans())
    out.sort(key=lambda s: s.start_time)
    return out[:n]


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_project(root: Path, metadata: str) -> Any:
    import yaml

    from flywheel.project import Project

    root.mkdir(parents=True, exist_ok=True)
    (root / "flywheel.yaml").write_text(
        yaml.safe_dump({"project": "bench", "metadata": metadata}), encoding="utf-8"
    )
    project = Project.open(root)
    project.prepare()
    return project


def ingest(project: Any, spans: list[Any], extra: list[Any]) -> dict[str, Any]:
    """Send ``spans`` (pre-encoded by the SDK) and ``extra`` (through ``export()``) to a server
    process."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    from flywheel.auth import TokenStore
    from flywheel.telemetry import TraceStore

    token = TokenStore(project.db).create("writer", "bench")[1]
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen([sys.executable, "-c", SERVER, str(project.root), str(port)], env=env)
    try:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("the server did not start") from None
                time.sleep(0.1)
        batches = [spans[i : i + BATCH] for i in range(0, len(spans), BATCH)]
        # One warm-up request, not counted (and its spans are part of the data set).
        warm = OTLPSpanExporter(
            endpoint=f"http://127.0.0.1:{port}/v1/traces",
            headers={"Authorization": f"Bearer {token}"},
        )
        assert warm.export(batches[0]) == SpanExportResult.SUCCESS
        url = f"http://127.0.0.1:{port}/v1/traces"
        # (a) Server ingest: the SDK exporter's own encoding of each batch (what export()
        # sends), encoded before the clock starts, posted from CLIENT_THREADS threads.
        from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans

        bodies = [encode_spans(b).SerializePartialToString() for b in batches[1:]]
        sent = sum(len(b) for b in batches[1:])
        headers = {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/x-protobuf",
        }

        def post_bodies(queue: list[bytes], lock: threading.Lock) -> None:
            with httpx.Client(timeout=60) as http:
                while True:
                    with lock:
                        if not queue:
                            return
                        body = queue.pop()
                    r = http.post(url, content=body, headers=headers)
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")

        failures: list[str] = []
        cpu_before = process_cpu_seconds(server.pid)
        server_seconds = _threads(CLIENT_THREADS, post_bodies, list(bodies))
        cpu_after = process_cpu_seconds(server.pid)
        # (b) End to end: OTLPSpanExporter.export() from CLIENT_THREADS threads, encoding
        # included (the SDK's Python encoder is then the bottleneck, on the same 2 cores).
        work = [extra[i : i + BATCH] for i in range(0, len(extra), BATCH)]

        def export_batches(queue: list[Any], lock: threading.Lock) -> None:
            exporter = OTLPSpanExporter(
                endpoint=url, headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
            while True:
                with lock:
                    if not queue:
                        break
                    batch = queue.pop()
                if exporter.export(batch) != SpanExportResult.SUCCESS:
                    failures.append("export failed")
            exporter.shutdown()

        export_seconds = _threads(CLIENT_THREADS, export_batches, work)
        warm.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=30)
    stored = TraceStore(project.db).count()
    if failures or stored != len(spans) + len(extra):
        raise RuntimeError(
            f"ingest lost spans: stored {stored} of {len(spans) + len(extra)}; {failures[:3]}"
        )
    return {
        "spans": sent,
        "seconds": server_seconds,
        "rate": sent / server_seconds,
        "export_rate": len(extra) / export_seconds,
        "server_cpu": (
            None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before) / sent
        ),
    }


def _threads(
    n: int, target: Callable[[list[Any], threading.Lock], None], queue: list[Any]
) -> float:
    lock = threading.Lock()
    threads = [threading.Thread(target=target, args=(queue, lock)) for _ in range(n)]
    t0 = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t0


# -- search -------------------------------------------------------------------------------------


class Reference:
    """Brute-force answers over the generated spans (the check of every search answer)."""

    def __init__(self, spans: list[Any]) -> None:
        self.rows = [
            (
                format(s.context.trace_id, "032x"),
                s.resource.attributes["service.name"],
                s.name,
                s.start_time,
                s.end_time - s.start_time,
                dict(s.attributes),
            )
            for s in spans
        ]

    def search(self, limit: int = 20, **f: Any) -> list[str]:
        last: dict[str, int] = {}
        for tid, service, name, start, dur, attrs in self.rows:
            if f.get("service") and service != f["service"]:
                continue
            if f.get("name") and name != f["name"]:
                continue
            if f.get("start_ns") and start < f["start_ns"]:
                continue
            if f.get("min_duration_ns") and dur < f["min_duration_ns"]:
                continue
            ok = True
            for k, v in (f.get("attributes") or {}).items():
                if k not in attrs or (v is not None and str(attrs[k]) != v):
                    ok = False
            if ok:
                last[tid] = max(last.get(tid, 0), start)
        return [t for t, _ in sorted(last.items(), key=lambda kv: (-kv[1], kv[0]))][:limit]


def query_kinds(spans: list[Any], rng: random.Random) -> dict[str, Callable[[], dict[str, Any]]]:
    t_min, t_max = min(s.start_time for s in spans), max(s.start_time for s in spans)
    users = [s.attributes["flywheel.user"] for s in spans if "flywheel.user" in s.attributes]
    return {
        "newest traces": lambda: {},
        "by service": lambda: {"service": rng.choice(SERVICES)},
        "by span name": lambda: {"name": rng.choice(NAMES)},
        "gen_ai.request.model=": lambda: {
            "attributes": {"gen_ai.request.model": rng.choice(MODELS)}
        },
        "flywheel.user= (rare)": lambda: {"attributes": {"flywheel.user": rng.choice(users)}},
        "time window + min duration": lambda: {
            "start_ns": rng.randrange(t_min, t_max),
            "min_duration_ns": 40_000_000,
        },
        "name + model + service": lambda: {
            "name": "chat",
            "service": rng.choice(SERVICES),
            "attributes": {"gen_ai.request.model": rng.choice(MODELS)},
        },
    }


def time_search(
    run: Callable[[dict[str, Any]], list[str]],
    kinds: dict[str, Callable[[], dict[str, Any]]],
    reference: Reference,
    repeats: int,
) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {}
    for kind, make in kinds.items():
        for _ in range(repeats):
            filters = make()
            t0 = time.perf_counter()
            got = run(filters)
            timings.setdefault(kind, []).append((time.perf_counter() - t0) * 1000)
            expected = reference.search(**filters)
            CHECKED[0] += 1
            if got != expected:
                raise RuntimeError(
                    f"{kind}: wrong answer for {filters}: {got[:3]} vs {expected[:3]}"
                )
    return timings


def flywheel_search(project: Any) -> Callable[[dict[str, Any]], list[str]]:
    from flywheel.telemetry import TraceQuery, TraceStore

    store = TraceStore(project.db)

    def run(filters: dict[str, Any]) -> list[str]:
        return [t.trace_id for t in store.search(TraceQuery(limit=20, **filters))]

    return run


def naive_peer(path: Path, spans: list[Any]) -> Callable[[dict[str, Any]], list[str]]:
    """The naive layout on SQLite: attributes as JSON, filtered with json_extract."""
    import orjson

    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE spans (trace_id TEXT, span_id TEXT, name TEXT, service TEXT, "
            "start_ns INTEGER, duration_ns INTEGER, attributes TEXT)"
        )
        conn.exec_driver_sql("CREATE INDEX ix_spans_start ON spans (start_ns)")
        conn.exec_driver_sql("CREATE INDEX ix_spans_trace ON spans (trace_id)")
        conn.exec_driver_sql("CREATE INDEX ix_spans_name ON spans (name, start_ns)")
        conn.exec_driver_sql("CREATE INDEX ix_spans_service ON spans (service, start_ns)")
        conn.connection.driver_connection.executemany(  # type: ignore[union-attr]
            "INSERT INTO spans VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    format(s.context.trace_id, "032x"),
                    format(s.context.span_id, "016x"),
                    s.name,
                    s.resource.attributes["service.name"],
                    s.start_time,
                    s.end_time - s.start_time,
                    orjson.dumps(dict(s.attributes)).decode(),
                )
                for s in spans
            ],
        )

    def run(filters: dict[str, Any]) -> list[str]:
        where, params = [], {}
        for col in ("service", "name"):
            if filters.get(col):
                where.append(f"{col} = :{col}")
                params[col] = filters[col]
        if filters.get("start_ns"):
            where.append("start_ns >= :s")
            params["s"] = filters["start_ns"]
        if filters.get("min_duration_ns"):
            where.append("duration_ns >= :d")
            params["d"] = filters["min_duration_ns"]
        for i, (k, v) in enumerate((filters.get("attributes") or {}).items()):
            where.append(f"CAST(json_extract(attributes, :k{i}) AS TEXT) = :v{i}")
            params[f"k{i}"] = f'$."{k}"'
            params[f"v{i}"] = v
        sql = "SELECT trace_id, MAX(start_ns) AS last FROM spans"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " GROUP BY trace_id ORDER BY last DESC, trace_id LIMIT 20"
        with engine.connect() as conn:
            return [r[0] for r in conn.execute(sa.text(sql), params)]

    return run


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[18] if len(values) >= 2 else values[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2,000 spans, 3 queries per kind")
    parser.add_argument("--spans", type=int, default=None)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    n = args.spans or (2_000 if args.smoke else 100_000)
    repeats = 3 if args.smoke else 30
    print(
        f"traces bench: {n:,} spans (+{max(512, n // 10):,} through export()), batches of "
        f"{BATCH}, {CLIENT_THREADS} client threads"
    )
    print(f"load average before: {load_average()}")
    t0 = time.perf_counter()
    spans = make_spans(n)
    print(f"generated {len(spans):,} SDK spans in {time.perf_counter() - t0:.1f} s")
    extra = make_spans(max(512, n // 10), seed=8)
    reference = Reference(spans + extra)
    results: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="fw-traces-bench-") as tmp:
        backends = [("SQLite", "sqlite:///.flywheel/metadata.db")]
        if not args.skip_postgres:
            schema = f"bench_{uuid.uuid4().hex[:10]}"
            admin = sa.create_engine(POSTGRES, connect_args={"connect_timeout": 3})
            try:
                with admin.begin() as conn:
                    conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
            except sa.exc.OperationalError as exc:
                if not args.smoke:
                    raise
                print(f"PostgreSQL: skipped in --smoke ({str(exc).splitlines()[0]})")
                args.skip_postgres = True
            else:
                backends.append(("PostgreSQL", f"{POSTGRES}?options=-csearch_path%3D{schema}"))
        try:
            for label, url in backends:
                project = make_project(Path(tmp) / label, url)
                ing = ingest(project, spans, extra)
                results.append((label, "OTLP ingest (server)", f"{ing['rate']:,.0f} spans/s"))
                if ing["server_cpu"]:
                    results.append(
                        (
                            label,
                            "server CPU per ingested span",
                            f"{ing['server_cpu'] * 1e6:.1f} us ({1 / ing['server_cpu']:,.0f}"
                            " spans per CPU-second)",
                        )
                    )
                results.append(
                    (label, "SDK export(), end to end", f"{ing['export_rate']:,.0f} spans/s")
                )
                print(
                    f"{label}: ingested {ing['spans']:,} spans in {ing['seconds']:.2f} s "
                    f"= {ing['rate']:,.0f} spans/s; export() end to end {ing['export_rate']:,.0f}"
                    f" spans/s (load {load_average()})"
                )
                rng = random.Random(11)
                timings = time_search(
                    flywheel_search(project), query_kinds(spans + extra, rng), reference, repeats
                )
                every = [v for vs in timings.values() for v in vs]
                for kind, vs in timings.items():
                    results.append(
                        (
                            label,
                            f"search {kind}",
                            f"p50 {statistics.median(vs):.1f} / p95 {p95(vs):.1f} ms",
                        )
                    )
                results.append((label, "search, all kinds", f"p95 {p95(every):.1f} ms"))
                project.close()
            peer_path = Path(tmp) / "naive.db"
            rng = random.Random(11)
            timings = time_search(
                naive_peer(peer_path, spans + extra),
                query_kinds(spans + extra, rng),
                reference,
                repeats,
            )
            every = [v for vs in timings.values() for v in vs]
            for kind, vs in timings.items():
                results.append(
                    (
                        "naive JSON (peer)",
                        f"search {kind}",
                        f"p50 {statistics.median(vs):.1f} / p95 {p95(vs):.1f} ms",
                    )
                )
            results.append(("naive JSON (peer)", "search, all kinds", f"p95 {p95(every):.1f} ms"))
        finally:
            if not args.skip_postgres:
                with admin.begin() as conn:
                    conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
                admin.dispose()
    print()
    width = max(len(r[1]) for r in results)
    print(f"{'store':<20} {'measure':<{width}}  result")
    for store, measure, value in results:
        print(f"{store:<20} {measure:<{width}}  {value}")
    print(f"\nsearch answers checked against a brute-force filter: all {CHECKED[0]:,} agree")
    print(f"load average after: {load_average()}")
    print("targets: ingest >= 20,000 spans/s and search p95 <= 200 ms over 100k spans (SQLite)")


if __name__ == "__main__":
    main()
