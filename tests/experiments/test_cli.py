"""`flywheel experiments ...` end to end through the CLI entry point (in process, to stay fast)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from flywheel.cli._main import main

DEFINITION = """
name: checkout-button
variants: [control, green]
metrics:
  - {name: conversion, kind: proportion, event: purchase}
"""


@pytest.fixture
def cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> object:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FLYWHEEL_CONFIG", raising=False)
    monkeypatch.setenv("COLUMNS", "200")

    def run(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
        if stdin is not None:
            monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
        code = 0
        try:
            main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
        out = capsys.readouterr()
        return code, out.out, out.err

    run("init", ".")
    return run


def test_create_assign_log_report_stop(cli: object, tmp_path: Path) -> None:
    run = cli  # type: ignore[assignment]
    (tmp_path / "exp.yaml").write_text(DEFINITION)
    code, out, err = run("experiments", "create", "exp.yaml")
    assert code == 0, err
    assert "created experiment checkout-button" in out
    code, out, err = run("experiments", "create", "exp.yaml")
    assert code == 1 and err.startswith("error: experiment 'checkout-button' already exists")
    code, out, _ = run("experiments", "assign", "checkout-button", "u1", "u2", "u3", "--json")
    assignments = json.loads(out)
    assert [a["unit_id"] for a in assignments] == ["u1", "u2", "u3"]
    assert all(a["propensity"] == 0.5 and a["decision_id"] for a in assignments)
    events = "\n".join(
        json.dumps({"unit_id": f"u{i}", "event_type": "purchase", "ts": 4e9}) for i in (1, 2)
    )
    code, out, err = run("experiments", "log-events", "-", stdin=events)
    assert "stored 2 new events" in out, err
    code, out, _ = run("experiments", "report", "checkout-button", "--json")
    report = json.loads(out)
    assert report["units"] == 3 and report["srm"] is not None
    code, out, _ = run("experiments", "report", "checkout-button")
    assert "primary: conversion" in out and "sample ratio" in out
    code, out, err = run("experiments", "history", "checkout-button", "--buckets", "4", "--json")
    history = json.loads(out)
    assert code == 0 and len(history["points"]) == 4, err
    assert history["points"][-1]["units"] == 3
    last = history["points"][-1]["time"]
    code, out, err = run(
        "experiments", "history", "checkout-button", "--json", "--since", str(last + 1)
    )
    assert code == 0 and json.loads(out)["points"] == [], err  # nothing after the last event
    code, out, _ = run("experiments", "history", "checkout-button", "--buckets", "3")
    assert "conversion (proportion of purchase)" in out and "p (seq.)" in out
    code, _, err = run("experiments", "history", "checkout-button", "--metric", "nope")
    assert code == 1 and err.startswith("error:") and "metric" in err
    code, out, err = run("experiments", "traffic", "checkout-button", "-w", "green=3")
    assert "25.00% of its units changed variant" in out, err
    code, out, _ = run("experiments", "list")
    assert "checkout-button" in out and "running" in out
    code, out, _ = run("experiments", "stop", "checkout-button", "--winner", "green")
    assert code == 0
    code, out, _ = run("experiments", "show", "checkout-button", "--json")
    assert json.loads(out)["status"] == "stopped"


def test_bandit_commands(cli: object, tmp_path: Path) -> None:
    run = cli  # type: ignore[assignment]
    (tmp_path / "b.yaml").write_text("name: b\nbandit: {policy: epsilon_greedy, arms: [x, y]}\n")
    assert run("experiments", "create", "b.yaml")[0] == 0
    decision = json.loads(run("experiments", "assign", "b", "u1", "--json")[1])[0]
    code, _, err = run(
        "experiments", "log-reward", "b", "u1", "1", "--decision-id", decision["decision_id"]
    )
    assert code == 0, err
    report = json.loads(run("experiments", "report", "b", "--json")[1])
    arms = {a["arm"]: a for a in report["bandit"]["arms"]}
    assert arms[decision["variant"]]["pulls"] == 1
    allocation = json.loads(run("experiments", "history", "b", "--json")[1])["allocation"]
    assert [p["version"] for p in allocation["points"]] == [0, 1]
    code, out, _ = run("experiments", "history", "b")
    assert code == 0 and "allocation" in out and "50.0%" in out
    code, _, err = run("experiments", "evaluate", "b", "--target", "nonsense")
    assert code == 1 and err.startswith("error:")
