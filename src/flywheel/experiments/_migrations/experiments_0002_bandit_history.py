"""experiments: the allocation history of bandits (arm probabilities at every state update).

One row per bandit state version: when it was written, the policy's arm probabilities (for a
contextual bandit, their mean over the contexts of the rewards just folded in) and the pulls per
arm. Bandits updated before this revision have no rows until their next update.

Revision ID: experiments_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "experiments_0002"
down_revision = "experiments_0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "experiment_bandit_history",
        sa.Column("id", _ID, primary_key=True, autoincrement=True),
        sa.Column("experiment", sa.String(100), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("probabilities", sa.Text(), nullable=False),
        sa.Column("pulls", sa.Text(), nullable=False),
        sa.Column("contextual", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index(
        "ix_experiment_bandit_history", "experiment_bandit_history", ["experiment", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_experiment_bandit_history", table_name="experiment_bandit_history")
    op.drop_table("experiment_bandit_history")
