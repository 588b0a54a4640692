"""`flywheel recs ingest` end to end, in process, on a small synthetic file."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from flywheel.cli import main
from flywheel.features import FeatureStore
from tests.conftest import make_project


def _run(args: list[str]) -> int:
    try:
        main(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def test_ingest_from_a_file(
    tiny_raw: pd.DataFrame, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "shop.csv.gz"
    tiny_raw.to_csv(data, index=False)
    proj = make_project(tmp_path / "proj")
    try:
        code = _run(
            ["recs", "ingest", "--data", str(data), "--config", str(proj.root / "flywheel.yaml")]
        )
        out = capsys.readouterr().out
        assert code == 0, out
        assert str(data) in out and "materialized recs_user_rfm@v1" in out
        fs = FeatureStore(proj)
        try:
            users = pd.read_parquet(proj.root / ".flywheel/recsys/users.parquet")
            got = fs.get_online_features(
                ["recs_user_rfm:frequency"], {"user_id": users["user_id"].head(3).tolist()}
            ).to_dict()
            assert got["frequency"] == users["frequency"].head(3).tolist()
        finally:
            fs.close()
    finally:
        proj.close()


def test_ingest_refuses_data_and_synthetic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    proj = make_project(tmp_path / "proj")
    try:
        code = _run(
            [
                "recs",
                "ingest",
                "--synthetic",
                "--data",
                str(tmp_path / "x.csv"),
                "--config",
                str(proj.root / "flywheel.yaml"),
            ]
        )
        assert code != 0
        assert "exclude each other" in capsys.readouterr().err
    finally:
        proj.close()
