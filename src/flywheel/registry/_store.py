"""SQL for the registry: models, versions, stage pointers and the audit log.

Version numbers are handed out inside the write transaction that inserts the version, under a
per-model lock (SQLite: the database write lock taken at ``BEGIN IMMEDIATE``; PostgreSQL: a
transaction-scoped advisory lock), so concurrent registrations get 1, 2, 3, ... with no gap or
duplicate. Stage changes take one registry-wide lock on PostgreSQL so audit ids commit in order
and a poller reading ``since_id`` never skips an entry.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from flywheel.metadata import Database
from flywheel.registry._types import AuditEntry, ModelVersion, RegisteredModel, Signature

models_t = sa.table(
    "registry_models",
    sa.column("name", sa.String),
    sa.column("description", sa.Text),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
versions_t = sa.table(
    "registry_versions",
    sa.column("name", sa.String),
    sa.column("version", sa.Integer),
    sa.column("flavor", sa.String),
    sa.column("artifact_sha256", sa.String),
    sa.column("onnx_sha256", sa.String),
    sa.column("example_sha256", sa.String),
    sa.column("signature", sa.Text),
    sa.column("metrics", sa.Text),
    sa.column("run_id", sa.String),
    sa.column("training_dataset", sa.String),
    sa.column("feature_service", sa.String),
    sa.column("code_commit", sa.String),
    sa.column("description", sa.Text),
    sa.column("tags", sa.Text),
    sa.column("config", sa.Text),
    sa.column("details", sa.Text),
    sa.column("archived", sa.Boolean),
    sa.column("created_by", sa.String),
    sa.column("created_at", sa.DateTime(timezone=True)),
)
stages_t = sa.table(
    "registry_stages",
    sa.column("name", sa.String),
    sa.column("stage", sa.String),
    sa.column("version", sa.Integer),
    sa.column("updated_at", sa.DateTime(timezone=True)),
)
audit_t = sa.table(
    "registry_audit",
    sa.column("id", sa.Integer),
    sa.column("model", sa.String),
    sa.column("stage", sa.String),
    sa.column("action", sa.String),
    sa.column("from_version", sa.Integer),
    sa.column("to_version", sa.Integer),
    sa.column("actor", sa.String),
    sa.column("reason", sa.Text),
    sa.column("at", sa.DateTime(timezone=True)),
)


def aware(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def lock(conn: sa.Connection, key: str) -> None:
    """A transaction-scoped lock on ``key`` (PostgreSQL advisory lock; SQLite is serialised)."""
    if conn.dialect.name == "postgresql":
        k = int.from_bytes(hashlib.sha256(f"flywheel-registry:{key}".encode()).digest()[:7], "big")
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": k})


def stages_by_version(conn: sa.Connection, name: str) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for row in conn.execute(
        sa.select(stages_t.c.stage, stages_t.c.version)
        .where(stages_t.c.name == name)
        .order_by(stages_t.c.stage)
    ):
        out.setdefault(int(row.version), []).append(row.stage)
    return out


def row_to_version(row: Any, stages: list[str]) -> ModelVersion:
    all_stages = [*stages, "archived"] if row.archived else stages
    return ModelVersion(
        name=row.name,
        version=int(row.version),
        flavor=row.flavor,
        artifact_sha256=row.artifact_sha256,
        onnx_sha256=row.onnx_sha256,
        signature=Signature.from_dict(json.loads(row.signature)),
        metrics={k: float(v) for k, v in json.loads(row.metrics).items()},
        run_id=row.run_id,
        training_dataset=row.training_dataset,
        feature_service=row.feature_service,
        stages=tuple(all_stages),
        created_at=aware(row.created_at),
        description=row.description,
        tags=json.loads(row.tags),
        config=json.loads(row.config),
        code_commit=row.code_commit,
        created_by=row.created_by,
        details=json.loads(row.details),
    )


def row_to_audit(row: Any) -> AuditEntry:
    return AuditEntry(
        id=int(row.id),
        model=row.model,
        stage=row.stage,
        from_version=row.from_version,
        to_version=row.to_version,
        actor=row.actor,
        reason=row.reason,
        at=aware(row.at),
        action=row.action,
    )


def insert_audit(
    conn: sa.Connection,
    model: str,
    stage: str,
    action: str,
    from_version: int | None,
    to_version: int | None,
    actor: str,
    reason: str,
) -> None:
    conn.execute(
        audit_t.insert().values(
            model=model,
            stage=stage,
            action=action,
            from_version=from_version,
            to_version=to_version,
            actor=actor,
            reason=reason,
            at=datetime.now(UTC),
        )
    )


def list_models(db: Database) -> list[RegisteredModel]:
    with db.read() as conn:
        latest = dict(
            conn.execute(
                sa.select(versions_t.c.name, sa.func.max(versions_t.c.version)).group_by(
                    versions_t.c.name
                )
            ).all()
        )
        stages: dict[str, dict[str, int]] = {}
        for row in conn.execute(sa.select(stages_t)):
            stages.setdefault(row.name, {})[row.stage] = int(row.version)
        rows = conn.execute(sa.select(models_t).order_by(models_t.c.name)).all()
    return [
        RegisteredModel(
            name=r.name,
            description=r.description,
            created_at=aware(r.created_at),
            latest_version=int(latest.get(r.name, 0)),
            stages=stages.get(r.name, {}),
        )
        for r in rows
    ]


__all__ = [
    "audit_t",
    "aware",
    "insert_audit",
    "list_models",
    "lock",
    "models_t",
    "row_to_audit",
    "row_to_version",
    "stages_by_version",
    "stages_t",
    "versions_t",
]
