"""`flywheel recs evaluate` end to end, in process, on a small synthetic file."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from flywheel.cli import main


@pytest.fixture
def small_file(tiny_raw: pd.DataFrame, tmp_path: Path) -> Path:
    path = tmp_path / "shop.csv.gz"
    tiny_raw.to_csv(path, index=False)
    return path


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_evaluate_prints_one_json_report(
    small_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(small_file.parent / "cache"))
    code = _run(
        ["recs", "evaluate", "--data", str(small_file), "--json", "--text", "tfidf", "--no-ials"]
    )
    out = capsys.readouterr().out
    assert code == 0
    report = json.loads(out)
    assert report["protocol"] == "OR-T1" and report["real_data"] is True
    assert str(small_file) in report["source"]
    names = [r["name"] for r in report["rows"]]
    assert "hybrid" in names and "EASE (λ tuned)" in names and "iALS f=64" not in names
    assert report["train_end"].startswith("2011-11-09")


def test_evaluate_table_and_custom_dates(
    small_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(small_file.parent / "cache"))
    args = ["recs", "evaluate", "--data", str(small_file), "--text", "tfidf", "--no-ials"]
    code = _run([*args, "--train-end", "2011-09-01", "--test-end", "2011-10-01"])
    out = capsys.readouterr().out
    assert code == 0
    assert "| model | kind | R@20 all" in out and "| hybrid | hybrid |" in out
    assert "train < 2011-09-01 00:00:00, test < 2011-10-01 00:00:00" in out
    assert "validation 2011-08-02" in out  # a 30-day window inside the training period


def test_bad_input_is_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(["recs", "evaluate", "--data", str(tmp_path / "missing.parquet")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --data:") and "no such file" in err
    assert len(err.strip().splitlines()) == 1
    (tmp_path / "x.csv").write_text("a,b\n1,2\n")
    assert _run(["recs", "evaluate", "--data", str(tmp_path / "x.csv"), "--text", "bert"]) == 1
    assert "--text" in capsys.readouterr().err


def test_synthetic_flag_says_so(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    args = ["recs", "evaluate", "--synthetic", "--synthetic-users", "300"]
    code = _run([*args, "--synthetic-items", "80", "--text", "tfidf", "--no-ials", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["real_data"] is False and report["source"].startswith("SYNTHETIC data")
    assert _run(["recs", "evaluate", "--synthetic", "--data", str(tmp_path)]) == 1
    assert "exclude each other" in capsys.readouterr().err


def test_rolling_without_the_lab_rows_is_the_served_pipeline_and_the_baselines(
    small_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(small_file.parent / "cache"))
    args = ["recs", "evaluate", "--data", str(small_file), "--json", "--text", "tfidf"]
    args += ["--no-ials", "--rolling", "--cutoffs", "2011-11-09", "--no-lab"]
    assert _run(args) == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["reports"][0]["rows"]
    kinds = {r["name"]: r["kind"] for r in rows}
    assert kinds["served pipeline"] == "served"
    assert set(kinds.values()) == {"served", "baseline"}
    assert {"RepeatFreq", "EASE (λ tuned)"} <= set(kinds)
    assert set(report["mean"]["served pipeline"]) == {"all", "new-only"}
