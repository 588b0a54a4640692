"""Actions from the dashboard: each is refused without a writer token (disabled, and refused by
the server), asks for a typed reason in a confirmation dialog, really happens through the
system's own API, and lands in the audit log with who, what, why and the outcome."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.ui._seed import JOB_SCRIPT, MODEL
from tests.ui.conftest import Server, _cancel_job

pytestmark = [pytest.mark.browser, pytest.mark.integration]

CANARY = "ui-act-canary"
PAUSE = "ui-act-pause"
SPLIT = "ui-act-split"
EXPERIMENT = "ui-act-exp"


@pytest.fixture(scope="module")
def objects(server: Server) -> Iterator[dict[str, str]]:
    """This module's own endpoints, experiment and job (other modules' objects stay untouched)."""
    http = httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {server.writer_token}"}, timeout=30
    )
    for name in (CANARY, PAUSE):
        http.put(
            f"/serving/endpoints/{name}",
            json={"model": MODEL, "routes": [{"version": 1, "weight": 100}]},
        ).raise_for_status()
        http.post(
            f"/serving/endpoints/{name}/deploy",
            json={"version": 2, "canary": [10, 50, 100], "step_requests": 100_000},
        ).raise_for_status()
    http.put(
        f"/serving/endpoints/{SPLIT}",
        json={
            "model": MODEL,
            "routes": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
            "shadow": {"version": 2, "share": 1.0},
        },
    ).raise_for_status()
    http.post(
        "/experiments",
        json={
            "name": EXPERIMENT,
            "unit": "user_id",
            "variants": [{"name": "control", "weight": 50}, {"name": "green", "weight": 50}],
            "metrics": [{"name": "conversion", "kind": "proportion", "event": "purchase"}],
        },
    ).raise_for_status()
    (server.root / "jobs").mkdir(exist_ok=True)
    (server.root / "jobs" / "ticker.py").write_text(JOB_SCRIPT)
    job = http.post(
        "/training/jobs",
        json={
            "spec": {
                "name": "ui-act-job",
                "entrypoint": "ticker.py",
                "workdir": str(server.root / "jobs"),
                "team": "ranking",
                "resources": {"nodes": 1, "procs_per_node": 1, "cpus_per_proc": 1},
            }
        },
    )
    job.raise_for_status()
    made = {"job": job.json()["id"]}
    yield made
    for key, job_id in made.items():
        if key.startswith("job"):
            _cancel_job(server.url, server.writer_token, job_id)
    http.close()


def open_with_token(browser: Any, server: Server, path: str, token: str | None) -> Any:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.fw_errors = errors
    page.goto(f"{server.url}/ui/overview")
    if token:
        page.evaluate("(t) => sessionStorage.setItem('flywheel-token', t)", token)
    page.goto(f"{server.url}/ui/{path}")
    if token:
        page.wait_for_selector("#token-state:has-text('(')")
    return page


def audit(server: Server, target: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.url}/ui/api/actions", params={"target": target})
    r.raise_for_status()
    return r.json()


def confirm(page: Any, reason: str) -> None:
    """Fill the open dialog's reason and confirm; wait for the dialog to close."""
    page.wait_for_selector("#confirm[open]")
    page.fill("#confirm-reason", reason)
    page.click("#confirm-ok")
    page.wait_for_selector("#confirm:not([open])", state="attached")


def test_every_action_is_disabled_and_refused_without_a_writer_token(
    browser: Any, server: Server, objects: dict[str, str]
) -> None:
    views = [
        (f"endpoints#{CANARY}", "#ep-actions button", 5),
        (f"experiments#{EXPERIMENT}", "#exp-actions button", 3),
        (f"training#{objects['job']}", "#job-actions button", 2),
        (f"models#{MODEL}", "#versions button[data-needs-writer]", 7),
    ]
    for token in (None, server.reader_token):
        for path, selector, count in views:
            page = open_with_token(browser, server, path, token)
            page.wait_for_function(
                "([sel, n]) => document.querySelectorAll(sel).length >= n", arg=[selector, count]
            )
            buttons = page.locator(selector)
            for i in range(buttons.count()):
                assert buttons.nth(i).is_disabled(), (path, token, buttons.nth(i).inner_text())
                assert "writer token" in (buttons.nth(i).get_attribute("title") or "")
            if token:
                assert "(reader)" in page.locator("#token-state").inner_text()
            assert page.fw_errors == []
            page.close()
    # The server refuses too (a button is only a convenience): 401 without, 403 with a reader.
    body = {
        "action": "endpoint.canary_abort",
        "target": f"endpoint:{CANARY}",
        "reason": "trying without a writer token",
        "method": "POST",
        "path": f"/serving/endpoints/{CANARY}/rollback",
        "body": {},
    }
    assert httpx.post(f"{server.url}/ui/api/actions", json=body).status_code == 401
    reader = {"Authorization": f"Bearer {server.reader_token}"}
    r = httpx.post(f"{server.url}/ui/api/actions", json=body, headers=reader)
    assert r.status_code == 403 and "writer" in r.json()["error"]
    assert audit(server, f"endpoint:{CANARY}") == []
    ep = httpx.get(f"{server.url}/serving/endpoints/{CANARY}").json()
    assert ep["canary"]["state"] == "running"  # nothing happened


def test_canary_pause_and_resume_ask_for_a_reason_happen_and_are_audited(
    browser: Any, server: Server, objects: dict[str, str]
) -> None:
    target = f"endpoint:{PAUSE}"
    # The server refuses without a writer token, and nothing changes.
    body = {
        "action": "endpoint.canary_pause",
        "target": target,
        "reason": "trying without a writer token",
        "method": "POST",
        "path": f"/serving/endpoints/{PAUSE}/pause",
        "body": {"reason": "no"},
    }
    assert httpx.post(f"{server.url}/ui/api/actions", json=body).status_code == 401
    assert httpx.post(f"{server.url}/serving/endpoints/{PAUSE}/pause", json={}).status_code == 401
    assert httpx.get(f"{server.url}/serving/endpoints/{PAUSE}").json()["canary"]["state"] == (
        "running"
    )
    page = open_with_token(browser, server, f"endpoints#{PAUSE}", server.writer_token)
    page.wait_for_selector("[data-action='canary-pause']:not([disabled])")
    assert page.locator("[data-action='canary-pause']").inner_text() == "pause canary"
    page.click("[data-action='canary-pause']")
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")  # no reason typed: refused in the dialog
    page.wait_for_selector("#confirm-error:visible")
    assert httpx.get(f"{server.url}/serving/endpoints/{PAUSE}").json()["canary"]["state"] == (
        "running"
    )
    confirm(page, "hold v2 at 10% over the sale")
    page.wait_for_selector("#flash.ok:has-text('audit #')")
    ep = httpx.get(f"{server.url}/serving/endpoints/{PAUSE}").json()
    assert (ep["canary"]["state"], ep["canary"]["weight"]) == ("paused", 10)
    assert [(r["version"], r["weight"]) for r in ep["effective_routes"]] == [(1, 90.0), (2, 10.0)]
    assert ep["events"][-1]["kind"] == "canary_pause"
    assert ep["events"][-1]["detail"]["reason"] == "hold v2 at 10% over the sale"
    [entry] = audit(server, target)
    assert (entry["action"], entry["actor"], entry["status"]) == (
        "endpoint.canary_pause",
        "ui",
        200,
    )
    assert entry["reason"] == "hold v2 at 10% over the sale"
    page.wait_for_selector("#canary:has-text('paused')")
    # The same button now resumes; abort stays possible, deploy and split are not.
    page.wait_for_selector("[data-action='canary-pause']:has-text('resume canary'):not([disabled])")
    assert page.locator("[data-action='canary-abort']").is_enabled()
    assert "paused" in page.locator("[data-action='endpoint-split']").get_attribute("title")
    page.click("[data-action='canary-pause']")
    confirm(page, "sale over, let the gates run")
    page.wait_for_selector("[data-action='canary-pause']:has-text('pause canary')")
    ep = httpx.get(f"{server.url}/serving/endpoints/{PAUSE}").json()
    assert (ep["canary"]["state"], ep["canary"]["step"]) == ("running", 0)
    assert ep["events"][-1]["kind"] == "canary_resume"
    entries = audit(server, target)
    assert [e["action"] for e in entries] == ["endpoint.canary_resume", "endpoint.canary_pause"]
    assert entries[0]["reason"] == "sale over, let the gates run"
    assert page.fw_errors == []
    page.close()
    # Resuming a running canary is refused by serving, and that refusal is audited too.
    writer = {"Authorization": f"Bearer {server.writer_token}"}
    r = httpx.post(
        f"{server.url}/ui/api/actions",
        headers=writer,
        json={
            **body,
            "action": "endpoint.canary_resume",
            "path": f"/serving/endpoints/{PAUSE}/resume",
            "reason": "resume twice",
        },
    )
    assert r.status_code == 409 and "only a paused canary can be resumed" in r.json()["error"]
    assert audit(server, target)[0]["status"] == 409


def test_canary_abort_asks_for_a_reason_happens_and_is_audited(
    browser: Any, server: Server, objects: dict[str, str]
) -> None:
    page = open_with_token(browser, server, f"endpoints#{CANARY}", server.writer_token)
    button = page.locator("[data-action='canary-abort']")
    page.wait_for_selector("[data-action='canary-abort']:not([disabled])")
    button.click()
    page.wait_for_selector("#confirm[open]")
    page.click("#confirm-ok")  # no reason typed
    page.wait_for_selector("#confirm-error:visible")
    assert "reason" in page.locator("#confirm-error").inner_text().lower()
    ep = httpx.get(f"{server.url}/serving/endpoints/{CANARY}").json()
    assert ep["canary"]["state"] == "running"
    confirm(page, "p99 doubled on v2 in the first step")
    page.wait_for_selector("#flash.ok:has-text('audit #')")
    ep = httpx.get(f"{server.url}/serving/endpoints/{CANARY}").json()
    assert ep["canary"]["state"] == "rolled_back"
    assert ep["canary"]["reason"] == "p99 doubled on v2 in the first step"  # the system's record
    [entry] = audit(server, f"endpoint:{CANARY}")
    assert entry["action"] == "endpoint.canary_abort" and entry["actor"] == "ui"
    assert entry["reason"] == "p99 doubled on v2 in the first step" and entry["status"] == 200
    page.wait_for_selector("#ep-audit td:has-text('p99 doubled on v2')")
    # Now impossible: no canary runs; the button says so.
    page.wait_for_selector("[data-action='canary-abort'][disabled]")
    assert "no canary" in page.locator("[data-action='canary-abort']").get_attribute("title")
    assert page.fw_errors == []
    page.close()
    # A refused action (the system says 409) is audited with its status.
    writer = {"Authorization": f"Bearer {server.writer_token}"}
    r = httpx.post(
        f"{server.url}/ui/api/actions",
        headers=writer,
        json={
            "action": "endpoint.canary_abort",
            "target": f"endpoint:{CANARY}",
            "reason": "again, by mistake",
            "method": "POST",
            "path": f"/serving/endpoints/{CANARY}/rollback",
            "body": {},
        },
    )
    assert r.status_code == 409 and "no canary running" in r.json()["error"]
    assert audit(server, f"endpoint:{CANARY}")[0]["status"] == 409
    # Only the systems' action routes can be called through it.
    bad = httpx.post(
        f"{server.url}/ui/api/actions",
        headers=writer,
        json={
            "action": "x",
            "target": "x",
            "reason": "probe",
            "method": "POST",
            "path": "/ui/api/actions",
        },
    )
    assert bad.status_code == 400 and "path" in bad.json()["error"]


def test_split_edit_shadow_toggle_and_deploy(
    browser: Any, server: Server, objects: dict[str, str]
) -> None:
    page = open_with_token(browser, server, f"endpoints#{SPLIT}", server.writer_token)
    page.wait_for_selector("[data-action='endpoint-split']:not([disabled])")
    page.click("[data-action='endpoint-split']")
    page.wait_for_selector("#confirm[open]")
    page.fill("#confirm [data-split-version='1']", "30")
    page.fill("#confirm [data-split-version='2']", "70")
    confirm(page, "more traffic to v2 after the offline eval")
    page.wait_for_selector("#flash.ok")
    routes = httpx.get(f"{server.url}/serving/endpoints/{SPLIT}").json()["routes"]
    assert [(r["version"], r["weight"]) for r in routes] == [(1, 30.0), (2, 70.0)]
    page.wait_for_function(
        "() => document.querySelector('[data-testid=split]').innerText.includes('70%')"
    )

    page.click("[data-action='shadow-toggle']")  # stop shadow v2
    confirm(page, "shadow comparison done")
    page.wait_for_selector("#flash.ok:has-text('Stop the shadow')")
    assert httpx.get(f"{server.url}/serving/endpoints/{SPLIT}").json()["shadow"] is None
    page.wait_for_selector("[data-action='shadow-toggle']:has-text('start shadow')")

    page.click("[data-action='endpoint-deploy']")
    page.wait_for_selector("#confirm[open]")
    page.select_option("#deploy-version", "1")
    confirm(page, "roll back to v1: v2 regressed")
    page.wait_for_selector("#flash.ok:has-text('Deploy')")
    routes = httpx.get(f"{server.url}/serving/endpoints/{SPLIT}").json()["routes"]
    assert [(r["version"], r["weight"]) for r in routes] == [(1, 100.0)]
    actions = [a["action"] for a in audit(server, f"endpoint:{SPLIT}")]
    assert actions == ["endpoint.deploy", "endpoint.shadow_off", "endpoint.split"]
    assert page.fw_errors == []
    page.close()


def test_experiment_traffic_then_ship(
    browser: Any, server: Server, objects: dict[str, str]
) -> None:
    page = open_with_token(browser, server, f"experiments#{EXPERIMENT}", server.writer_token)
    page.wait_for_selector("[data-action='exp-traffic']:not([disabled])")
    page.click("[data-action='exp-traffic']")
    page.wait_for_selector("#confirm[open]")
    page.fill("#confirm [data-weight='control']", "80")
    page.fill("#confirm [data-weight='green']", "20")
    confirm(page, "ramp green down while we look at refunds")
    page.wait_for_selector("#flash.ok")
    shares = httpx.get(f"{server.url}/experiments/{EXPERIMENT}").json()["shares"]
    assert shares == {"control": pytest.approx(0.8), "green": pytest.approx(0.2)}

    page.click("[data-action='exp-ship']")
    page.wait_for_selector("#confirm[open]")
    page.select_option("#ship-variant", "green")
    confirm(page, "green wins on conversion, no guardrail moved")
    page.wait_for_selector("#flash.ok:has-text('ship')")
    info = httpx.get(f"{server.url}/experiments/{EXPERIMENT}").json()
    assert info["status"] == "stopped" and info["winner"] == "green"
    page.wait_for_selector("[data-action='exp-stop'][disabled]")
    assert "stopped" in page.locator("[data-action='exp-stop']").get_attribute("title")
    entries = audit(server, f"experiment:{EXPERIMENT}")
    assert [e["action"] for e in entries] == ["experiment.ship", "experiment.traffic"]
    assert entries[0]["request"] == {"winner": "green"}
    assert page.fw_errors == []
    page.close()


def test_job_cancel_then_retry(browser: Any, server: Server, objects: dict[str, str]) -> None:
    job = objects["job"]
    page = open_with_token(browser, server, f"training#{job}", server.writer_token)
    page.wait_for_selector("[data-action='job-cancel']:not([disabled])")
    assert page.locator("[data-action='job-retry']").is_disabled()  # still active
    page.click("[data-action='job-cancel']")
    confirm(page, "wrong learning rate")
    page.wait_for_selector("#flash.ok")
    deadline = time.monotonic() + 120  # a starting job stops once its runtime is up
    while httpx.get(f"{server.url}/training/jobs/{job}").json()["state"] != "cancelled":
        assert time.monotonic() < deadline, "the job was not cancelled"
        time.sleep(0.3)
    page.reload()
    page.wait_for_selector("#token-state:has-text('(writer)')")
    page.wait_for_selector("[data-action='job-retry']:not([disabled])")
    page.click("[data-action='job-retry']")
    confirm(page, "retry with the same spec")
    page.wait_for_function(
        "(old) => location.hash.length > 1 && location.hash !== '#' + old", arg=job
    )
    new_id = page.evaluate("() => decodeURIComponent(location.hash.slice(1))")
    objects["job-retry"] = new_id
    again = httpx.get(f"{server.url}/training/jobs/{new_id}").json()
    assert again["name"] == "ui-act-job" and again["spec"]["entrypoint"] == "ticker.py"
    assert [e["action"] for e in audit(server, f"job:{job}")] == ["job.retry", "job.cancel"]
    assert page.fw_errors == []
    page.close()


def test_model_stage_change_and_rollback_with_reasons(
    browser: Any, server: Server, objects: dict[str, str]
) -> None:
    page = open_with_token(browser, server, f"models#{MODEL}", server.writer_token)
    promote = "[data-action='production-2']"
    page.wait_for_selector(f"{promote}:not([disabled])")
    page.click(promote)
    confirm(page, "v2 wins the offline eval")
    page.wait_for_selector("#flash.ok")
    page.wait_for_selector("#audit td:has-text('v2 wins the offline eval')")  # the registry's log
    assert httpx.get(f"{server.url}/registry/models").json()[0]["stages"]["production"] == 2
    page.wait_for_selector("[data-action='rollback-production']:not([disabled])")
    page.click("[data-action='rollback-production']")
    confirm(page, "back to v1 until the canary is done")
    page.wait_for_selector("#audit td:has-text('back to v1 until the canary is done')")
    assert httpx.get(f"{server.url}/registry/models").json()[0]["stages"]["production"] == 1
    assert [a["action"] for a in audit(server, f"model:{MODEL}")] == [
        "model.rollback",
        "model.stage",
    ]
    assert page.fw_errors == []
    page.close()
