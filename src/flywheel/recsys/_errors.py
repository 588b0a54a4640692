"""Errors of the recommender.

Hierarchy::

    FlywheelError
    └── RecsysError                  400  bad recommender input (dates, parameters)
        ├── DataUnavailableError     404  no Online Retail file at the given path / nothing to load
        ├── DataFormatError          400  a file that is not of the Online Retail schema
        ├── EmptySplitError          400  a split leaves no training data or no test users
        └── RankerUnavailable        503  no ranker version is served, it failed or was too slow
"""

from __future__ import annotations

from flywheel.errors import FlywheelError


class RecsysError(FlywheelError):
    """Root of every deliberate error raised by ``flywheel.recsys``."""


class DataUnavailableError(RecsysError):
    """The requested data cannot be found or fetched; names the path or URL and the reason."""

    status_code = 404


class DataFormatError(RecsysError):
    """A file does not have the Online Retail columns or types; names the file and the column."""


class EmptySplitError(RecsysError):
    """A temporal split leaves nothing to train on or nobody to evaluate."""


class RankerUnavailable(RecsysError):
    """The served ranker cannot score now (nothing served, an error or a timeout); the request
    path falls back to the retrieval order."""

    status_code = 503
