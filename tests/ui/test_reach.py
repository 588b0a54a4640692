"""Reach: every page, light and dark, desktop and phone, has no serious or critical axe-core
violation (axe from npm, injected from node_modules, never a CDN); the phone layout keeps every
action reachable without scrolling the page sideways; the theme toggle works; a skip link leads
to the content; charts carry a text alternative. Screenshots of every view are saved
(``FLYWHEEL_SCREENSHOTS=docs`` writes them to docs/screenshots/ for the documentation)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from flywheel.ui import PAGES
from tests.conftest import services_required
from tests.ui._seed import BANDIT, ENDPOINT, MODEL
from tests.ui.conftest import OUTPUT_DIR, Server

pytestmark = [pytest.mark.browser, pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]
AXE = REPO / "src" / "flywheel" / "ui" / "frontend" / "node_modules" / "axe-core" / "axe.min.js"
DEVICES = {"desktop": (1440, 900), "phone": (390, 844)}
THEMES = ("light", "dark")
# (file name, path): every page of the navigation, the detail views and the 404 page.
VIEWS = [
    (slug, f"{slug}#{ {'models': MODEL, 'endpoints': ENDPOINT}.get(slug, '') }")
    for slug, _, _ in PAGES
] + [
    ("experiments-bandit", f"experiments#{BANDIT}"),
    ("run", "run#{run}"),
    ("not-found", "no-such-page"),
]


@pytest.fixture(scope="module")
def axe_source() -> str:
    if not AXE.is_file():
        message = f"{AXE} is missing: run `make ui` (npm ci in src/flywheel/ui/frontend)"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)
    return AXE.read_text()


def shots_dir() -> Path:
    where = (
        REPO / "docs" / "screenshots"
        if os.environ.get("FLYWHEEL_SCREENSHOTS") == "docs"
        else OUTPUT_DIR / "screens"
    )
    where.mkdir(parents=True, exist_ok=True)
    return where


def settle(page: Any) -> None:
    """The page's first answers are in: no panel still says "Loading…"."""
    page.wait_for_selector("main h1")
    page.wait_for_function(
        "() => ![...document.querySelectorAll('main p.muted')]"
        ".some((p) => p.offsetParent !== null && p.textContent === 'Loading…')",
        timeout=20000,
    )
    page.wait_for_timeout(400)


def serious(page: Any, axe_source: str) -> list[str]:
    if not page.evaluate("() => typeof window.axe === 'object'"):
        page.add_script_tag(content=axe_source)
    result = page.evaluate(
        """async () => {
          const r = await axe.run(document, { resultTypes: ['violations'] });
          return r.violations.filter((v) => v.impact === 'serious' || v.impact === 'critical')
            .map((v) => ({ id: v.id, impact: v.impact, help: v.help,
                           nodes: v.nodes.slice(0, 3).map((n) => n.target.join(' ')) }));
        }"""
    )
    return [json.dumps(v) for v in result]


@pytest.mark.parametrize("theme", THEMES)
@pytest.mark.parametrize("device", list(DEVICES))
def test_every_page_is_axe_clean_and_reachable(
    browser: Any, server: Server, axe_source: str, device: str, theme: str
) -> None:
    width, height = DEVICES[device]
    context = browser.new_context(
        viewport={"width": width, "height": height}, color_scheme=theme, device_scale_factor=1
    )
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    out = shots_dir()
    failures: dict[str, list[str]] = {}
    for name, path in VIEWS:
        page.goto(f"{server.url}/ui/{path.format(run=server.seeded['runs'][0])}")
        settle(page)
        bad = serious(page, axe_source)
        if bad:
            failures[name] = bad
        # The page itself never scrolls sideways (wide tables scroll inside their card).
        overflow = page.evaluate("() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (name, device, overflow)
        # Every action button can be brought into view and sits inside the viewport.
        outside = page.evaluate(
            """() => [...document.querySelectorAll('main button')].filter((b) => b.offsetParent)
              .map((b) => { b.scrollIntoView({ block: 'center', inline: 'center' });
                            const r = b.getBoundingClientRect();
                            const inside = r.left >= 0 && r.right <= innerWidth + 1;
                            return inside ? null : b.textContent; })
              .filter(Boolean)"""
        )
        assert outside == [], (name, device, outside)
        page.evaluate("() => window.scrollTo(0, 0)")
        page.screenshot(path=str(out / f"{name}-{device}-{theme}.png"))
    assert failures == {}, json.dumps(failures, indent=1)
    assert errors == []
    context.close()


def test_theme_toggle_skip_link_and_chart_text(browser: Any, server: Server) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800}, color_scheme="light")
    page = context.new_page()
    page.goto(f"{server.url}/ui/overview")
    bg = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(bg)
    page.click("#theme-toggle")
    assert page.evaluate("() => document.documentElement.dataset.theme") == "dark"
    dark = page.evaluate(bg)
    assert dark != light
    page.reload()  # the choice is kept
    assert page.evaluate(bg) == dark
    page.click("#theme-toggle")
    assert page.evaluate(bg) == light
    page.reload()
    # The skip link is the first stop of the keyboard and moves the focus to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.className") == "skip"
    page.keyboard.press("Enter")
    assert page.evaluate("() => document.activeElement.id") == "main"
    # Charts say what they show in words (role=img with a label from the data).
    runs = ",".join(server.seeded["runs"])  # a shareable comparison URL
    page.goto(f"{server.url}/ui/runs#compare={runs}")
    page.wait_for_selector("#chart-val_auc[role=img]")
    label = page.locator("#chart-val_auc").get_attribute("aria-label")
    assert label.startswith("val_auc by step over 40 points") and "last" in label
    context.close()
