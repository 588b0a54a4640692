"""The root of every error Flywheel raises on purpose.

Hierarchy (each system adds its own root below ``FlywheelError``)::

    FlywheelError                    400  bad input or a refused operation
    ├── ConfigError                  400  flywheel.yaml is wrong (file, key, reason)
    ├── NotFoundError                404  a named object does not exist
    ├── ConflictError                409  the object exists / a concurrent change won
    ├── AuthError                    401  no or unknown token
    │   └── PermissionDenied         403  a token with too low a role
    ├── IntegrityError               500  stored bytes do not match their recorded hash
    ├── OverloadedError              429  a bounded queue is full
    └── ServiceUnavailable           503  a store or service cannot be reached

The HTTP status of every error is its ``status_code`` attribute, mapped to a response in one
place (``flywheel.api``); the CLI prints ``str(error)`` as one line.
"""

from __future__ import annotations


class FlywheelError(Exception):
    """Base of every deliberate Flywheel error; ``str()`` is a complete, one-line message."""

    status_code: int = 400


class ConfigError(FlywheelError):
    """A configuration file is invalid. Names the file, the key and what is allowed."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        self.file = file
        self.key = key
        self.reason = reason
        where = f"{file}: {key}" if key else file
        super().__init__(f"{where}: {reason}")


class NotFoundError(FlywheelError):
    """A named object (model, run, feature view, ...) does not exist."""

    status_code = 404


class ConflictError(FlywheelError):
    """The operation conflicts with existing state."""

    status_code = 409


class AuthError(FlywheelError):
    """The request carries no token, or one that is unknown or revoked."""

    status_code = 401


class PermissionDenied(AuthError):
    """The token is valid but its role is too low for the operation."""

    status_code = 403


class IntegrityError(FlywheelError):
    """Stored bytes do not match the sha256 recorded for them."""

    status_code = 500


class OverloadedError(FlywheelError):
    """A bounded queue is full; retry after ``retry_after`` seconds."""

    status_code = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServiceUnavailable(FlywheelError):
    """A store or service that the operation needs cannot be reached."""

    status_code = 503


__all__ = [
    "AuthError",
    "ConfigError",
    "ConflictError",
    "FlywheelError",
    "IntegrityError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDenied",
    "ServiceUnavailable",
]
