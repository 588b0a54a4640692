"""Every ``benchmarks/*.py`` runs from a fresh checkout in ``--smoke`` mode (#17 item 13).

The contract (posted in NOTES): ``python benchmarks/<x>.py --smoke`` runs tiny sizes, skips
peers whose install is not wanted (and says so), prints its table and exits 0; any failure,
including a peer's wrong answer, is a non-zero exit. A benchmark without ``--smoke`` fails here,
so a new one cannot skip CI. Benchmarks whose owners have not added the flag yet are listed in
``PENDING`` as strict xfails: once the flag lands the entry must go (an XPASS fails).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
# Seconds per benchmark; generous because CI and this shared machine are slow (figures are not
# measured here, only that the benchmark runs and checks its answers).
TIME_LIMIT_S = 300

PENDING: dict[str, str] = {}

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _params() -> list[object]:
    out: list[object] = []
    for path in BENCHMARKS:
        marks = []
        if path.name in PENDING:
            marks.append(pytest.mark.xfail(strict=True, reason=PENDING[path.name]))
        out.append(pytest.param(path, id=path.name, marks=marks))
    return out


def test_every_benchmark_is_listed() -> None:
    assert BENCHMARKS, "no benchmarks found"
    assert set(PENDING) <= {p.name for p in BENCHMARKS}, "stale PENDING entry"


@pytest.mark.parametrize("bench", _params())
def test_benchmark_smoke(bench: Path, tmp_path: Path) -> None:
    # Checked statically first: running a benchmark that ignores the flag would run it full size.
    assert '"--smoke"' in bench.read_text(encoding="utf-8"), f"{bench.name} has no --smoke flag"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, str(bench), "--smoke"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT_S,
        check=False,
    )
    out = (done.stdout + done.stderr)[-4000:]
    assert done.returncode == 0, out
    assert len(done.stdout.splitlines()) >= 3, f"{bench.name} printed no table:\n{out}"
