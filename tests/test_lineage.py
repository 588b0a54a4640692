from __future__ import annotations

import itertools

import pytest

from flywheel.errors import FlywheelError
from flywheel.lineage import Node, lineage, record_edge, upstream
from flywheel.lineage import downstream as downstream_of
from flywheel.project import Project


def test_thread_from_source_to_endpoint(any_project: Project) -> None:
    db = any_project.db
    chain = [
        Node("data_source", "orders.parquet"),
        Node("feature_view", "user_stats@v1"),
        Node("feature_service", "ranker_features"),
        Node("training_dataset", "ranker_train_2024"),
        Node("run", "run-1"),
        Node("model_version", "ranker/3"),
        Node("endpoint", "ranker"),
    ]
    for src, dst in itertools.pairwise(chain):
        record_edge(db, src, dst)
    record_edge(db, chain[0], chain[1])  # idempotent
    up = upstream(db, Node("model_version", "ranker/3"))
    assert up.nodes == set(chain[:6])
    down = downstream_of(db, Node("feature_view", "user_stats@v1"))
    assert down.nodes == set(chain[1:])
    both = lineage(db, Node("run", "run-1"))
    assert both.nodes == set(chain)
    assert len(both.to_dict()["edges"]) == 6  # type: ignore[arg-type]


def test_edges_commit_with_the_callers_transaction(project: Project) -> None:
    with pytest.raises(RuntimeError):
        with project.db.write() as conn:
            record_edge(conn, Node("run", "r"), Node("model_version", "m/1"))
            raise RuntimeError("registration failed")
    assert upstream(project.db, Node("model_version", "m/1")).edges == []


def test_bad_nodes_are_refused() -> None:
    with pytest.raises(FlywheelError, match="is not one of"):
        Node("table", "x")
    with pytest.raises(FlywheelError, match="non-empty id"):
        Node("run", "")
