"""Tables page on the server (limit/offset, X-Total-Count) and run charts ask the server for a
time range of the metric history it keeps (since/until), not a filter of what the page saw."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from flywheel.project import Project
from flywheel.tracking import Tracker
from tests.ui._seed import AB_TEST, ENDPOINT
from tests.ui.conftest import Server

pytestmark = [pytest.mark.browser, pytest.mark.integration]

PAGED = "ui-paged"
TIMED = "ui-timed"


@pytest.fixture(scope="module")
def runs(server: Server) -> dict[str, Any]:
    """30 runs in one experiment (two pages of 25) and one run with old and recent points."""
    project = Project.open(server.root / "flywheel.yaml")
    try:
        tracker = Tracker(project)
        paged = []
        for i in range(30):
            with tracker.start_run(PAGED, run_name=f"paged-{i:02d}") as run:
                run.log_metric("score", float(i))
            paged.append(run.id)
        now = time.time()
        with tracker.start_run(TIMED, run_name="timed") as timed:
            for step, age_days in enumerate((10, 9, 8, 0.01, 0.005)):
                timed.log_metric(
                    "loss", 1.0 / (step + 1), step=step, timestamp=now - age_days * 86400
                )
    finally:
        project.close()
    return {"paged": paged, "timed": timed.id}


def _page(browser: Any, url: str) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.fw_errors = []
    page.on("pageerror", lambda e: page.fw_errors.append(str(e)))
    page.goto(url)
    return page


def test_runs_table_pages_on_the_server(browser: Any, server: Server, runs: dict[str, Any]) -> None:
    page = _page(browser, f"{server.url}/ui/runs")
    page.wait_for_selector(f"#experiment option[value='{PAGED}']", state="attached")
    with page.expect_request(lambda r: "/tracking/runs?" in r.url and PAGED in r.url) as first:
        page.select_option("#experiment", PAGED)
    assert parse_qs(urlparse(first.value.url).query)["offset"] == ["0"]
    page.wait_for_selector("#runs-table [data-testid=page-info]:has-text('page 1 of 2 · 30 rows')")
    names = page.locator("#runs tbody td[data-col=name]").all_inner_texts()
    assert names == [f"paged-{i:02d}" for i in range(29, 4, -1)]  # newest first, 25 of them
    with page.expect_request(lambda r: "/tracking/runs?" in r.url and "offset=25" in r.url) as nxt:
        page.click("#runs-table [data-page=next]")
    assert parse_qs(urlparse(nxt.value.url).query)["limit"] == ["25"]
    page.wait_for_selector("#runs-table [data-testid=page-info]:has-text('page 2 of 2')")
    names = page.locator("#runs tbody td[data-col=name]").all_inner_texts()
    assert names == [f"paged-{i:02d}" for i in range(4, -1, -1)]  # only the server's page 2
    assert page.locator("#runs-table [data-page=next]").is_disabled()
    page.click("#runs-table [data-page=prev]")
    page.wait_for_selector("#runs-table [data-testid=page-info]:has-text('page 1 of 2')")
    assert page.fw_errors == []
    page.close()


def test_jobs_table_asks_the_server_for_one_page(browser: Any, server: Server) -> None:
    page = _page(browser, "about:blank")
    with page.expect_request(lambda r: "/training/jobs?" in r.url and "offset=" in r.url) as req:
        page.goto(f"{server.url}/ui/training")
    query = parse_qs(urlparse(req.value.url).query)
    assert (query["offset"], query["limit"]) == (["0"], ["25"])
    page.wait_for_selector("#job-counts:has-text('job')")
    assert page.fw_errors == []
    page.close()


def test_metric_chart_range_is_asked_of_the_server(
    browser: Any, server: Server, runs: dict[str, Any]
) -> None:
    page = _page(browser, f"{server.url}/ui/runs#compare={runs['timed']}")
    page.wait_for_function("() => document.querySelector('#chart-loss')?.fwPlot")
    assert page.evaluate("() => document.querySelector('#chart-loss').fwPlot.data[0].length") == 5
    with page.expect_response(lambda r: "/metrics/loss?" in r.url) as answer:
        page.select_option("#metric-range", "86400")  # last day
    query = parse_qs(urlparse(answer.value.url).query)
    assert abs(float(query["since"][0]) - (time.time() - 86400)) < 600
    assert answer.value.json()["steps"] == [3, 4]  # the server kept only the recent points
    page.wait_for_function(
        "() => document.querySelector('#chart-loss')?.fwPlot?.data[0].length === 2"
    )
    # A custom range from/until: the old points only.
    with page.expect_response(lambda r: "/metrics/loss?" in r.url and "until=" in r.url) as old:
        page.fill(
            "#metric-from",
            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 11 * 86400)),
        )
        page.fill(
            "#metric-until",
            time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() - 7 * 86400)),
        )
        page.dispatch_event("#metric-until", "change")
    assert old.value.json()["steps"] == [0, 1, 2]
    assert page.locator("#metric-range").input_value() == ""
    assert page.fw_errors == []
    page.close()


def test_experiment_history_range_is_asked_of_the_server(browser: Any, server: Server) -> None:
    page = _page(browser, f"{server.url}/ui/experiments#{AB_TEST}")
    page.wait_for_selector("#chart-seq[data-testid=chart] canvas")
    with page.expect_response(lambda r: "/history?" in r.url and "since=" in r.url) as answer:
        page.select_option("#history-range", "3600")  # last hour
    since = float(parse_qs(urlparse(answer.value.url).query)["since"][0])
    assert abs(since - (time.time() - 3600)) < 600
    points = answer.value.json()["points"]
    assert len(points) == 60 and points[0]["time"] >= since  # spread over the range asked
    page.wait_for_selector("#chart-seq[data-testid=chart] canvas")
    assert page.fw_errors == []
    page.close()


def test_endpoint_history_comes_from_the_prediction_log_over_a_range(
    browser: Any, server: Server
) -> None:
    page = _page(browser, "about:blank")
    with page.expect_response(lambda r: f"/serving/endpoints/{ENDPOINT}/history?" in r.url) as day:
        page.goto(f"{server.url}/ui/endpoints#{ENDPOINT}")
    since = float(parse_qs(urlparse(day.value.url).query)["since"][0])
    assert abs(since - (time.time() - 86400)) < 600  # "last day" is the default
    logged = day.value.json()["versions"]
    assert logged and sum(sum(v["requests"]) for v in logged.values()) > 0
    page.wait_for_function("() => document.querySelector('#chart-hist-requests')?.fwPlot")
    series = page.evaluate(
        "() => document.querySelector('#chart-hist-requests').fwPlot.data.slice(1)"
        ".map((s) => s.reduce((a, b) => a + (b || 0), 0))"
    )
    assert sorted(series) == sorted(sum(v["requests"]) for v in logged.values())
    with page.expect_response(lambda r: "/history?" in r.url and "since=" not in r.url) as whole:
        page.select_option("#ep-history-range", "")
    assert whole.value.ok
    assert page.fw_errors == []
    page.close()
