"""tracking: experiments, runs, metric points and run artifacts.

Revision ID: tracking_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "tracking_0001"
down_revision = None
branch_labels = ("tracking",)
depends_on = "core_0002"


def upgrade() -> None:
    op.create_table(
        "tracking_experiments",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "tracking_runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("experiment", sa.String(200), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("tags", sa.Text, nullable=False),
        sa.Column("system", sa.Text, nullable=False),
        sa.Column("git_commit", sa.String(64), nullable=True),
        sa.Column("user", sa.String(200), nullable=False),
    )
    op.create_table(
        "tracking_metrics",
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("key", sa.String(250), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("timestamp", sa.Float(precision=53), nullable=False),
    )
    op.create_index("ix_tracking_metrics_run_key", "tracking_metrics", ["run_id", "key", "step"])
    op.create_table(
        "tracking_artifacts",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(500), primary_key=True),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("tracking_artifacts")
    op.drop_index("ix_tracking_metrics_run_key", "tracking_metrics")
    op.drop_table("tracking_metrics")
    op.drop_table("tracking_runs")
    op.drop_table("tracking_experiments")
