"""Routes of the dashboard: one HTML page per system that exists, plus its static files."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

import flywheel
from flywheel.errors import NotFoundError
from flywheel.ui._actions import router as actions_router

_HERE = Path(__file__).resolve().parent
STATIC_DIR = _HERE / "static"
VENDOR_FILES = ("uPlot.iife.min.js", "uPlot.min.css")

# (path, nav title, template). A page is listed only once the system it shows exists.
PAGES: list[tuple[str, str, str]] = [
    ("overview", "Overview", "overview.html"),
    ("features", "Features", "features.html"),
    ("training", "Training", "training.html"),
    ("runs", "Runs", "runs.html"),
    ("models", "Models", "models.html"),
    ("endpoints", "Endpoints", "endpoints.html"),
    ("experiments", "Experiments", "experiments.html"),
    ("recommendations", "Recommendations", "playground.html"),
    ("traces", "Traces", "traces.html"),
]

# Pages reached from others, not from the navigation bar: (path, template, nav item it belongs to).
DETAIL_PAGES: list[tuple[str, str, str]] = [("run", "run.html", "runs")]

router = APIRouter(prefix="/ui", include_in_schema=False)
_templates = Environment(
    loader=FileSystemLoader(_HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    auto_reload=False,
)


def vendor_missing() -> list[str]:
    """Vendored browser files that are not built yet (``make`` builds them with npm)."""
    return [f for f in VENDOR_FILES if not (STATIC_DIR / "vendor" / f).is_file()]


def _render(
    request: Request, template: str, active: str, status_code: int = 200, **extra: object
) -> HTMLResponse:
    html = _templates.get_template(template).render(
        **extra,
        pages=PAGES,
        active=active,
        project=request.app.state.project.config.project,
        version=flywheel.__version__,
        missing_assets=vendor_missing(),
    )
    return HTMLResponse(html, status_code=status_code)


@router.get("")
@router.get("/")
def index() -> RedirectResponse:
    return RedirectResponse("/ui/overview")


@router.get("/static/{path:path}")
def static(path: str) -> FileResponse:
    """A file under ``static/``; names that leave the folder are refused."""
    target = (STATIC_DIR / path).resolve()
    if STATIC_DIR not in target.parents or not target.is_file():
        raise NotFoundError(f"no static file {path!r}")
    return FileResponse(target, headers={"Cache-Control": "max-age=300"})


def _page_route(slug: str, template: str, active: str | None = None) -> None:
    def page(request: Request) -> HTMLResponse:
        return _render(request, template, active or slug)

    page.__name__ = f"page_{slug}"
    router.add_api_route(f"/{slug}", page, methods=["GET"], response_class=HTMLResponse)


for _slug, _title, _template in PAGES:
    _page_route(_slug, _template)
for _slug, _template, _parent in DETAIL_PAGES:
    _page_route(_slug, _template, _parent)

router.include_router(actions_router)


@router.get("/{path:path}", response_class=HTMLResponse)
def not_found(request: Request, path: str) -> HTMLResponse:
    """Any other ``/ui/*`` path: a page that says so and links to every page (HTTP 404)."""
    return _render(request, "404.html", "", status_code=404, path=f"/ui/{path}")
