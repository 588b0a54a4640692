"""Errors of experiment tracking.

Hierarchy::

    TrackingError (FlywheelError)          400  bad input (metric key, param value, ...)
    ├── RunNotFound (+ NotFoundError)      404  no run with that id
    ├── ParamConflict (+ ConflictError)    409  a param logged again with another value
    └── MetricWriteError                   503  buffered metrics could not be written
"""

from __future__ import annotations

from flywheel.errors import ConflictError, FlywheelError, NotFoundError


class TrackingError(FlywheelError):
    """Root of the tracking errors."""


class RunNotFound(TrackingError, NotFoundError):
    """No run with the given id."""

    status_code = 404


class ParamConflict(TrackingError, ConflictError):
    """Params are immutable: the same key was logged again with a different value."""

    status_code = 409


class MetricWriteError(TrackingError):
    """The background writer failed to store buffered metric points (names run and cause)."""

    status_code = 503


__all__ = ["MetricWriteError", "ParamConflict", "RunNotFound", "TrackingError"]
