"""Flywheel: one platform for the whole ML loop of a product team.

Shared ground lives in small modules (``config``, ``metadata``, ``artifacts``, ``auth``,
``project``, ``errors``); each system is a sub-package whose ``__init__`` is its public API.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flywheel")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
