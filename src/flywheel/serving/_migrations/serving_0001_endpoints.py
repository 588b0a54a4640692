"""serving: endpoints, their change/event log, and canary gate statistics per replica.

Revision ID: serving_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "serving_0001"
down_revision = None
branch_labels = ("serving",)
depends_on = "core_0002"


def upgrade() -> None:
    op.create_table(
        "serving_endpoints",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("spec", sa.Text, nullable=False),
        sa.Column("revision", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "serving_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("endpoint", sa.String(200), nullable=False, index=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("detail", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "serving_canary_stats",
        sa.Column("endpoint", sa.String(200), primary_key=True),
        sa.Column("rollout_id", sa.String(40), primary_key=True),
        sa.Column("step", sa.Integer, primary_key=True),
        sa.Column("replica", sa.String(64), primary_key=True),
        sa.Column("requests", sa.Integer, nullable=False),
        sa.Column("errors", sa.Integer, nullable=False),
        sa.Column("latency", sa.Text, nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("serving_canary_stats")
    op.drop_table("serving_events")
    op.drop_table("serving_endpoints")
