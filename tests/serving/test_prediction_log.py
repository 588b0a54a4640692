"""The prediction log writes one table per flush: records of several layouts in one buffer come
out exactly as if each record had been flattened alone (the brute-force reference below)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from flywheel.serving._prediction_log import PredictionLogger, PredictionRecord, flatten_tensors


def _records() -> list[PredictionRecord]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(60):
        n = int(rng.integers(1, 4))
        names: list[str] | None = None
        if i % 4 == 0:  # one 2-D input with feature names
            inputs = {"input": rng.normal(size=(n, 3)).astype(np.float32)}
            names = ["a", "b", "c"]
        elif i % 4 == 1:  # 1-D int input and bytes (object) input
            inputs = {
                "x": rng.integers(0, 9, size=n).astype(np.int32),
                "s": np.array([b"q", "r", 3][:n], dtype=object),
            }
        elif i % 4 == 2:  # names are ignored beside a second input; a 3-D input is left out
            inputs = {"input": rng.normal(size=(n, 3)), "z": np.zeros((n, 2, 2))}
            names = ["a", "b", "c"]
        else:
            inputs = {"input": rng.normal(size=(n, 3)).astype(np.float32), "flag": np.ones(n, bool)}
        outputs = {"label": rng.integers(0, 2, size=n), "proba": rng.random((n, 2))}
        shadow = {"label": rng.integers(0, 2, size=n)} if i % 7 == 0 else None
        out.append(
            PredictionRecord(
                request_id=f"r{i:03d}",
                ts=datetime(2026, 12, 3, 12, 0, i, tzinfo=UTC),
                endpoint="ep",
                model="m",
                version=1 + i % 2,
                kind="shadow" if shadow else "primary",
                latency_ms=0.5 * i,
                inputs=inputs,
                outputs=outputs,
                feature_names=names,
                shadow_version=3 if shadow else None,
                shadow_outputs=shadow,
                disagreement=0.25 if shadow else None,
            )
        )
    return out


def _reference(records: list[PredictionRecord]) -> pa.Table:
    """Each record flattened alone into its own table, the tables joined."""
    tables = []
    for r in records:
        n = next(iter(r.inputs.values())).shape[0]
        cols: dict[str, list] = {
            "request_id": [r.request_id] * n,
            "ts": [r.ts] * n,
            "endpoint": [r.endpoint] * n,
            "model": [r.model] * n,
            "version": [r.version] * n,
            "kind": [r.kind] * n,
            "latency_ms": [r.latency_ms] * n,
            "row": list(range(n)),
        }
        for name, values in [
            *flatten_tensors(r.inputs, n, names=r.feature_names).items(),
            *flatten_tensors(r.outputs, n, prefix="pred_").items(),
        ]:
            cols[name] = np.asarray(values).tolist()
        if r.shadow_outputs is not None:
            cols["shadow_version"] = [r.shadow_version] * n
            cols["disagreement"] = [r.disagreement] * n
            for name, values in flatten_tensors(r.shadow_outputs, n, prefix="shadow_pred_").items():
                cols[name] = np.asarray(values).tolist()
        tables.append(pa.table(cols))
    return pa.concat_tables(tables, promote_options="permissive")


def test_one_flush_of_mixed_layouts_equals_each_record_flattened_alone(tmp_path: Path) -> None:
    records = _records()
    logger = PredictionLogger(tmp_path, sample_rate=1.0)
    for r in records:
        logger.log(r)
    assert logger.flush() == sum(next(iter(r.inputs.values())).shape[0] for r in records)
    (written,) = (tmp_path / "serving_predictions" / "endpoint=ep").glob("*.parquet")
    got = pq.read_table(written)
    want = _reference(records)
    assert set(got.column_names) == set(want.column_names)
    assert {"a", "b", "c", "input_0", "x", "s", "flag", "pred_proba_1"} <= set(got.column_names)
    assert "z" not in got.column_names and "z_0" not in got.column_names
    keys = [("request_id", "ascending"), ("row", "ascending")]
    got = got.select(want.column_names).sort_by(keys)
    want = want.sort_by(keys)
    for name in want.column_names:
        assert got[name].type == want[name].type, name
        assert got[name].to_pylist() == want[name].to_pylist(), name
