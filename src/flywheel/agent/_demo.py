"""Seeded state and rules for the agent's demo, tests and evaluation suite.

``seed_churn(project)`` makes a small, fully real slice of a project: a feature view and the
feature service ``churn_features``, two tracked training runs of a scikit-learn churn model
with their AUC, both versions registered with that feature service, version 1 in staging and
version 2 in production. ``DEFAULT_RULES`` is the scripted model's rules file for operators'
questions over those tools (``flywheel ask init-model`` registers it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flywheel.project import Project

CHURN_FEATURES = ("tenure_days", "orders_90d", "support_tickets")


@dataclass(frozen=True)
class ChurnSeed:
    """What ``seed_churn`` created (the facts a correct answer must contain)."""

    model: str
    production_version: int
    staging_version: int
    production_auc: float
    staging_auc: float
    feature_service: str
    features: tuple[str, ...]
    production_run_id: str


def seed_churn(project: Project, *, auc: tuple[float, float] = (0.812, 0.873)) -> ChurnSeed:
    """Register two churn model versions trained on ``churn_features`` (see module doc)."""
    from datetime import UTC, datetime, timedelta

    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    from flywheel.features import (
        Entity,
        FeatureService,
        FeatureStore,
        FeatureView,
        Field,
        ParquetSource,
    )
    from flywheel.registry import Registry
    from flywheel.tracking import Tracker

    rng = np.random.default_rng(0)
    n = 200
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "customer_id": np.arange(n, dtype="int64"),
            "ts": [t0 + timedelta(hours=int(h)) for h in rng.integers(0, 240, n)],
            "tenure_days": rng.integers(1, 2000, n).astype("int64"),
            "orders_90d": rng.integers(0, 30, n).astype("int64"),
            "support_tickets": rng.integers(0, 5, n).astype("int64"),
        }
    )
    path = project.root / "data" / "customers.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, index=False)
    view = FeatureView(
        "customer_stats",
        entities=["customer"],
        source=ParquetSource("data/customers.parquet", timestamp_field="ts"),
        schema=[Field(name, "int64") for name in CHURN_FEATURES],
        ttl="30d",
        description="Customer activity, daily",
    )
    FeatureStore(project).apply(
        [
            Entity("customer", join_key="customer_id", dtype="int64"),
            view,
            FeatureService("churn_features", [view], description="What the churn model reads"),
        ]
    )
    x = frame[list(CHURN_FEATURES)].to_numpy(dtype="float64")
    y = (frame["support_tickets"] > 2).to_numpy().astype("int64")
    tracker = Tracker(project)
    registry = Registry(project)
    versions: list[int] = []
    run_ids: list[str] = []
    for i, score in enumerate(auc):
        run = tracker.start_run("churn", params={"C": [0.1, 1.0][i]}, log_system_info=False)
        model = LogisticRegression(C=[0.1, 1.0][i], max_iter=200).fit(x, y)
        run.log_metric("auc", score)
        run.end()
        mv = registry.register_model(
            "churn",
            model,
            flavor="sklearn",
            input_example={"input": x[:4]},
            run=run,
            feature_service="churn_features",
            export_onnx=False,
        )
        versions.append(mv.version)
        run_ids.append(run.id)
    registry.set_stage("churn", versions[0], "staging", reason="first candidate")
    registry.set_stage("churn", versions[1], "production", reason="better AUC")
    return ChurnSeed(
        model="churn",
        production_version=versions[1],
        staging_version=versions[0],
        production_auc=auc[1],
        staging_auc=auc[0],
        feature_service="churn_features",
        features=tuple(f"customer_stats@v1:{f}" for f in CHURN_FEATURES),
        production_run_id=run_ids[1],
    )


def register_scripted_model(
    project: Project, name: str, rules: dict[str, Any] | None = None
) -> Any:
    """Register ``rules`` (default ``DEFAULT_RULES``) as model ``name`` with flavor
    ``scripted-chat`` and put that version in production; returns the ``ModelVersion``."""
    from flywheel.registry import Registry

    registry = Registry(project)
    mv = registry.register_model(
        name.split("@", 1)[0],
        rules or DEFAULT_RULES,
        flavor="scripted-chat",
        description="SCRIPTED chat model: deterministic rules, not a language model",
        tags={"scripted": "true"},
    )
    registry.set_stage(mv.name, mv.version, "production", reason="scripted agent model")
    return mv


DEFAULT_RULES: dict[str, Any] = {
    "label": "flywheel-ops (scripted chat model, not an LLM)",
    "fallback": (
        "I am Flywheel's scripted chat model (not an LLM): I answer only the questions in my "
        "rules file. Point agent.base_url/agent.model at a real model for open questions."
    ),
    "rules": [
        {
            "pattern": r"(?i)which version of (?P<model>[A-Za-z0-9_.-]+) is in production",
            "calls": [
                {"tool": "resolve_model", "arguments": {"uri": "models:/{model}@production"}},
                {"tool": "get_run", "arguments": {"run_id": "{r0.run_id}"}},
                {"tool": "describe_feature_object", "arguments": {"name": "{r0.feature_service}"}},
            ],
            "answer": (
                "{model} version {r0.version} is in production. Its training run {r0.run_id} "
                "logged AUC {r1.metrics.auc.last}. It uses the feature service "
                "{r0.feature_service}: {r2.versions.-1.spec.features}."
            ),
            "on_error": "I could not answer that: {error}",
        },
        {
            "pattern": r"(?i)(?:stage|promotion|rollback) history of (?P<model>[A-Za-z0-9_.-]+)",
            "calls": [{"tool": "model_stage_history", "arguments": {"name": "{model}"}}],
            "answer": "Stage changes of {model}, newest first: {r0}",
            "on_error": "I could not answer that: {error}",
        },
        {
            "pattern": r"(?i)(?:what|which) models? (?:are|is) registered",
            "calls": [{"tool": "list_models", "arguments": {}}],
            "answer": "Registered models: {r0}",
            "on_error": "I could not answer that: {error}",
        },
        {
            "pattern": r"(?i)promote (?P<model>[A-Za-z0-9_.-]+) (?:version |v)(?P<version>\d+)"
            r" to (?P<stage>[a-z]+)",
            "calls": [
                {
                    "tool": "promote_model",
                    "arguments": {"name": "{model}", "version": "{version}", "stage": "{stage}"},
                }
            ],
            "answer": "Requested: {model} version {version} to {stage}.",
            "on_error": "I could not do that: {error}",
        },
        {
            "pattern": r"(?i)which (?:api )?tokens exist",
            "calls": [{"tool": "list_tokens", "arguments": {}}],
            "answer": "Tokens: {r0.tokens}",
            "on_error": "I could not answer that: {error}",
        },
        {
            "pattern": r"(?i)slow(?:est)? traces",
            "calls": [{"tool": "search_traces", "arguments": {"min_duration_ms": 100}}],
            "answer": "Traces slower than 100 ms: {r0.traces}",
            "on_error": "I could not answer that: {error}",
        },
    ],
}
