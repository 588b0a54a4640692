"""Every dashboard page in a real browser: no console errors, no failed requests, charts drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel.ui import PAGES

CANVAS_HAS_INK = """(sel) => {
  const canvases = [...document.querySelectorAll(sel + ' canvas')];
  return canvases.some((c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true;
    return false;
  });
}"""


def open_page(
    browser: Any, url: str, width: int = 1280, height: int = 800
) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport={"width": width, "height": height})
    problems: list[str] = []
    page.on(
        "console",
        lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    page.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: problems.append(f"request failed: {r.url}"))
    page.on(
        "response",
        lambda r: problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
    )
    page.goto(url)
    return page, problems


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.parametrize(("slug", "title"), [(s, t) for s, t, _ in PAGES])
def test_page_loads_cleanly_and_draws(
    browser: Any, server_url: str, output_dir: Path, slug: str, title: str
) -> None:
    page, problems = open_page(browser, f"{server_url}/ui/{slug}")
    assert page.locator("h1").inner_text() == title
    # Two scrapes of /metrics are needed before a rate exists; wait for ink on every chart.
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=chart] canvas').length > 0", timeout=15000
    )
    for chart in page.locator("[data-testid=chart]").all():
        chart_id = chart.get_attribute("id")
        page.wait_for_function(CANVAS_HAS_INK, arg=f"#{chart_id}", timeout=15000)
    page.screenshot(path=str(output_dir / f"{slug}.png"), full_page=True)
    assert problems == []
    page.close()


@pytest.mark.browser
@pytest.mark.integration
def test_overview_shows_store_health_and_live_routes(browser: Any, server_url: str) -> None:
    for _ in range(5):
        httpx.get(f"{server_url}/healthz")
    page, problems = open_page(browser, f"{server_url}/ui/overview")
    page.wait_for_function("() => document.querySelectorAll('#stores tbody tr').length === 5")
    assert page.locator("#health-status").inner_text() == "ok"
    page.wait_for_function(
        "() => [...document.querySelectorAll('#routes td')]"
        ".some(td => td.textContent.includes('/healthz'))",
        timeout=15000,
    )
    assert problems == []
    page.close()


@pytest.mark.browser
@pytest.mark.integration
def test_narrow_window_has_no_horizontal_scroll(
    browser: Any, server_url: str, output_dir: Path
) -> None:
    page, problems = open_page(browser, f"{server_url}/ui/overview", width=390, height=844)
    page.wait_for_selector("#stores tbody tr")
    overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
    page.screenshot(path=str(output_dir / "overview-narrow.png"), full_page=True)
    assert overflow <= 0
    assert problems == []
    page.close()


def test_static_files_cannot_escape(server_url: str) -> None:
    for path in ("../_pages.py", "..%2F_pages.py", "vendor/../../__init__.py"):
        r = httpx.get(f"{server_url}/ui/static/{path}")
        assert r.status_code == 404
