"""Errors of the model registry.

Hierarchy::

    RegistryError (FlywheelError)             400  bad input to the registry
    ├── ModelNotFound (+ NotFoundError)       404  no such model, version or stage
    ├── ModelRefused                          400  registration refused: the model could not be
    │                                              saved, loaded back or run on its input example
    ├── UnsafeModelError (+ PermissionDenied) 403  loading would unpickle untrusted code
    ├── StageConflict (+ ConflictError)       409  e.g. nothing to roll back to
    ├── DeviceUnavailable (+ ConflictError)   409  config.device asks for a GPU the runtime
    │                                              cannot use on this machine
    └── ModelIntegrityError (+ IntegrityError) 500 stored bytes do not match the recorded sha256
"""

from __future__ import annotations

from flywheel.errors import (
    ConflictError,
    FlywheelError,
    IntegrityError,
    NotFoundError,
    PermissionDenied,
)


class RegistryError(FlywheelError):
    """Root of the registry's errors."""


class ModelNotFound(RegistryError, NotFoundError):
    """A model name, version or stage that does not exist."""

    status_code = 404


class ModelRefused(RegistryError):
    """The model cannot be registered; the message names the model and the reason."""


class UnsafeModelError(RegistryError, PermissionDenied):
    """Loading the artifact needs code execution the caller did not allow (``trusted=True``)."""

    status_code = 403


class StageConflict(RegistryError, ConflictError):
    """A stage change that cannot be made (nothing to roll back to, archived version, ...)."""

    status_code = 409


class DeviceUnavailable(RegistryError, ConflictError):
    """The version's ``config.device`` asks for a GPU that its runtime cannot use here."""

    status_code = 409


class ModelIntegrityError(RegistryError, IntegrityError):
    """An artifact's bytes do not match the sha256 recorded at registration."""

    status_code = 500

    def __init__(self, name: str, version: int, expected: str, detail: str) -> None:
        self.model = name
        self.version = version
        self.expected_sha256 = expected
        super().__init__(
            f"model {name!r} version {version}: artifact failed its integrity check "
            f"(expected sha256:{expected}): {detail}"
        )


__all__ = [
    "DeviceUnavailable",
    "ModelIntegrityError",
    "ModelNotFound",
    "ModelRefused",
    "RegistryError",
    "StageConflict",
    "UnsafeModelError",
]
