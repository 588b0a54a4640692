"""The dashboard when things fail: the server goes away, a list API answers 500, the hash names
nothing, a path is unknown. Each must say so on the page, never blank it or keep stale data."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.ui._seed import ENDPOINT, MODEL
from tests.ui.conftest import Server

pytestmark = [pytest.mark.browser, pytest.mark.integration]

INJECTED = "injected failure: the store is on fire"


def watch(page: Any) -> list[str]:
    """Uncaught errors in the page (a failed fetch must never be one)."""
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    return errors


def test_server_unreachable_shows_a_stale_banner_then_recovers(
    browser: Any, server: Server
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = watch(page)
    page.goto(f"{server.url}/ui/overview")
    page.wait_for_function("() => document.querySelectorAll('#stores tbody tr').length === 5")
    assert page.locator("#health-status").inner_text() == "ok"
    assert page.locator("#conn-banner").is_hidden()
    # The server stops answering (connections refused) while the page polls.
    page.route("**/*", lambda route: route.abort("connectionrefused"))
    page.wait_for_selector("#conn-banner:visible", timeout=15000)
    banner = page.locator("#conn-banner").inner_text()
    assert banner.startswith("Server unreachable — data as of ")
    # Health is no longer claimed: "unknown", and no store says "up".
    page.wait_for_selector("#health-status:text-is('unknown')")
    assert "up" not in page.locator("#stores tbody").inner_text().split()
    page.wait_for_timeout(2500)  # several failed polls: none may throw
    page.unroute("**/*")
    page.wait_for_selector("#conn-banner", state="hidden", timeout=15000)
    page.wait_for_function("() => document.querySelector('#health-status').textContent === 'ok'")
    assert errors == []
    page.close()


# (page, the path of the list API its main table reads, where the message must appear)
LIST_APIS = [
    ("overview", "/training/jobs", "#jobs"),
    ("overview", "/experiments", "#experiments"),
    ("training", "/training/jobs", "#jobs-table"),
    ("runs", "/tracking/runs", "#runs-table"),
    ("models", "/registry/models", "#models"),
    ("endpoints", "/serving/endpoints", "#endpoints"),
    ("experiments", "/experiments", "#experiments"),
    ("features", "/features/catalog", "#catalog-table"),
]


def path_is(path: str) -> Any:
    """A route matcher for one API path (any query), never the page of the same name."""
    return lambda url: urlsplit(url).path == path


@pytest.mark.parametrize(("slug", "path", "where"), LIST_APIS)
def test_a_500_on_a_list_api_shows_the_servers_message(
    browser: Any, server: Server, slug: str, path: str, where: str
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = watch(page)
    page.route(
        path_is(path),
        lambda route: route.fulfill(
            status=500, content_type="application/json", body=json.dumps({"error": INJECTED})
        ),
    )
    page.goto(f"{server.url}/ui/{slug}")
    page.wait_for_selector(f"{where} .error", timeout=15000)
    message = page.locator(f"{where} .error").first.inner_text()
    assert INJECTED in message and "HTTP 500" in message
    assert page.locator("h1").is_visible()  # the page stands; only that card says what failed
    if slug == "features":
        assert "catalog is empty" not in page.locator("main").inner_text()
    assert errors == []
    page.close()


def test_a_list_api_answering_the_wrong_shape_is_an_error_not_a_crash(
    browser: Any, server: Server
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = watch(page)
    page.route(
        path_is("/registry/models"),
        lambda route: route.fulfill(status=200, content_type="application/json", body="{}"),
    )
    page.goto(f"{server.url}/ui/models")
    page.wait_for_selector("#models .error")
    assert "expected a list" in page.locator("#models .error").inner_text()
    assert errors == []
    page.close()


def test_an_unknown_hash_resets_every_panel(browser: Any, server: Server) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = watch(page)
    page.goto(f"{server.url}/ui/endpoints#{ENDPOINT}")
    page.wait_for_selector("[data-testid=split] span")
    page.wait_for_selector("#events tbody tr")
    page.evaluate("() => { location.hash = 'no-such-endpoint'; }")
    page.wait_for_selector("#split:has-text('No endpoint named')", timeout=15000)
    for panel in ("#split", "#canary", "#drift", "#totals"):
        text = page.locator(panel).inner_text()
        assert ENDPOINT not in text and "v1" not in text, panel
    assert page.locator("#events tbody tr").count() == 0
    assert page.locator("#ep-actions button").count() == 0

    page.goto(f"{server.url}/ui/models#{MODEL}")
    page.wait_for_selector("#version-table tbody tr[data-version]")
    page.evaluate("() => { location.hash = 'no-such-model'; }")
    page.wait_for_selector("#versions .error", timeout=15000)
    assert "no-such-model" in page.locator("#versions .error").inner_text()
    assert page.locator("#version-table").count() == 0
    assert page.locator("#version-metrics canvas").count() == 0
    assert page.locator("#lineage svg").count() == 0
    assert page.locator("#audit tbody tr").count() == 0

    page.goto(f"{server.url}/ui/training")
    page.wait_for_function("() => document.querySelector('#log').textContent.length > 0")
    page.evaluate("() => { location.hash = 'no-such-job'; }")
    page.wait_for_selector("#job .error", timeout=15000)
    assert page.locator("#log").inner_text() == ""
    assert page.locator("#job-metrics canvas").count() == 0
    assert errors == []
    page.close()


def test_unknown_ui_paths_get_an_html_404_page(browser: Any, server: Server) -> None:
    r = httpx.get(f"{server.url}/ui/no/such/page")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("text/html")
    page = browser.new_page()
    page.goto(f"{server.url}/ui/nope")
    assert page.locator("h1").inner_text() == "Page not found"
    page.click("main a[href='/ui/models']")
    page.wait_for_selector("h1:has-text('Models')")
    page.close()


def test_bad_playground_input_is_refused_and_clears_the_old_user(
    browser: Any, server: Server
) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = watch(page)
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/recommendations/" in r.url else None)
    page.goto(f"{server.url}/ui/recommendations#990001")
    # The first answer may wait for the recommender to load its state (slow on a busy machine).
    page.wait_for_selector("#rec-table tbody tr, #recs .error", timeout=120_000)
    assert page.locator("#recs .error").count() == 0, page.locator("#recs").inner_text()
    page.wait_for_selector("#stages svg rect")
    assert all("preview=true" in u for u in asked)  # the playground never enrols anyone
    before = len(asked)
    bad_inputs = [
        ("abc", "not a whole number"),
        ("", "type a user id"),
        ("-3", "not a whole number"),
        ("1.5", "not a whole number"),
    ]
    for bad, reason in bad_inputs:
        page.fill("#user", bad)
        page.press("#user", "Enter")  # Enter submits
        page.wait_for_selector("#user-error:visible")
        assert reason in page.locator("#user-error").inner_text()
        assert page.locator("#user").get_attribute("aria-invalid") == "true"
        # Nothing of the previous user stays beside the invalid input.
        assert page.locator("#rec-table").count() == 0
        assert page.locator("#stages svg").count() == 0
        assert "strategy" not in page.locator("#meta").inner_text()
    assert len(asked) == before  # refused before any request: never user 0
    page.fill("#user", "990002")
    page.press("#user", "Enter")
    page.wait_for_selector("#rec-table tbody tr")
    assert page.locator("#user-error").is_hidden()
    assert asked[-1].split("/recommendations/")[1].startswith("990002?")
    assert errors == []
    page.close()
