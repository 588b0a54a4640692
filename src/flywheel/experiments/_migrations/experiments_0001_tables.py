"""experiments: definitions, layers, exposures, events and bandit state.

Revision ID: experiments_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "experiments_0001"
down_revision = None
branch_labels = ("experiments",)
depends_on = "core_0002"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("layer", sa.String(200), nullable=False),
        sa.Column("allocation", sa.Text(), nullable=False),
        sa.Column("layer_ranges", sa.Text(), nullable=False),
        sa.Column("winner", sa.String(100), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_experiments_layer", "experiments", ["layer", "status"])
    op.create_table(
        "experiment_layers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "experiment_changes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
    )
    op.execute("INSERT INTO experiment_changes (id, version) VALUES (1, 0)")
    op.create_table(
        "experiment_exposures",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("decision_id", sa.String(40), nullable=False, unique=True),
        sa.Column("experiment", sa.String(100), nullable=False),
        sa.Column("unit_id", sa.String(200), nullable=False),
        sa.Column("variant", sa.String(100), nullable=False),
        sa.Column("propensity", sa.Float(), nullable=False),
        sa.Column("context", sa.Text(), nullable=True),
        sa.Column("ts", sa.Float(), nullable=False),
    )
    op.create_index(
        "ix_experiment_exposures_unit", "experiment_exposures", ["experiment", "unit_id"]
    )
    op.create_table(
        "experiment_events",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(64), nullable=True, unique=True),
        sa.Column("unit_id", sa.String(200), nullable=False),
        sa.Column("event_type", sa.String(100), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("experiment", sa.String(100), nullable=True),
        sa.Column("decision_id", sa.String(40), nullable=True),
        sa.Column("applied", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_experiment_events_unit", "experiment_events", ["unit_id", "event_type"])
    op.create_index("ix_experiment_events_pending", "experiment_events", ["experiment", "applied"])
    op.create_table(
        "experiment_bandit_state",
        sa.Column("experiment", sa.String(100), primary_key=True),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "experiment_bandit_state",
        "experiment_events",
        "experiment_exposures",
        "experiment_changes",
        "experiment_layers",
        "experiments",
    ):
        op.drop_table(table)
