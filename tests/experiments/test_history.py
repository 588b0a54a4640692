"""Experiment histories: a metric's comparison over time, and a bandit's allocation over time."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.experiments import Experiments, InvalidExperiment, proportion_ztest
from flywheel.project import Project
from tests.experiments.conftest import AB_SPEC

pytestmark = pytest.mark.integration

T0 = 1_800_000_000.0  # exposures from here on, one unit every second


def _simulate(
    ex: Experiments, units: int, rates: dict[str, float], seed: int = 0
) -> list[dict[str, object]]:
    """``units`` units exposed one per second from T0 (alternating variants); each converts
    (purchase) with its variant's rate 30 s after exposure, and sees 1-3 impressions and clicks."""
    ex.create(copy.deepcopy(AB_SPEC))
    rng = np.random.default_rng(seed)
    exposures, events = [], []
    for i in range(units):
        variant = "control" if i % 2 == 0 else "green"
        ts = T0 + i
        exposures.append((f"d{i}", "checkout", f"u{i}", variant, 0.5, None, ts))
        if rng.random() < rates[variant]:
            events.append({"unit_id": f"u{i}", "event_type": "purchase", "ts": ts + 30})
        shown = int(rng.integers(1, 4))
        for k in range(shown):
            events.append({"unit_id": f"u{i}", "event_type": "impression", "ts": ts + k})
            if rng.random() < 0.3:
                events.append({"unit_id": f"u{i}", "event_type": "click", "ts": ts + k})
    ex.store.insert_exposures(exposures)
    ex.log_events(events)
    return events


def test_ab_history_is_the_analysis_as_of_each_point(any_experiments: Experiments) -> None:
    ex = any_experiments
    events = _simulate(ex, 4_000, {"control": 0.10, "green": 0.16})
    last_purchase = max(e["ts"] for e in events if e["event_type"] == "purchase")
    history = ex.history("checkout", buckets=40).to_dict()
    assert history["metric"]["name"] == "conversion" and history["control"] == "control"
    points = history["points"]
    assert len(points) == 40
    times = [p["time"] for p in points]
    assert times == sorted(times) and times[-1] == last_purchase
    units = [p["units"] for p in points]
    assert units == sorted(units) and units[-1] == 4_000

    # Any point equals the analysis of what was known then: units exposed by t, purchases by t.
    mid = points[9]
    t = mid["time"]
    exposed = int(np.floor(t - T0)) + 1
    assert mid["units"] == exposed
    with ex.project.db.read() as conn:
        purchases = {
            r.unit_id for r in ex.store.unit_events(conn, "checkout", ["purchase"]) if r.ts <= t
        }
    n = {"control": 0, "green": 0}
    bought = {"control": 0, "green": 0}
    for i in range(exposed):
        variant = "control" if i % 2 == 0 else "green"
        n[variant] += 1
        bought[variant] += f"u{i}" in purchases
    assert mid["variants"] == n
    want = proportion_ztest(bought["control"], n["control"], bought["green"], n["green"])
    got = mid["comparisons"][0]
    assert got["variant"] == "green" and got["n"] == n["green"]
    assert got["diff"] == pytest.approx(float(want.diff))
    assert got["p_value"] == pytest.approx(float(want.p_value))
    assert got["ci_low"] == pytest.approx(float(want.ci_low))
    assert mid["means"]["green"] == pytest.approx(bought["green"] / n["green"])

    # The last point is the report's fixed-horizon comparison (no pre-period: no CUPED).
    report = ex.report("checkout").to_dict()["metrics"][0]["comparisons"][0]
    last = points[-1]["comparisons"][0]
    for key in ("diff", "ci_low", "ci_high", "p_value"):
        assert last[key] == pytest.approx(report[key])
    # Always valid: never rises, and the real lift is found by the end.
    seq = [p["comparisons"][0]["sequential_p_value"] for p in points]
    assert all(b <= a for a, b in itertools.pairwise(seq))
    assert seq[0] > 0.5 and seq[-1] < 0.05 and last["p_value"] < 0.05

    # Other metrics by name: a ratio (clicks per impression) ends at the report's difference.
    ctr = ex.history("checkout", metric="ctr", buckets=5).to_dict()
    assert ctr["metric"]["kind"] == "ratio" and len(ctr["points"]) == 5
    report_ctr = ex.report("checkout").to_dict()["metrics"][1]["comparisons"][0]
    assert ctr["points"][-1]["comparisons"][0]["diff"] == pytest.approx(report_ctr["diff"])
    with pytest.raises(InvalidExperiment, match="metric"):
        ex.history("checkout", metric="revenue")
    with pytest.raises(InvalidExperiment, match="buckets"):
        ex.history("checkout", buckets=0)


def test_aa_history_stays_insignificant_at_every_point(experiments: Experiments) -> None:
    _simulate(experiments, 3_000, {"control": 0.12, "green": 0.12}, seed=4)
    points = experiments.history("checkout", buckets=50).to_dict()["points"]
    assert all(p["comparisons"][0]["sequential_p_value"] > 0.05 for p in points)


def test_bandit_allocation_is_recorded_at_every_update(any_experiments: Experiments) -> None:
    ex = any_experiments
    ex.create({"name": "ranker", "bandit": {"policy": "thompson", "arms": ["a", "b", "c"]}})
    start = ex.history("ranker").to_dict()
    assert start["kind"] == "bandit" and start["metric"] is None and start["points"] == []
    (first,) = start["allocation"]["points"]
    assert first["version"] == 0 and first["pulls"] == [0, 0, 0]
    assert sum(first["probabilities"]) == pytest.approx(1.0)
    assert max(first["probabilities"]) < 0.45  # no data yet: about uniform
    rng = np.random.default_rng(1)
    rates = {"a": 0.05, "b": 0.1, "c": 0.4}
    for batch in range(5):
        decisions = [ex.assign("ranker", f"u{batch}-{i}") for i in range(80)]
        ex.log_rewards(
            "ranker",
            [
                {
                    "unit_id": d.unit_id,
                    "decision_id": d.decision_id,
                    "reward": float(rng.random() < rates[d.variant]),
                }
                for d in decisions
            ],
        )
    allocation = ex.history("ranker").to_dict()["allocation"]
    assert allocation["arms"] == ["a", "b", "c"] and not allocation["contextual"]
    points = allocation["points"]
    assert [p["version"] for p in points] == [0, 1, 2, 3, 4, 5]
    assert [sum(p["pulls"]) for p in points] == [0, 80, 160, 240, 320, 400]
    assert [p["time"] for p in points] == sorted(p["time"] for p in points)
    # The recorded probabilities are exactly the policy's (same seed as the assignment path).
    assert points[-1]["probabilities"] == ex.policy("ranker").probabilities().tolist()
    assert points[-1]["probabilities"][2] > 0.8 > points[0]["probabilities"][2]


def test_contextual_allocation_is_the_mean_over_the_batch(experiments: Experiments) -> None:
    ex = experiments
    ex.create(
        {
            "name": "ctx",
            "bandit": {"policy": "linucb", "arms": ["x", "y"], "context": ["mobile"]},
        }
    )
    decisions = [ex.assign("ctx", f"u{i}", {"mobile": i % 2}) for i in range(60)]
    ex.log_rewards(
        "ctx",
        [
            {
                "unit_id": d.unit_id,
                "decision_id": d.decision_id,
                "reward": float(d.variant == ("x" if i % 2 else "y")),
            }
            for i, d in enumerate(decisions)
        ],
    )
    allocation = ex.history("ctx").to_dict()["allocation"]
    assert allocation["contextual"]
    assert [p["version"] for p in allocation["points"]] == [0, 1]
    assert allocation["points"][0]["probabilities"] == [0.5, 0.5]
    assert sum(allocation["points"][1]["probabilities"]) == pytest.approx(1.0)


def test_long_bandit_histories_thin_out_their_past(
    experiments: Experiments, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("flywheel.experiments._store.BANDIT_HISTORY_ROWS", 10)
    ex = experiments
    ex.create({"name": "bb", "bandit": {"policy": "epsilon_greedy", "arms": ["a", "b"]}})
    for i in range(40):
        d = ex.assign("bb", f"u{i}")
        ex.log_reward("bb", d.unit_id, 1.0, decision_id=d.decision_id)
    versions = [p["version"] for p in ex.history("bb").to_dict()["allocation"]["points"]]
    assert len(versions) <= 10
    assert versions[0] == 0 and versions[-1] == 40  # the start and the latest are kept
    assert versions == sorted(versions) and versions[-4:] == [37, 38, 39, 40]  # recent: all


def test_history_over_http(project: Project) -> None:
    from flywheel.auth import TokenStore

    _, reader = TokenStore(project.db).create("reader", "r")
    ex = Experiments(project)
    try:
        _simulate(ex, 400, {"control": 0.1, "green": 0.3})
        ex.create({"name": "arms", "bandit": {"policy": "ucb1", "arms": ["a", "b"]}})
    finally:
        ex.close()
    headers = {"Authorization": f"Bearer {reader}"}
    with TestClient(create_app(project, systems=["experiments"])) as client:
        r = client.get("/experiments/checkout/history?buckets=8", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert len(body["points"]) == 8 and body["points"][-1]["units"] == 400
        assert {"diff", "ci_low", "ci_high", "p_value", "sequential_p_value"} <= set(
            body["points"][-1]["comparisons"][0]
        )
        # A time range spreads the points over it; each is still the analysis as of its time.
        full = body["points"]
        t3, t7 = full[3]["time"], full[7]["time"]
        ranged = client.get(
            "/experiments/checkout/history",
            params={"buckets": 4, "since": t3, "until": t7},
            headers=headers,
        ).json()["points"]
        assert [p["time"] for p in ranged] == pytest.approx([p["time"] for p in full[4:8]])
        assert [(p["units"], p["means"]) for p in ranged] == [
            (p["units"], p["means"]) for p in full[4:8]
        ]
        early = client.get(
            "/experiments/checkout/history",
            params={"until": full[0]["time"] - 10**6},
            headers=headers,
        )
        assert early.status_code == 200 and early.json()["points"] == []  # nothing then
        bad = client.get(
            "/experiments/checkout/history", params={"since": t7, "until": t3}, headers=headers
        )
        assert bad.status_code == 400 and "until" in bad.json()["error"]
        r = client.get("/experiments/checkout/history?metric=ctr&buckets=3", headers=headers)
        assert r.json()["metric"]["kind"] == "ratio"
        bandit = client.get("/experiments/arms/history", headers=headers).json()
        assert bandit["allocation"]["points"][0]["probabilities"] == [0.5, 0.5]
        first = bandit["allocation"]["points"][0]["time"]
        for since, kept in ((first, 1), (first + 1, 0)):
            later = client.get(
                "/experiments/arms/history", params={"since": since}, headers=headers
            )
            assert len(later.json()["allocation"]["points"]) == kept
        bad = client.get("/experiments/checkout/history?metric=nope", headers=headers)
        assert bad.status_code == 400 and "metric" in bad.json()["error"]
        assert client.get("/experiments/ghost/history", headers=headers).status_code == 404
        assert client.get(
            "/experiments/checkout/history?buckets=0", headers=headers
        ).status_code in (
            400,
            422,
        )
