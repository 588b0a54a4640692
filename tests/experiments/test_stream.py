"""Experiment events fed from the event log (SQLite and the real Redis Streams)."""

from __future__ import annotations

import json
import time

import numpy as np

from flywheel.events import open_event_log
from flywheel.experiments import EventStreamConsumer, Experiments


def test_stream_events_feed_reports_and_bandits_exactly_once(
    experiments: Experiments, event_log_url: str
) -> None:
    ex = experiments
    ex.create(
        {
            "name": "ab",
            "variants": ["control", "green"],
            "metrics": [{"name": "conversion", "kind": "proportion", "event": "purchase"}],
        }
    )
    ex.create({"name": "bandit", "bandit": {"policy": "thompson", "arms": ["a", "b"]}})
    for i in range(50):
        ex.assign("ab", f"u{i}")
    decision = ex.assign("bandit", "u1")
    ex.flush()
    log = open_event_log(event_log_url, namespace="exp-test")
    later_us = int((time.time() + 60) * 1e6)
    payloads = [
        json.dumps({"user_id": f"u{i}", "event_type": "purchase", "ts": later_us}).encode()
        for i in range(10)
    ]
    payloads.append(b"not json")  # a poison event must not block the stream
    payloads.append(json.dumps({"event_type": "purchase"}).encode())  # no unit
    payloads.append(
        json.dumps(
            {
                "user_id": "u1",
                "event_type": "reward",
                "value": 1.0,
                "ts": later_us,
                "experiment": "bandit",
                "decision_id": decision.decision_id,
            }
        ).encode()
    )
    log.append("clicks", payloads)
    consumer = EventStreamConsumer(ex, "clicks", event_log=log, consumer="c1")
    # First delivery is "lost" (crash before ack): the events come back and are stored once.
    first = log.read("clicks", consumer.group, "c1", 100, 0)
    assert len(first) == 13
    stats = consumer.poll()
    assert (stats.read, stats.stored, stats.skipped, stats.bandits_updated) == (13, 11, 2, 1)
    assert consumer.lag() == 0
    # Should the same log entry be delivered again (another consumer claiming it), it is not
    # stored twice: its event id is already there.
    assert (
        ex.log_events(
            [
                {
                    "unit_id": "u1",
                    "event_type": "purchase",
                    "event_id": consumer._event_id(first[0][0]),
                }
            ]
        )
        == 0
    )
    report = ex.report("ab").to_dict()
    converted = sum(v["mean"] * v["n"] for v in report["metrics"][0]["variants"])
    assert round(converted) == 10
    state = ex.bandit_state("bandit")
    assert state.pulls.sum() == 1
    assert np.isclose(state.reward_sum.sum(), 1.0)
    assert consumer.poll().read == 0
    log.close()
