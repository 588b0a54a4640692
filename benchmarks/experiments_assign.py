"""Experiment assignment latency: Flywheel vs GrowthBook's Python SDK vs a hand-written hash.

Run with ``make bench-experiments`` (or ``.venv/bin/python benchmarks/experiments_assign.py``).

Every contender assigns the same list of distinct unit ids to a 50/50 experiment, in process,
after a warm-up; the figure is wall time / assignments (µs per assignment, lower is better),
the best of three passes (the machine is shared: the best pass is the least disturbed one).

* Flywheel ``Experiments.assign``: stored experiment (SQLite metadata), layer check, variant
  table, propensity, and an exposure row buffered for the background writer (which runs
  during the timing, on the same 2 cores). Also: with a targeting filter, a Thompson bandit and a
  LinUCB bandit (5 context features), and the pure ``weighted_choice`` / ``hash_bucket``.
* GrowthBook (``growthbook`` from PyPI, installed by this script into ``.bench/growthbook-venv``
  and run there in its own process): ``GrowthBook(attributes={"id": unit}, on_experiment_viewed=cb)
  .run(Experiment(...))``, one SDK instance per unit as in a request handler, the tracking
  callback appending to a list (its exposure log); also one reused instance with
  ``set_attributes``.
* naive: ``int(md5(salt + unit).hexdigest(), 16) % 100 < 50`` -- no layers, no logging.

Bounded: ``EXPERIMENTS_BENCH_UNITS`` assignments per contender (default 100,000).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for tests.conftest.make_project
BENCH_VENV = ROOT / ".bench" / "growthbook-venv"
GROWTHBOOK_VERSION = "4.0.0"
UNITS = int(os.environ.get("EXPERIMENTS_BENCH_UNITS", "100000"))

GROWTHBOOK_CHILD = r"""
import json, sys, time
from growthbook import GrowthBook, Experiment
import growthbook
n = int(sys.argv[1])
units = [f"user-{i}" for i in range(n)]
seen = []
def track(experiment, result, **kwargs):
    seen.append((experiment.key, result.variationId))
exp = Experiment(key="checkout", variations=["control", "green"], weights=[0.5, 0.5])
for u in units[:2000]:
    GrowthBook(attributes={"id": u}, on_experiment_viewed=track).run(exp)
per_instance = reused = float("inf")
for _ in range(3):  # best of 3 passes, as for Flywheel
    seen.clear()
    t0 = time.perf_counter()
    for u in units:
        GrowthBook(attributes={"id": u}, on_experiment_viewed=track).run(exp)
    per_instance = min(per_instance, (time.perf_counter() - t0) / n * 1e6)
    assert len(seen) == n, len(seen)
    gb = GrowthBook(attributes={"id": "x"}, on_experiment_viewed=track)
    t0 = time.perf_counter()
    for u in units:
        gb.set_attributes({"id": u})
        gb.run(exp)
    reused = min(reused, (time.perf_counter() - t0) / n * 1e6)
print(json.dumps({"per_instance_us": per_instance, "reused_us": reused,
                  "version": getattr(growthbook, "__version__", "?"), "tracked": len(seen)}))
"""


def ensure_growthbook() -> Path | None:
    """The GrowthBook venv's python, created on first use; None if it cannot be installed."""
    python = BENCH_VENV / "bin" / "python"
    if python.exists():
        check = subprocess.run([str(python), "-c", "import growthbook"], capture_output=True)
        if check.returncode == 0:
            return python
    print(f"installing growthbook=={GROWTHBOOK_VERSION} into {BENCH_VENV} (once) ...", flush=True)
    try:
        subprocess.run([sys.executable, "-m", "venv", str(BENCH_VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", f"growthbook=={GROWTHBOOK_VERSION}"],
            check=True,
            timeout=600,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        print(f"growthbook could not be installed ({exc}); its row is left out")
        return None
    return python


def run_growthbook(units: int) -> dict[str, Any] | None:
    python = ensure_growthbook()
    if python is None:
        return None
    out = subprocess.run(
        [str(python), "-c", GROWTHBOOK_CHILD, str(units)], capture_output=True, text=True
    )
    if out.returncode != 0:
        print(f"growthbook run failed: {out.stderr.strip().splitlines()[-1:]}")
        return None
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def time_loop(fn: Any, units: list[str], repeat: int = 3) -> float:
    """Best of ``repeat`` timed passes over ``units`` (µs per call), after a warm-up."""
    for u in units[:2000]:
        fn(u)
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for u in units:
            fn(u)
        best = min(best, (time.perf_counter() - t0) / len(units) * 1e6)
    return best


def run_flywheel(units: list[str]) -> tuple[dict[str, float], dict[str, Any]]:
    import numpy as np
    from tests.conftest import make_project

    from flywheel.experiments import Experiments, hash_bucket, weighted_choice

    root = Path(tempfile.mkdtemp(prefix="flywheel-bench-exp-"))
    project = make_project(root / "proj")
    ex = Experiments(project)
    ex.create({"name": "checkout", "variants": [{"name": "control"}, {"name": "green"}]})
    ex.create(
        {
            "name": "targeted",
            "layer": "page",
            "traffic": 0.5,
            "variants": ["control", "green"],
            "targeting": {"country": {"in": ["US", "CA"]}, "age": {"gte": 18}},
        }
    )
    ex.create({"name": "thompson", "bandit": {"policy": "thompson", "arms": ["a", "b", "c"]}})
    features = [f"f{i}" for i in range(5)]
    ex.create(
        {
            "name": "linucb",
            "bandit": {"policy": "linucb", "arms": ["a", "b", "c"], "context": features},
        }
    )
    results: dict[str, float] = {}
    results["Flywheel assign (A/B, exposure logged)"] = time_loop(
        lambda u: ex.assign("checkout", u), units
    )
    context = {"country": "US", "age": 30}
    results["Flywheel assign (layer 50% + targeting)"] = time_loop(
        lambda u: ex.assign("targeted", u, context), units
    )
    results["Flywheel assign (Thompson bandit)"] = time_loop(
        lambda u: ex.assign("thompson", u), units
    )
    rng = np.random.default_rng(0)
    contexts = [
        dict(zip(features, map(float, row), strict=True)) for row in rng.normal(size=(1000, 5))
    ]
    counter = iter(range(10**9))
    results["Flywheel assign (LinUCB, 5 features)"] = time_loop(
        lambda u: ex.assign("linucb", u, contexts[next(counter) % 1000]), units[: len(units) // 4]
    )
    weights = [("control", 0.5), ("green", 0.5)]
    results["Flywheel weighted_choice (pure)"] = time_loop(
        lambda u: weighted_choice("checkout", u, weights), units
    )
    results["Flywheel hash_bucket (pure)"] = time_loop(lambda u: hash_bucket("checkout", u), units)
    t0 = time.perf_counter()
    ex.close()
    flush_s = time.perf_counter() - t0
    with project.db.read() as conn:
        import sqlalchemy as sa

        stored = conn.execute(sa.text("SELECT COUNT(*) FROM experiment_exposures")).scalar_one()
    meta = {
        "exposures_stored": int(stored),
        "final_flush_s": flush_s,
        "written": ex.exposures.written,
    }
    return results, meta


def naive(unit: str) -> str:
    return (
        "green"
        if int(hashlib.md5(("checkout" + unit).encode()).hexdigest(), 16) % 100 < 50
        else "control"
    )


def main() -> None:
    import argparse

    import numpy

    import flywheel

    global UNITS
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="2,000 units, GrowthBook skipped (CI)")
    args = parser.parse_args()
    if args.smoke:
        UNITS = 2000
    units = [f"user-{i}" for i in range(UNITS)]
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, flywheel {flywheel.__version__}, "
        f"numpy {numpy.__version__}; {UNITS:,} units per contender"
    )
    load = os.getloadavg()
    print(f"load average before the run: {load[0]:.1f} (shared machine: figures vary with it)")
    flywheel_results, meta = run_flywheel(units)
    naive_us = time_loop(naive, units)
    if args.smoke:
        print("peer GrowthBook: skipped in --smoke (its venv is not installed in smoke mode)")
        growthbook = None
    else:
        growthbook = run_growthbook(UNITS)
    base = flywheel_results["Flywheel assign (A/B, exposure logged)"]
    rows: list[tuple[str, float]] = list(flywheel_results.items())
    if growthbook is not None:
        version = growthbook["version"]
        rows.append(
            (
                f"GrowthBook {version} run() (new SDK per unit, tracked)",
                growthbook["per_instance_us"],
            )
        )
        rows.append(
            (f"GrowthBook {version} run() (reused SDK, set_attributes)", growthbook["reused_us"])
        )
    rows.append(("naive md5 % 100 (no layers, no logging)", naive_us))
    width = max(len(name) for name, _ in rows)
    print(f"\n{'implementation':<{width}}  {'µs/assignment':>14}  {'vs Flywheel A/B':>16}")
    for name, us in rows:
        print(f"{name:<{width}}  {us:>14.2f}  {us / base:>15.2f}x")
    print(
        f"\nexposures stored: {meta['exposures_stored']:,} "
        f"(final flush {meta['final_flush_s']:.2f} s; the rest were written by the "
        "background thread during the loops)"
    )


if __name__ == "__main__":
    main()
