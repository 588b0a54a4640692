"""The README walkthrough of examples/features runs as written (CLI in-process)."""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from flywheel.cli._main import app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "features"


@pytest.mark.slow
def test_example_walkthrough(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "example"
    shutil.copytree(
        EXAMPLE,
        work,
        ignore=shutil.ignore_patterns(".flywheel", "data", "flywheel.yaml", "clicks.json"),
    )
    monkeypatch.chdir(work)
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(app, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    cli("init", ".")
    runpy.run_path("make_data.py", run_name="__main__")
    assert "6 to add" in cli("features", "plan", "feature_repo")
    assert "Applied: 6 to add" in cli("features", "apply", "feature_repo")
    assert "0 to add, 0 to change" in cli("features", "apply", "feature_repo")
    assert "1,000 rows" in cli("features", "materialize-incremental", "now")
    assert "pushed 3" in cli("features", "push", "clicks", "clicks.json")
    assert "3 applied" in cli("features", "stream", "--until-idle")
    capsys.readouterr()
    runpy.run_path("read_features.py", run_name="__main__")
    out = capsys.readouterr().out
    assert "['present', 'present', 'missing']" in out
    assert "3 rows in part-00000.parquet" in out
    assert '"ref": "user_stats@v1"' in cli("features", "describe", "user_stats")
    listing = cli("features", "list")
    assert "user_stats" in listing and "click_stats" in listing
