"""Errors of the feature store.

Hierarchy::

    FeatureStoreError (FlywheelError)      400  bad definition, reference, request
    ├── FeatureNotFound (NotFoundError)    404  an entity, view, service, stream... is unknown
    ├── BreakingChangeError (Conflict)     409  apply would change a view incompatibly in place
    └── PushValidationError                422  a pushed row does not match the stream's schema
"""

from __future__ import annotations

from flywheel.errors import ConflictError, FlywheelError, NotFoundError


class FeatureStoreError(FlywheelError):
    """Root of every feature-store error."""


class FeatureNotFound(FeatureStoreError, NotFoundError):
    """A named feature-store object does not exist."""

    status_code = 404


class BreakingChangeError(FeatureStoreError, ConflictError):
    """``apply`` refused an incompatible change; the message says what and how to version it."""

    status_code = 409


class PushValidationError(FeatureStoreError):
    """A pushed row is invalid: names the row index, the field and the reason."""

    status_code = 422

    def __init__(self, stream: str, row: int, field: str, reason: str) -> None:
        self.stream = stream
        self.row = row
        self.field = field
        self.reason = reason
        super().__init__(
            f"push to {stream!r} rejected, nothing written: row {row}, field {field!r}: {reason}"
        )
