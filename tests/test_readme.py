"""The README's example of the loop runs as written in a fresh project and prints what it says."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _loop_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## The loop in one small script", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "the README lost its loop example"
    return match.group(1)


def test_readme_is_short_and_points_into_the_docs() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    for link in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / link).is_file(), f"README links to {link}, which does not exist"


def test_no_file_points_at_the_shared_folder_for_documentation() -> None:
    """The manual is the repository's own (README + docs/): nothing sends a reader to the
    workplace's shared design notes (the data files there are named only as data)."""
    listed = subprocess.run(
        ["git", "ls-files", "*.md", "*.py", "*.yml", "*.yaml", "*.toml", "Makefile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    pattern = re.compile(r"shared/(?:DESIGN|CONVENTIONS|DEVELOPERS|NOTES)\b|shared/[\w./-]*\.md\b")
    offenders = []
    for name in listed:
        path = ROOT / name
        if path.is_file() and name != "tests/test_readme.py":
            offenders += [f"{name}: {m.group(0)}" for m in pattern.finditer(path.read_text())]
    assert not offenders, offenders


@pytest.mark.slow
def test_readme_loop_runs_as_written(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_CONFIG"}
    flywheel = Path(sys.executable).with_name("flywheel")
    subprocess.run([str(flywheel), "init", "shop"], cwd=tmp_path, env=env, check=True)
    project = tmp_path / "shop"
    (project / "loop.py").write_text(_loop_example())
    done = subprocess.run(
        [sys.executable, "loop.py"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[-2] == "[1 0 0]"
    assert lines[-1] in {"control", "v2"}
