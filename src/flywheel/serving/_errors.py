"""Errors of the serving system.

Hierarchy::

    ServingError (FlywheelError)                   400  bad serving request or operation
    ├── InvalidInput                               400  a request does not match the signature
    ├── PayloadTooLarge                            413  the request body is over the size limit
    ├── UnknownModel (+ NotFoundError)             404  no such model, version or endpoint
    ├── EndpointConflict (+ ConflictError)         409  a concurrent change or a rollout in flight
    ├── QueueFull (+ OverloadedError)              429  queue full, or a wait past the deadline
    ├── InferenceFailed                            500  the runtime raised while predicting
    ├── ModelUnavailable (+ ServiceUnavailable)    503  the version could not be loaded
    └── DeadlineExceeded                           504  the request's deadline passed
"""

from __future__ import annotations

from flywheel.errors import (
    ConflictError,
    FlywheelError,
    NotFoundError,
    OverloadedError,
    ServiceUnavailable,
)


class ServingError(FlywheelError):
    """Root of the serving system's errors."""


class InvalidInput(ServingError):
    """An inference request that does not match the model's signature (names the input)."""


class PayloadTooLarge(ServingError):
    """The request body exceeds ``serving.max_request_bytes``."""

    status_code = 413


class UnknownModel(ServingError, NotFoundError):
    """No model, version or endpoint of that name."""

    status_code = 404


class EndpointConflict(ServingError, ConflictError):
    """The endpoint changed concurrently, or the operation conflicts with its state."""

    status_code = 409


class QueueFull(ServingError, OverloadedError):
    """The model version's queue cannot take the request now; the client should retry after
    ``retry_after`` seconds. ``reason``: ``queue_full`` (``max_queue_size`` requests wait) or
    ``expected_wait`` (the wait would outlast the request's deadline)."""

    status_code = 429

    def __init__(
        self, message: str, retry_after: float = 1.0, *, reason: str = "queue_full"
    ) -> None:
        OverloadedError.__init__(self, message, retry_after)
        self.reason = reason


class InferenceFailed(ServingError):
    """The model's runtime raised an exception while predicting."""

    status_code = 500


class ModelUnavailable(ServingError, ServiceUnavailable):
    """The model version could not be loaded or warmed up."""

    status_code = 503


class DeadlineExceeded(ServingError):
    """The request's deadline passed before its result was ready."""

    status_code = 504


__all__ = [
    "DeadlineExceeded",
    "EndpointConflict",
    "InferenceFailed",
    "InvalidInput",
    "ModelUnavailable",
    "PayloadTooLarge",
    "QueueFull",
    "ServingError",
    "UnknownModel",
]
