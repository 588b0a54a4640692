"""tracking: per run and key, the last value, min, max and count of a metric; NaN values.

SQLite stores a NaN REAL as NULL, so metric values (and the summaries) become nullable: NULL
reads back as NaN. The summaries are maintained by the metric writer in the same transaction
as the points they summarise, so listing runs reads a few rows per run instead of every point.

Revision ID: tracking_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "tracking_0002"
down_revision = "tracking_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tracking_metrics") as batch:
        batch.alter_column("value", existing_type=sa.Float(precision=53), nullable=True)
    op.create_table(
        "tracking_metric_summaries",
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("key", sa.String(250), primary_key=True),
        sa.Column("last", sa.Float(precision=53), nullable=True),
        sa.Column("last_step", sa.BigInteger, nullable=False),
        sa.Column("last_timestamp", sa.Float(precision=53), nullable=False),
        sa.Column("min", sa.Float(precision=53), nullable=True),
        sa.Column("max", sa.Float(precision=53), nullable=True),
        sa.Column("count", sa.BigInteger, nullable=False),
    )
    # Runs logged before this revision: summarise their points once.
    op.execute(
        """
        INSERT INTO tracking_metric_summaries
            (run_id, key, last, last_step, last_timestamp, min, max, count)
        SELECT a.run_id, a.key,
               (SELECT m.value FROM tracking_metrics m
                 WHERE m.run_id = a.run_id AND m.key = a.key
                 ORDER BY m.step DESC, m.timestamp DESC LIMIT 1),
               a.last_step,
               (SELECT m.timestamp FROM tracking_metrics m
                 WHERE m.run_id = a.run_id AND m.key = a.key
                 ORDER BY m.step DESC, m.timestamp DESC LIMIT 1),
               a.vmin, a.vmax, a.n
          FROM (SELECT run_id, key, MIN(value) AS vmin, MAX(value) AS vmax, COUNT(*) AS n,
                       MAX(step) AS last_step
                  FROM tracking_metrics GROUP BY run_id, key) a
        """
    )


def downgrade() -> None:
    op.drop_table("tracking_metric_summaries")
    op.execute("DELETE FROM tracking_metrics WHERE value IS NULL")
    with op.batch_alter_table("tracking_metrics") as batch:
        batch.alter_column("value", existing_type=sa.Float(precision=53), nullable=False)
