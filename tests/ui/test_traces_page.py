"""The Traces page in a real Chromium: search, waterfall, span attributes, no console errors."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flywheel.api import create_app
from flywheel.project import Project
from flywheel.telemetry import (
    TracingSettings,
    configure_tracing,
    current_trace_id,
    disable_tracing,
    span,
)
from tests.conftest import make_project
from tests.telemetry.conftest import running_server


def _seed_traces(project: Project) -> dict[str, str]:
    tracing = configure_tracing(TracingSettings(sample_rate=1.0, synchronous=True), project.db)
    assert tracing is not None
    with span("invoke_agent flywheel", **{"gen_ai.operation.name": "invoke_agent"}):
        agent = current_trace_id() or ""
        with span(
            "chat flywheel-ops",
            **{
                "gen_ai.operation.name": "chat",
                "gen_ai.usage.input_tokens": 321,
                "gen_ai.usage.output_tokens": 12,
            },
        ):
            time.sleep(0.01)
        with span(
            "execute_tool get_run",
            **{"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "get_run"},
        ):
            time.sleep(0.005)
    try:
        with span("recs.request", **{"flywheel.user": "42"}):
            recs = current_trace_id() or ""
            with span("recs.rank"):
                raise RuntimeError("ranker timed out")
    except RuntimeError:
        pass
    tracing.shutdown()
    disable_tracing()
    return {"agent": agent, "recs": recs}


@pytest.fixture(scope="module")
def traces_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, dict[str, str]]]:
    project = make_project(tmp_path_factory.mktemp("traces-ui") / "proj")
    ids = _seed_traces(project)
    app = create_app(project, systems=["ui", "telemetry"])
    with running_server(app) as url:
        yield url, ids
    project.close()


def test_traces_page_search_waterfall_and_attributes(
    traces_server: tuple[str, dict[str, str]], browser: Any, output_dir: Path
) -> None:
    url, ids = traces_server
    page = browser.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/ui/traces")
    rows = page.locator("#traces tbody tr")
    rows.first.wait_for()
    assert rows.count() == 2
    # Search by a GenAI attribute: only the agent's trace.
    page.fill("#f-attr", "gen_ai.tool.name=get_run")
    page.click("#trace-search button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#traces tbody tr').length === 1")
    assert rows.first.locator("td").nth(1).inner_text() == "invoke_agent flywheel"
    assert rows.first.locator("td").nth(7).inner_text() == "321/12"
    assert "attr=gen_ai.tool.name%3Dget_run" in page.url
    # The waterfall: three spans, children indented under the root, bars inside the lane.
    rows.first.locator("a").click()
    wf = page.locator("#waterfall tbody tr")
    wf.nth(2).wait_for()
    assert [wf.nth(i).locator("td.name").inner_text() for i in range(3)] == [
        "invoke_agent flywheel",
        "chat flywheel-ops",
        "execute_tool get_run",
    ]
    root_pad = wf.nth(0).locator("td.name").evaluate("e => parseInt(e.style.paddingLeft)")
    child_pad = wf.nth(1).locator("td.name").evaluate("e => parseInt(e.style.paddingLeft)")
    assert child_pad > root_pad
    widths = [
        wf.nth(i).locator(".bar").evaluate("e => parseFloat(e.style.width)") for i in range(3)
    ]
    assert widths[0] == pytest.approx(100, abs=0.5) and widths[1] < widths[0]
    # Span attributes of the selected span.
    wf.nth(1).click()
    attrs = page.locator("#span-attrs").inner_text()
    assert "gen_ai.usage.input_tokens" in attrs and "321" in attrs
    # Errors-only search finds the failed recommendation, linked from the URL as well.
    page.goto(f"{url}/ui/traces?errors_only=true#trace={ids['recs']}")
    page.wait_for_function("document.querySelectorAll('#traces tbody tr').length === 1")
    wf.nth(1).wait_for()
    assert page.locator("#waterfall .bar.error").count() >= 1
    page.screenshot(path=str(output_dir / "traces.png"), full_page=True)
    assert errors == []
    page.close()
