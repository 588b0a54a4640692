"""The ``flywheel`` command: one Typer app with a sub-command group per system.

Errors that Flywheel raises on purpose are printed as one line (``error: ...``) with exit code
1, never as a traceback.
"""

from flywheel.cli._main import app, main

__all__ = ["app", "main"]
