from __future__ import annotations

import pytest

from flywheel.features import (
    BreakingChangeError,
    FeatureNotFound,
    FeatureService,
    FeatureStore,
    FeatureStoreError,
    Field,
)
from flywheel.lineage import Node, downstream, upstream
from flywheel.project import Project
from tests.features.conftest import user_entity, user_stats_view


def test_apply_returns_plan_and_is_idempotent(any_project: Project, repo_objects: list) -> None:
    store = FeatureStore(any_project)
    plan = store.apply(repo_objects)
    assert sorted(c.label for c in plan.added) == [
        "entity user",
        "feature_service ranker_features",
        "feature_view user_embedding@v1",
        "feature_view user_stats@v1",
    ]
    assert "4 to add" in plan.render()
    again = store.apply(repo_objects)
    assert not again.has_changes and len(again.unchanged) == 4
    entry = next(e for e in store.list_definitions("feature_view") if e.name == "user_stats")
    assert entry.created_at <= entry.updated_at
    assert store.get_feature_service("ranker_features").features == [
        "user_stats@v1:clicks",
        "user_stats@v1:spend",
        "user_stats@v1:country",
    ]


def test_compatible_change_in_place_and_breaking_change_refused(any_project: Project) -> None:
    store = FeatureStore(any_project)
    store.apply([user_entity(), user_stats_view()])
    wider = user_stats_view(
        schema=[
            Field("clicks", "int64"),
            Field("spend", "float64"),
            Field("country", "string"),
            Field("age", "int64"),
        ],
        description="now with age",
    )
    plan = store.apply([user_entity(), wider])
    assert [c.label for c in plan.changed] == ["feature_view user_stats@v1"]
    assert any("age" in d for d in plan.changed[0].details)
    assert [f.name for f in store.get_feature_view("user_stats").schema][-1] == "age"

    retyped = user_stats_view(
        schema=[Field("clicks", "float64"), Field("spend", "float64"), Field("country", "string")]
    )
    with pytest.raises(BreakingChangeError, match=r"clicks.*int64 -> float64.*user_stats@v2"):
        store.plan([user_entity(), retyped])
    # As a new version both stay readable.
    v2 = user_stats_view(
        name="user_stats@v2",
        schema=[Field("clicks", "float64"), Field("spend", "float64")],
    )
    plan = store.apply([user_entity(), v2])
    assert [c.label for c in plan.added] == ["feature_view user_stats@v2"]
    assert store.get_feature_view("user_stats").version == 2
    assert store.get_feature_view("user_stats@v1").schema[0].dtype == "int64"
    history = store.describe("user_stats")["history"]
    assert [h["action"] for h in history] == ["add", "change", "add"]


def test_prune_removes_and_unknown_refs_fail(project: Project, repo_objects: list) -> None:
    store = FeatureStore(project)
    store.apply(repo_objects)
    plan = store.plan([user_entity(), user_stats_view()], prune=True)
    assert sorted(c.label for c in plan.removed) == [
        "feature_service ranker_features",
        "feature_view user_embedding@v1",
    ]
    store.apply([user_entity(), user_stats_view()], prune=True)
    with pytest.raises(FeatureNotFound):
        store.get_feature_service("ranker_features")
    with pytest.raises(FeatureNotFound, match="no feature 'nope'"):
        store.apply([FeatureService("bad", ["user_stats:nope"])])
    with pytest.raises(FeatureNotFound, match="unknown entity 'shop'"):
        store.apply([user_stats_view(entities=["shop"])])  # type: ignore[arg-type]


def test_definition_validation_messages() -> None:
    with pytest.raises(FeatureStoreError, match="unknown dtype 'int'"):
        Field("x", "int")
    with pytest.raises(FeatureStoreError, match="duration"):
        user_stats_view(ttl="soon")
    with pytest.raises(FeatureStoreError, match="declared twice"):
        user_stats_view(schema=[Field("a", "int64"), Field("a", "int64")])


def test_lineage_source_view_service(project: Project, repo_objects: list) -> None:
    store = FeatureStore(project)
    store.apply(repo_objects)
    down = downstream(project.db, Node("data_source", "data/user_stats.parquet"))
    assert Node("feature_service", "ranker_features") in down.nodes
    up = upstream(project.db, Node("feature_service", "ranker_features"))
    assert Node("feature_view", "user_stats@v1") in up.nodes
    described = store.describe("user_stats")
    assert described["versions"][0]["lineage"]["nodes"]
