"""The crash -> resume figures of ``benchmarks/training_bench.py`` (#17 items 15, 20): where a
restart's seconds go is read from torchrun's agent log and rank 0's timestamps, and only a run
that resumed from a checkpoint counts (a restart from scratch is bit-identical too)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import training_bench as bench  # noqa: E402

CRASH_AT = 1_796_316_000.0  # the crashing rank's own timestamp


def glog(at: float, message: str, level: str = "I") -> str:
    """One line as torchrun's agent logs it (glog format, local time, no year)."""
    tm = time.localtime(at)
    frac = f"{at % 1:.6f}"[1:]
    return (
        f"{level}{tm.tm_mon:02d}{tm.tm_mday:02d} {tm.tm_hour:02d}:{tm.tm_min:02d}:"
        f"{tm.tm_sec:02d}{frac} 4242 /venv/torch/distributed/elastic/agent/server/api.py:942] "
        f"{message}"
    )


def restart_logs(resumed_from: int = 5) -> list[str]:
    before = "\n".join(f"step {s} loss 0.5 t={CRASH_AT - 0.01 * (8 - s):.3f}" for s in range(1, 9))
    crashed = f"step 7 loss 0.5 t={CRASH_AT - 0.01:.3f}\ncrashing at step 8 t={CRASH_AT:.3f}\n"
    agent = "\n".join(
        [
            glog(CRASH_AT - 5, "[default] Starting worker group"),
            glog(CRASH_AT + 0.25, "failed (exitcode: -9) local_rank: 1", "E"),
            glog(CRASH_AT + 0.25, "[default] Worker group FAILED. 2/2 attempts left"),
            glog(CRASH_AT + 0.75, "[default] Rendezvous complete for workers. Result:"),
            glog(CRASH_AT + 0.75, "[default] Starting worker group"),
        ]
    )
    after = (
        f"imported t={CRASH_AT + 2.75:.3f} joined t={CRASH_AT + 3.0:.3f}\n"
        f"start step={resumed_from} epoch=0 position={resumed_from} restart=1 "
        f"t={CRASH_AT + 4.5:.3f}\n"
        + "\n".join(
            f"step {s} loss 0.5 t={CRASH_AT + 5.0 + 0.01 * (s - resumed_from - 1):.3f}"
            for s in range(resumed_from + 1, 17)
        )
    )
    return [before, crashed, agent, after]


def test_restart_phases_are_read_from_the_agent_log_and_rank_0() -> None:
    phases = bench.crash_phases(restart_logs())
    assert phases is not None
    assert list(phases) == list(bench.PHASES)
    expected = [0.25, 0.5, 2.0, 0.25, 1.5, 0.5]
    assert [round(v, 3) for v in phases.values()] == expected
    gap = bench.crash_gap(restart_logs())
    assert gap is not None and sum(phases.values()) == pytest.approx(gap, abs=1e-3)


def test_a_restart_from_scratch_has_no_resume_phase() -> None:
    # "start step=0": the group restarted without loading a checkpoint; not a resume.
    assert bench.crash_phases(restart_logs(resumed_from=0)) is None


def test_without_the_agent_log_there_are_no_phases() -> None:
    logs = restart_logs()
    assert bench.crash_phases([logs[0], logs[1], logs[3]]) is None
    assert bench.crash_gap([logs[0], logs[1], logs[3]]) == pytest.approx(5.0, abs=1e-3)


def test_only_recovered_runs_are_counted() -> None:
    side = bench.CrashSide("stock torchrun", wanted=2, max_runs=3)
    side.record("exit 1", False, restart_logs())
    side.record("exit 0", True, restart_logs())
    assert side.gaps == [pytest.approx(5.0, abs=1e-3)] and len(side.phases) == 1
    assert side.ok == "1/2" and side.more
    assert side.exit_summary() == "exit 0 x1, exit 1 x1"
    side.record("timeout", False, [])
    assert not side.more  # three runs: the cap, even without two recoveries


def test_spread_names_median_range_and_count() -> None:
    assert bench.spread([3.0, 1.0, 2.0]) == "2.00 (1.00-3.00, n=3)"
    assert bench.spread([]) == "n/a"


def test_pairs_compare_runs_of_the_same_round_only() -> None:
    fw = bench.CrashSide("Flywheel", wanted=3, max_runs=3)
    raw = bench.CrashSide("stock torchrun", wanted=3, max_runs=3)
    for round_no, (fw_logs, raw_good) in enumerate(
        [(restart_logs(), True), (restart_logs(), False)]
    ):
        fw.record("succeeded (exit 0)", True, fw_logs, round_no)
        raw.record("exit 0" if raw_good else "exit 1", raw_good, restart_logs(), round_no)
    # Round 1's raw run did not recover: only round 0 pairs up (same logs: no difference).
    assert fw.paired(raw) == "+0.00 s (n=1)"
    assert raw.paired(bench.CrashSide("none", wanted=1, max_runs=1)) == "n/a"
