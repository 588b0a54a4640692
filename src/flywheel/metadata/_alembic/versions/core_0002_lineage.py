"""core: lineage edges between objects of every system.

Revision ID: core_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "core_0002"
down_revision = "core_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "lineage_edges",
        sa.Column("src_kind", sa.String(40), nullable=False),
        sa.Column("src_id", sa.String(300), nullable=False),
        sa.Column("dst_kind", sa.String(40), nullable=False),
        sa.Column("dst_id", sa.String(300), nullable=False),
        sa.Column("relation", sa.String(40), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("src_kind", "src_id", "dst_kind", "dst_id"),
    )
    op.create_index("ix_lineage_dst", "lineage_edges", ["dst_kind", "dst_id"])


def downgrade() -> None:
    op.drop_index("ix_lineage_dst", "lineage_edges")
    op.drop_table("lineage_edges")
