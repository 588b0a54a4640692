"""The web dashboard, mounted at ``/ui`` by ``flywheel up``.

Pages are server-rendered shells (Jinja2) whose scripts read the same HTTP APIs that users and
the CLI use; the UI has no private access to any store. Charts use uPlot, installed from the
npm registry at build time (``make`` copies it into ``static/vendor/``) and served by Flywheel
itself, so no request leaves the server's host.
"""

from flywheel.ui._actions import action_log
from flywheel.ui._pages import DETAIL_PAGES, PAGES, router

__all__ = ["DETAIL_PAGES", "PAGES", "action_log", "router"]
