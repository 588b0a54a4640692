"""The metadata store: one SQLAlchemy engine (SQLite or PostgreSQL) and its Alembic migrations.

Each system owns its tables and adds them through its own migration branch, listed in
``MIGRATION_BRANCHES``; ``Database.upgrade()`` brings every branch to its head.
"""

from flywheel.metadata._database import (
    MIGRATION_BRANCHES,
    Database,
    create_engine,
    enable_sqlite_wal,
)
from flywheel.metadata._sqlite import ThreadConnections

__all__ = [
    "MIGRATION_BRANCHES",
    "Database",
    "ThreadConnections",
    "create_engine",
    "enable_sqlite_wal",
]
