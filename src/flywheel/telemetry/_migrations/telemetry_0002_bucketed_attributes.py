"""telemetry: the attribute index clustered by span bucket first (append-friendly ingest).

``trace_span_attributes`` was keyed ``(key, value, span_pk)``: every ingested batch inserted its
rows all over that B-tree (a random user id, a token count), so each commit rewrote about one
page per indexed attribute and ingest slowed as the table grew. It is now keyed
``(bucket, key, value, span_pk)`` with ``bucket = span_pk >> 10`` (1,024 consecutive spans): a
batch only touches the few pages of the newest bucket. A search for ``key = value`` seeks once per
bucket (``TraceStore`` enumerates them), which stays cheap (a few milliseconds per million spans).

Revision ID: telemetry_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "telemetry_0002"
down_revision = "telemetry_0001"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
BUCKET_SHIFT = 10


def _create(name: str, *, bucketed: bool) -> None:
    columns: list[sa.schema.SchemaItem] = [
        sa.Column("key", sa.String(255), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("span_pk", _ID, nullable=False),
    ]
    keys = ["key", "value", "span_pk"]
    if bucketed:
        columns.insert(0, sa.Column("bucket", _ID, nullable=False))
        keys.insert(0, "bucket")
    op.create_table(
        name,
        *columns,
        sa.PrimaryKeyConstraint(*keys, name=f"pk_{name}"),
        sqlite_with_rowid=False,
    )


def upgrade() -> None:
    op.rename_table("trace_span_attributes", "trace_span_attributes_old")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE trace_span_attributes_old RENAME CONSTRAINT pk_trace_span_attributes "
            "TO pk_trace_span_attributes_old"
        )
    _create("trace_span_attributes", bucketed=True)
    op.execute(
        "INSERT INTO trace_span_attributes (bucket, key, value, span_pk) "
        f"SELECT span_pk >> {BUCKET_SHIFT}, key, value, span_pk FROM trace_span_attributes_old"
    )
    op.drop_table("trace_span_attributes_old")


def downgrade() -> None:
    op.rename_table("trace_span_attributes", "trace_span_attributes_new")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE trace_span_attributes_new RENAME CONSTRAINT pk_trace_span_attributes "
            "TO pk_trace_span_attributes_new"
        )
    _create("trace_span_attributes", bucketed=False)
    op.execute(
        "INSERT INTO trace_span_attributes (key, value, span_pk) "
        "SELECT key, value, span_pk FROM trace_span_attributes_new"
    )
    op.drop_table("trace_span_attributes_new")
