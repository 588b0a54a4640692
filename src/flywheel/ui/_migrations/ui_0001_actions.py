"""ui: the audit log of actions taken from the dashboard (who, what, why, outcome).

Revision ID: ui_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "ui_0001"
down_revision = None
branch_labels = ("ui",)
depends_on = "core_0002"


def upgrade() -> None:
    op.create_table(
        "ui_actions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target", sa.String(300), nullable=False, index=True),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.String(500), nullable=False),
        sa.Column("request", sa.Text, nullable=False),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("error", sa.Text, nullable=True),
    )


def downgrade() -> None:
    op.drop_table("ui_actions")
