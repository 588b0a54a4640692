"""What the dashboard shows must be right: a significant loss is red (by the metric's direction),
raw and Holm-adjusted p-values are labelled apart, charts of one point have a sane range, a log
axis has real tick labels, versions are integers, a bandit shows its live allocation, and the
Models page says which versions serve traffic now."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import numpy as np
import pytest

from tests.ui._seed import BANDIT, MODEL
from tests.ui.conftest import Server

pytestmark = [pytest.mark.browser, pytest.mark.integration]

LOSS_TEST = "ui-signal-loss"
SCALE = "([sel, k]) => [document.querySelector(sel).fwPlot.scales[k].min, \
  document.querySelector(sel).fwPlot.scales[k].max]"


@pytest.fixture(scope="module")
def loss_test(server: Server) -> str:
    """A/B test with three variants: `slow` converts far worse than control (a significant loss)
    but has fewer refunds (a significant win on a metric whose good direction is down); `same`
    behaves like control. Two comparisons, so Holm's adjusted p differs from the raw p."""
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.writer_token}"}, timeout=30
    )
    http.post(
        "/experiments",
        json={
            "name": LOSS_TEST,
            "unit": "user_id",
            "variants": [
                {"name": "control", "weight": 34},
                {"name": "slow", "weight": 33},
                {"name": "same", "weight": 33},
            ],
            "metrics": [
                {"name": "conversion", "kind": "proportion", "event": "purchase"},
                {
                    "name": "refunds",
                    "kind": "proportion",
                    "event": "refund",
                    "direction": "decrease",
                },
            ],
        },
    ).raise_for_status()
    rng = np.random.default_rng(7)
    events = []
    for i in range(900):
        unit = f"sig-{i}"
        variant = http.post(f"/experiments/{LOSS_TEST}/assign", json={"unit_id": unit}).json()
        buy = 0.1 if variant["variant"] == "slow" else 0.5
        refund = 0.05 if variant["variant"] == "slow" else 0.4
        if rng.random() < buy:
            events.append({"unit_id": unit, "event_type": "purchase", "value": 1.0})
        if rng.random() < refund:
            events.append({"unit_id": unit, "event_type": "refund", "value": 1.0})
    http.post("/experiments/events", json={"events": events}).raise_for_status()
    http.close()
    return LOSS_TEST


def fmt(v: float) -> str:
    """The dashboard's number format (Flywheel.fmt) for a p-value."""
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e6):
        mantissa, exp = f"{v:.2e}".split("e")
        return f"{mantissa}e{int(exp)}"
    return f"{v:.3f}"


def test_significant_loss_is_red_and_raw_and_holm_p_are_both_labelled(
    browser: Any, server: Server, loss_test: str
) -> None:
    report = httpx.get(f"{server.url}/experiments/{loss_test}/report").json()
    by_metric = {m["name"]: {c["variant"]: c for c in m["comparisons"]} for m in report["metrics"]}
    assert (
        by_metric["conversion"]["slow"]["significant"]
        and by_metric["conversion"]["slow"]["diff"] < 0
    )
    assert by_metric["refunds"]["slow"]["significant"] and by_metric["refunds"]["slow"]["diff"] < 0

    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{server.url}/ui/experiments#{loss_test}")
    page.wait_for_selector("table.comparisons[data-metric='conversion'] tr[data-variant='slow']")
    loss = page.locator("table.comparisons[data-metric='conversion'] tr[data-variant='slow'] .pill")
    assert loss.inner_text() == "significant loss"
    assert "bad" in loss.get_attribute("class")
    red = page.evaluate(
        "() => getComputedStyle(document.documentElement).getPropertyValue('--bad').trim()"
    )
    color = loss.evaluate("e => getComputedStyle(e).color")
    assert color == page.evaluate(
        "(c) => { const d = document.createElement('div'); d.style.color = c;"
        " document.body.append(d); const v = getComputedStyle(d).color; d.remove(); return v; }",
        red,
    )
    # Fewer refunds is what the refunds metric wants: the same sign of difference is a win.
    win = page.locator("table.comparisons[data-metric='refunds'] tr[data-variant='slow'] .pill")
    assert win.inner_text() == "significant win" and "ok" in win.get_attribute("class")

    heads = page.locator("table.comparisons[data-metric='conversion'] thead th").all_inner_texts()
    assert "p (raw)" in heads and "p (Holm)" in heads and "p" not in heads
    raw_i, holm_i = heads.index("p (raw)"), heads.index("p (Holm)")
    for variant in ("slow", "same"):
        cells = page.locator(
            f"table.comparisons[data-metric='conversion'] tr[data-variant='{variant}'] td"
        ).all_inner_texts()
        c = by_metric["conversion"][variant]
        assert cells[raw_i] == fmt(c["p_value"]), variant
        assert cells[holm_i] == fmt(c["p_value_adjusted"]), variant
    assert (
        by_metric["conversion"]["slow"]["p_value_adjusted"]
        != by_metric["conversion"]["slow"]["p_value"]
    )

    # The p-value chart's log axis has real labels (never "0" for a small p-value).
    page.wait_for_function("() => document.querySelector('#chart-seq')?.fwPlot?.axes[1]._values")
    labels = [
        v
        for v in page.evaluate("() => document.querySelector('#chart-seq').fwPlot.axes[1]._values")
        if v
    ]
    assert labels and all(float(v) > 0 for v in labels), labels
    assert len(set(labels)) == len(labels)
    page.close()


def test_a_one_point_chart_has_a_sane_range(browser: Any, server: Server) -> None:
    from flywheel.project import Project
    from flywheel.tracking import Tracker

    project = Project.open(server.root / "flywheel.yaml")
    try:
        with Tracker(project).start_run("ui-one-point") as run:
            run.log_metrics({"ndcg": 0.42}, 5)
            run_id = run.id
    finally:
        project.close()
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{server.url}/ui/run#{run_id}")
    page.wait_for_function("() => document.querySelector('#run-chart-ndcg')?.fwPlot")
    x = page.evaluate(SCALE, ["#run-chart-ndcg", "x"])
    y = page.evaluate(SCALE, ["#run-chart-ndcg", "y"])
    assert x[0] < 5 < x[1] and x[1] - x[0] <= 2, x
    assert y[0] < 0.42 < y[1] and y[1] - y[0] <= 0.2, y
    assert "ndcg: last 0.420" in page.locator("#run-chart-ndcg").get_attribute("aria-label")
    page.close()


def test_version_axes_are_integers_and_serving_now_comes_from_the_endpoints(
    browser: Any, server: Server
) -> None:
    endpoints = httpx.get(f"{server.url}/serving/endpoints").json()
    serving: dict[int, set[str]] = {}
    for ep in endpoints:
        if ep["model"] != MODEL:
            continue
        for r in ep["effective_routes"]:
            if r["weight"] > 0:
                serving.setdefault(r["version"], set()).add(ep["name"])
    assert serving  # the seed serves both versions (split and canary)
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{server.url}/ui/models#{MODEL}")
    page.wait_for_selector("#version-table tbody tr[data-version]")
    for version in (1, 2):
        cell = page.locator(
            f"#version-table tr[data-version='{version}'] td[data-col='serving']"
        ).inner_text()
        names = set(re.findall(r"([\w-]+) \d+%", cell))
        assert names == serving.get(version, set()), (version, cell)
    page.wait_for_function("() => document.querySelector('#vm-val_auc')?.fwPlot?.axes[0]._values")
    ticks = [
        t
        for t in page.evaluate("() => document.querySelector('#vm-val_auc').fwPlot.axes[0]._values")
        if t
    ]
    assert ticks and all(re.fullmatch(r"v\d+", t) for t in ticks), ticks
    page.close()


def test_bandit_shows_its_live_allocation_not_the_configured_split(
    browser: Any, server: Server
) -> None:
    live = httpx.get(f"{server.url}/experiments/{BANDIT}/bandit").json()["probabilities"]
    assert max(live.values()) > 0.5  # the seed's rewards moved it far from 1/3 each
    for path, row in (
        ("experiments", "#experiments tbody tr"),
        ("overview", "#experiments tbody tr"),
    ):
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{server.url}/ui/{path}")
        page.wait_for_selector(f"{row}:has-text('{BANDIT}') [data-live-allocation]")
        text = page.locator(f"{row}:has-text('{BANDIT}') [data-live-allocation]").inner_text()
        shown = {arm: int(p) for arm, p in re.findall(r"(\w+) (\d+)%", text)}
        assert shown.keys() == live.keys()
        for arm, p in live.items():
            assert abs(shown[arm] - p * 100) <= 1, (arm, shown, live)
        page.close()


def test_runs_table_lets_the_user_choose_metric_columns(browser: Any, server: Server) -> None:
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    page.goto(f"{server.url}/ui/runs")
    page.wait_for_selector("#runs thead [data-sort='m:val_auc']")
    heads = page.locator("#runs thead th").all_inner_texts()
    assert "train_loss" in heads and "val_auc" in heads  # every metric, not the first four
    page.click("details.columns summary")
    page.uncheck("[data-column='m:train_loss']")
    assert "train_loss" not in page.locator("#runs thead").inner_text()
    page.reload()
    page.wait_for_selector("#runs thead [data-sort='m:val_auc']")
    assert "train_loss" not in page.locator("#runs thead").inner_text()  # the choice is kept
    # Sorting by a metric asks the server (order_by) and shows its order.
    with page.expect_response(lambda r: "order_by=val_auc" in r.url):
        page.click("#runs thead [data-sort='m:val_auc']")
    page.click("details.columns summary")
    page.check("[data-column='m:train_loss']")
    page.close()


def test_playground_reads_are_previews_that_enrol_nobody(browser: Any, server: Server) -> None:
    user = 990777

    def exposures() -> int:
        r = httpx.get(f"{server.url}/experiments/recs-explore/report")
        return sum(v["exposures"] for v in r.json()["variants"]) if r.status_code == 200 else 0

    before = exposures()
    page = browser.new_page(viewport={"width": 1440, "height": 900})
    answers: list[dict[str, Any]] = []
    page.on(
        "response",
        lambda r: answers.append(r.json()) if "/recommendations/" in r.url else None,
    )
    page.goto(f"{server.url}/ui/recommendations#{user}")
    page.wait_for_selector("#rec-table tbody tr")
    for _ in range(2):
        page.press("#user", "Enter")
        page.wait_for_function("(n) => document.querySelectorAll('#rec-table').length === 1", arg=1)
    page.wait_for_timeout(1500)
    assert answers and all(a["preview"] is True for a in answers)
    assert all(a["experiment_variant"] is None for a in answers)
    assert "not enrolled" in page.locator("#meta").inner_text()
    page.close()
    assert exposures() == before
    # The same read without preview does enrol the user: the check above can fail.
    httpx.get(f"{server.url}/recommendations/{user}", params={"k": 10}).raise_for_status()
    deadline = time.monotonic() + 10
    while exposures() == before:
        assert time.monotonic() < deadline, "a plain read logged no exposure"
        time.sleep(0.3)
