"""telemetry: stored OpenTelemetry spans and an index of their scalar attributes.

``trace_spans`` holds one row per span (ids as lowercase hex, times in Unix nanoseconds, the
attributes, resource, events and links as JSON, GenAI token usage pulled out into columns so
that per-trace totals are one ``SUM``). ``trace_span_attributes`` indexes every text (up to
256 characters), integer and boolean attribute as ``(key, value-as-text, span_pk)``; on SQLite
it is a WITHOUT ROWID table, so the table is its own index and an insert touches one B-tree.

Revision ID: telemetry_0001
"""

import sqlalchemy as sa
from alembic import op

revision = "telemetry_0001"
down_revision = None
branch_labels = ("telemetry",)
depends_on = "core_0001"

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "trace_spans",
        sa.Column("pk", _ID, primary_key=True, autoincrement=True),
        sa.Column("trace_id", sa.String(32), nullable=False),
        sa.Column("span_id", sa.String(16), nullable=False),
        sa.Column("parent_span_id", sa.String(16), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("service", sa.Text(), nullable=False),
        sa.Column("kind", sa.SmallInteger(), nullable=False),
        sa.Column("start_ns", sa.BigInteger(), nullable=False),
        sa.Column("end_ns", sa.BigInteger(), nullable=False),
        sa.Column("duration_ns", sa.BigInteger(), nullable=False),
        sa.Column("status_code", sa.SmallInteger(), nullable=False),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("scope", sa.Text(), nullable=True),
        sa.Column("operation", sa.Text(), nullable=True),
        sa.Column("model", sa.Text(), nullable=True),
        sa.Column("input_tokens", sa.BigInteger(), nullable=True),
        sa.Column("output_tokens", sa.BigInteger(), nullable=True),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("resource", sa.Text(), nullable=False),
        sa.Column("events", sa.Text(), nullable=True),
        sa.Column("links", sa.Text(), nullable=True),
        sa.Column("ingested_at", sa.Float(), nullable=False),
    )
    op.create_index("uq_trace_spans_ids", "trace_spans", ["trace_id", "span_id"], unique=True)
    op.create_index("ix_trace_spans_start", "trace_spans", ["start_ns"])
    op.create_index("ix_trace_spans_name", "trace_spans", ["name", "start_ns"])
    op.create_index("ix_trace_spans_service", "trace_spans", ["service", "start_ns"])
    op.create_table(
        "trace_span_attributes",
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("span_pk", _ID, nullable=False),
        sa.PrimaryKeyConstraint("key", "value", "span_pk", name="pk_trace_span_attributes"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("trace_span_attributes")
    op.drop_index("ix_trace_spans_service", table_name="trace_spans")
    op.drop_index("ix_trace_spans_name", table_name="trace_spans")
    op.drop_index("ix_trace_spans_start", table_name="trace_spans")
    op.drop_index("uq_trace_spans_ids", table_name="trace_spans")
    op.drop_table("trace_spans")
