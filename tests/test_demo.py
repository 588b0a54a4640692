"""`make demo` end to end, on a small synthetic shop with a short replay (about a minute)."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_the_whole_flywheel(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "demo.py")]
        + ["--synthetic", "--small", "--no-serve", "--replay-limit", "60"]
        + ["--dir", str(tmp_path / "shop"), "--port", str(port)],
        capture_output=True,
        text=True,
        timeout=420,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-6000:]
    text = " ".join(out.split())  # rich wraps long lines
    assert "SYNTHETIC data" in text  # said plainly when the real file is not used
    # every step ran, in order
    titles = re.findall(r"^(\d+)\. (.+)$", done.stdout, flags=re.MULTILINE)
    assert [int(n) for n, _ in titles] == list(range(1, len(titles) + 1))
    assert len(titles) == 10
    # both models trained by scheduled jobs and registered; the ranker's v2 canaried
    assert "registered models:/recs-two-tower/1" in text
    assert "registered models:/recs-ranker/1" in text
    assert "registered models:/recs-ranker/2" in text
    assert "canary of v2 on endpoint recs-ranker" in text
    # the replay went through the API and the learned models answered
    assert "60/60" in text
    assert re.search(r"two_tower=recs-two-tower/1 \d+", text)
    assert re.search(r"ranker=recs-ranker/\d \d+", text)
    assert "errors: 0" in text
    # the experiment report has the strategies' exposures
    assert "recs-strategy" in text and "ranked" in text
    assert "demo wall time" in text
