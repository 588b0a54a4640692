"""Errors of the experimentation system.

Hierarchy::

    ExperimentError (FlywheelError)                   400  bad input to an experiment
    ├── InvalidExperiment                             400  a definition is invalid (names field)
    ├── ExperimentNotFound (+ NotFoundError)          404  no experiment of that name
    ├── ExperimentExists (+ ConflictError)            409  the name is taken
    ├── ExperimentStateError (+ ConflictError)        409  e.g. stopping a stopped experiment,
    │                                                      or a layer with no free traffic left
    └── AnalysisError                                 400  not enough data for a requested analysis
"""

from __future__ import annotations

from flywheel.errors import ConflictError, FlywheelError, NotFoundError


class ExperimentError(FlywheelError):
    """Root of the experimentation system's errors."""


class InvalidExperiment(ExperimentError):
    """An experiment definition (or an argument) is invalid; the message names the field."""

    def __init__(self, field: str, reason: str, experiment: str | None = None) -> None:
        self.field = field
        self.reason = reason
        self.experiment = experiment
        where = f"experiment {experiment!r}: " if experiment else ""
        super().__init__(f"{where}{field}: {reason}")


class ExperimentNotFound(ExperimentError, NotFoundError):
    """No experiment with that name exists."""

    status_code = 404

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"experiment {name!r} does not exist")


class ExperimentExists(ExperimentError, ConflictError):
    """An experiment with that name already exists."""

    status_code = 409

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"experiment {name!r} already exists")


class ExperimentStateError(ExperimentError, ConflictError):
    """The operation does not fit the experiment's current state."""

    status_code = 409


class AnalysisError(ExperimentError):
    """An analysis cannot be computed from the data given (the message says what is missing)."""


__all__ = [
    "AnalysisError",
    "ExperimentError",
    "ExperimentExists",
    "ExperimentNotFound",
    "ExperimentStateError",
    "InvalidExperiment",
]
