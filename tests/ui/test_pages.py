"""Every dashboard page in a real browser over real data: no console errors, no failed requests,
charts drawn, screenshots saved; and what each page is for (search, compare, promote, drift, ...).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel.ui import PAGES
from tests.ui._seed import (
    AB_TEST,
    BANDIT,
    BANDIT_BATCHES,
    CANARY_ENDPOINT,
    DRIFT_FEATURES,
    ENDPOINT,
    MODEL,
)
from tests.ui.conftest import Server

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CANVAS_HAS_INK = """(sel) => {
  const canvases = [...document.querySelectorAll(sel + ' canvas')];
  return canvases.some((c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    for (let i = 3; i < d.length; i += 4) if (d[i] !== 0) return true;
    return false;
  });
}"""
# A uPlot chart (``container.fwPlot``) whose series ``index`` has at least ``n`` non-null points.
PLOT_HAS_POINTS = """([sel, index, n]) => {
  const plot = document.querySelector(sel)?.fwPlot;
  return !!plot && plot.data[index].filter((v) => v !== null && v !== undefined).length >= n;
}"""
COLD_USER = 990001  # not in the synthetic shop: starts from trending items

# Traces has its own test over a project with recorded spans (tests/ui/test_traces_page.py).
VIEWS = [(slug, title, "") for slug, title, _ in PAGES if slug != "traces"] + [
    ("experiments", "Experiments", BANDIT)
]


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


def wait_for_charts(page: Any) -> None:
    """Every canvas chart has ink and every SVG chart has shapes."""
    page.wait_for_function(
        "() => document.querySelectorAll('[data-testid=chart] canvas, [data-testid=svg-chart]')"
        ".length > 0",
        timeout=15000,
    )
    for chart in page.locator("[data-testid=chart]").all():
        page.wait_for_function(CANVAS_HAS_INK, arg=f"#{chart.get_attribute('id')}", timeout=15000)
    page.wait_for_function(
        "() => [...document.querySelectorAll('[data-testid=svg-chart]')]"
        ".every((s) => s.querySelectorAll('rect, circle, path, line').length > 0)",
        timeout=15000,
    )


@pytest.mark.parametrize(("slug", "title", "anchor"), VIEWS)
def test_page_loads_cleanly_and_draws(
    browser: Any, server: Server, output_dir: Path, slug: str, title: str, anchor: str
) -> None:
    page, problems = open_page(browser, f"{server.url}/ui/{slug}#{anchor}")
    assert page.locator("h1").inner_text() == title
    wait_for_charts(page)
    page.screenshot(path=str(output_dir / f"{slug}{'-' + anchor if anchor else ''}.png"))
    assert problems == []
    page.close()


def test_overview_shows_health_routes_jobs_experiments_endpoints(
    browser: Any, server: Server
) -> None:
    for _ in range(5):
        httpx.get(f"{server.url}/healthz")
    page, problems = open_page(browser, f"{server.url}/ui/overview")
    page.wait_for_function("() => document.querySelectorAll('#stores tbody tr').length === 5")
    assert page.locator("#health-status").inner_text() == "ok"
    page.wait_for_function(
        "() => [...document.querySelectorAll('#routes td')]"
        ".some(td => td.textContent.includes('/healthz'))",
        timeout=15000,
    )
    page.wait_for_selector(f"#endpoints-live td:has-text('{ENDPOINT}')", timeout=15000)
    assert "ui-ticker" in page.locator("#jobs tbody").inner_text()
    experiments = page.locator("#experiments tbody").inner_text()
    assert AB_TEST in experiments and BANDIT in experiments
    assert problems == []
    page.close()


def test_features_search_schema_and_lineage(browser: Any, server: Server) -> None:
    page, problems = open_page(browser, f"{server.url}/ui/features#user_stats")
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    page.wait_for_selector("#schema td:has-text('spend_7d')")
    assert "materialized until" in page.locator("#detail").inner_text()
    page.fill("#search", "taste")  # a field name finds its view
    page.wait_for_function("() => document.querySelectorAll('#catalog tbody tr').length === 1")
    assert page.locator("#catalog tbody").inner_text().startswith("user_stats")
    # The graph runs from the source file to the endpoints that serve the model: the named one
    # and the model's own name (its production version), all from the lineage API's edges.
    page.wait_for_selector("#lineage svg [data-node]")
    nodes = page.eval_on_selector_all(
        "#lineage svg [data-node]", "els => els.map(e => e.dataset.node)"
    )
    for node in (
        "data_source:data/user_stats.parquet",
        "feature_view:user_stats@v1",
        "feature_service:ranker_features",
        "training_dataset:ui_ranker_train",
        f"model_version:{MODEL}/1",
        f"endpoint:{ENDPOINT}",
        f"endpoint:{MODEL}",
        f"endpoint:{CANARY_ENDPOINT}",
    ):
        assert node in nodes
    assert page.locator("#lineage svg path").count() >= len(nodes) - 1
    edges = page.eval_on_selector_all(
        "#lineage svg path title", "els => els.map(e => e.textContent)"
    )
    assert f"model_version:{MODEL}/2 → endpoint:{CANARY_ENDPOINT} (serves)" in edges
    # Endpoints come from the lineage edges themselves, not from a second serving request.
    assert not [u for u in requests if "/serving/" in u]
    page.click("#lineage [data-node='feature_service:ranker_features'] a")
    page.wait_for_function("() => location.hash === '#ranker_features'")
    page.wait_for_selector("#detail-name:has-text('ranker_features')")
    assert problems == []
    page.close()


def test_runs_compare_on_one_chart(browser: Any, server: Server) -> None:
    page, problems = open_page(browser, f"{server.url}/ui/runs")
    page.wait_for_selector("#runs tbody tr")
    page.select_option("#experiment", MODEL)  # the training job logs a run of its own
    page.wait_for_function(  # both runs of the experiment on the same chart
        "() => (document.querySelector('#chart-val_auc .u-legend')?.innerText || '')"
        ".split('ui-ranker-').length === 3"
    )
    assert "lr" in page.locator("#compare").inner_text()
    page.fill("#search", "lr=0.03")
    page.wait_for_function("() => document.querySelectorAll('#runs tbody tr').length === 1")
    page.locator("#runs tbody input[type=checkbox]").uncheck()
    page.wait_for_function(
        "() => (document.querySelector('#chart-val_auc .u-legend')?.innerText || '')"
        ".split('ui-ranker-').length === 2"
    )
    assert problems == []
    page.close()


def test_endpoint_split_latency_shadow_and_drift(browser: Any, server: Server) -> None:
    page, problems = open_page(browser, f"{server.url}/ui/endpoints#{ENDPOINT}")
    page.wait_for_selector("[data-testid=split] span")
    assert page.locator("[data-testid=split]").inner_text().split() == ["v1", "80%", "v2", "20%"]
    # Live traffic while the page watches: latency per version appears on the chart.
    body = {"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1, 50.0]}]}
    with httpx.Client(base_url=server.url) as client:
        for i in range(40):
            client.post(
                f"/v2/models/{ENDPOINT}/infer", json=body, headers={"x-routing-key": str(i)}
            )
        page.wait_for_function(
            "() => document.querySelector('#chart-latency .u-legend')?.innerText.includes('v1')",
            timeout=15000,
        )
        for i in range(40):
            client.post(
                f"/v2/models/{ENDPOINT}/infer", json=body, headers={"x-routing-key": str(i)}
            )
    page.wait_for_selector("#shadow svg rect")
    assert "compared requests" in page.locator("#shadow").inner_text()
    page.wait_for_selector("#drift-table")
    drift = page.locator("#drift-table tbody").inner_text()
    for feature in DRIFT_FEATURES:
        assert feature in drift
    assert page.locator("#drift svg.bars rect").count() == len(DRIFT_FEATURES)  # PSI bars
    # One histogram per feature, training vs live over the same bins, both drawn.
    figures = page.locator("#drift-histograms figure")
    assert sorted(figures.evaluate_all("fs => fs.map(f => f.dataset.feature)")) == DRIFT_FEATURES
    drawn = page.eval_on_selector_all(
        "#drift-histograms svg.hist",
        """svgs => svgs.map(s => ['reference', 'current'].map(k =>
            [...s.querySelectorAll(`rect[data-series=${k}]`)]
              .filter(r => Number(r.getAttribute('height')) > 0).length))""",
    )
    assert len(drawn) == len(DRIFT_FEATURES) and all(ref > 0 and cur > 0 for ref, cur in drawn)
    assert "training vs live" in page.locator("#drift").inner_text()
    assert problems == []
    page.close()

    page, problems = open_page(browser, f"{server.url}/ui/endpoints#{CANARY_ENDPOINT}")
    page.wait_for_selector("[data-testid=canary-steps] span")
    assert page.locator("[data-testid=canary-steps]").inner_text().split() == ["20%", "50%", "100%"]
    canary = page.locator("#canary").inner_text()
    assert "v2 over v1: 20% of traffic now" in canary
    assert "250 ms" in page.locator("#gates").inner_text()
    assert page.locator("[data-testid=split]").inner_text().split() == ["v1", "80%", "v2", "20%"]
    assert problems == []
    page.close()


def test_experiment_intervals_srm_and_bandit_allocation(browser: Any, server: Server) -> None:
    page, problems = open_page(browser, f"{server.url}/ui/experiments#{AB_TEST}")
    page.wait_for_selector("#metrics svg circle")
    assert page.locator("#variants tbody tr").count() == 2
    assert "SRM" in page.locator("#srm").inner_text()
    assert "sequential p" in page.locator("#metrics").inner_text()
    assert page.locator("#metrics svg circle").count() == 3  # 2 variants + 1 difference
    # The p-values and the difference over the experiment's life, from GET .../history: many
    # points at once (not only those seen while the page is open).
    page.wait_for_function(PLOT_HAS_POINTS, arg=["#chart-seq", 1, 10], timeout=15000)
    page.wait_for_function(PLOT_HAS_POINTS, arg=["#chart-diff", 1, 10], timeout=15000)
    legend = page.locator("#chart-seq .u-legend").inner_text()
    assert "green sequential p" in legend and "alpha 0.05" in legend
    seq = page.evaluate("() => document.querySelector('#chart-seq').fwPlot.data[1]")
    assert all(b <= a for a, b in itertools.pairwise(seq))  # always-valid: never rises
    assert problems == []
    page.close()

    page, more = open_page(browser, f"{server.url}/ui/experiments#{BANDIT}")
    page.wait_for_selector("#probs svg rect")
    arms = page.locator("#arms tbody").inner_text()
    assert all(a in arms for a in ("popular", "personalized", "trending"))
    assert page.locator("#ab-cards").is_hidden()
    # Allocation over time: the creation plus one point per batch of rewards, one line per arm.
    for series in (1, 2, 3):
        page.wait_for_function(
            PLOT_HAS_POINTS, arg=["#chart-alloc", series, BANDIT_BATCHES + 1], timeout=15000
        )
    shares = page.evaluate(
        "() => { const d = document.querySelector('#chart-alloc').fwPlot.data;"
        " return d[0].map((_, i) => d[1][i] + d[2][i] + d[3][i]); }"
    )
    assert all(abs(total - 1.0) < 1e-6 for total in shares)
    assert more == []
    page.close()


def test_training_job_log_tail_and_inventory(browser: Any, server: Server) -> None:
    page, problems = open_page(browser, f"{server.url}/ui/training")
    page.wait_for_function(
        "() => document.querySelector('#log').textContent.includes('loss')", timeout=20000
    )
    first = page.locator("#log").text_content()
    page.wait_for_function(  # the tail follows the running job
        "(before) => document.querySelector('#log').textContent !== before",
        arg=first,
        timeout=20000,
    )
    assert "ranking" in page.locator("#jobs tbody").inner_text()
    page.wait_for_function(CANVAS_HAS_INK, arg="#job-metrics", timeout=15000)  # rt.log_metrics
    assert "loss" in page.locator("#job-metrics .u-legend").inner_text()
    assert "1 / " in page.locator("#nodes tbody").inner_text()  # one CPU held by the job
    assert problems == []
    page.close()


def test_playground_event_changes_the_list(browser: Any, server: Server, output_dir: Path) -> None:
    page, problems = open_page(browser, f"{server.url}/ui/recommendations#{COLD_USER}")
    page.wait_for_selector("#rec-table tbody tr")
    page.wait_for_selector("#stages svg rect")
    before = page.locator("#rec-table tbody td:nth-child(2)").all_inner_texts()
    assert len(before) == 10
    page.fill("#token", server.writer_token)
    page.dispatch_event("#token", "change")
    with page.expect_response(
        lambda r: r.url.endswith("/events") and r.request.method == "POST"
    ) as posted:
        page.click(f"[data-action='buy-{before[0]}']")
    assert posted.value.status == 200
    page.wait_for_selector("#flash.ok:has-text('the list changed')", timeout=15000)
    after = page.locator("#rec-table tbody td:nth-child(2)").all_inner_texts()
    assert after != before
    page.screenshot(path=str(output_dir / "recommendations-after-buy.png"))
    assert problems == []
    page.close()


def test_static_files_cannot_escape(server: Server) -> None:
    for path in ("../_pages.py", "..%2F_pages.py", "vendor/../../__init__.py"):
        r = httpx.get(f"{server.url}/ui/static/{path}")
        assert r.status_code == 404
