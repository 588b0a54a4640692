"""Event log contract on SQLite and the real Redis Streams."""

from __future__ import annotations

import time

from flywheel.events import open_event_log


def test_append_read_ack_redeliver_claim_lag(backend: dict[str, str]) -> None:
    log = open_event_log(backend["event_log"], namespace="t")
    other = open_event_log(backend["event_log"], namespace="t")
    try:
        ids = log.append("s", [b"a", b"b", b"c"])
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert log.lag("s", "g") == 3
        first = log.read("s", "g", "c1", 2, 0)
        assert [p for _, p in first] == [b"a", b"b"]
        # Another consumer gets only what nobody was given.
        assert [p for _, p in other.read("s", "g", "c2", 10, 0)] == [b"c"]
        assert log.pending("s", "g") == 3  # delivered, at either consumer, not acknowledged
        # c1 restarts without acking: its pending events come back first.
        assert log.read("s", "g", "c1", 10, 0) == first
        log.ack("s", "g", [first[0][0]])
        assert [p for _, p in log.read("s", "g", "c1", 10, 0)] == [b"b"]
        # c2 died: after the idle time c1 claims every idle event (its own "b" and c2's "c").
        time.sleep(0.05)
        claimed = log.claim("s", "g", "c1", 10, 10)
        assert [p for _, p in claimed] == [b"b", b"c"]
        assert other.read("s", "g", "c2", 10, 0) == []
        log.ack("s", "g", [i for i, _ in claimed])
        assert log.lag("s", "g") == 0 and log.pending("s", "g") == 0
        assert log.read("s", "g", "c1", 10, 20) == []
        # A second group sees everything from the start.
        assert len(log.read("s", "other", "x", 10, 0)) == 3
    finally:
        log.close()
        other.close()


def test_read_pending_and_read_new_split_what_read_gives(backend: dict[str, str]) -> None:
    log = open_event_log(backend["event_log"], namespace="t")
    try:
        log.append("s", [b"a", b"b", b"c", b"d"])
        assert log.read_pending("s", "g", "c1", 10) == []
        first = log.read_new("s", "g", "c1", 2)
        assert [p for _, p in first] == [b"a", b"b"]
        ahead = log.read_new("s", "g", "c1", 1)  # read ahead while the first is applied
        assert [p for _, p in ahead] == [b"c"]
        # Nothing acknowledged: both are pending, in order, and read() resumes with them.
        assert log.read_pending("s", "g", "c1", 10) == first + ahead
        assert log.read("s", "g", "c1", 10, 0) == first + ahead
        log.ack("s", "g", [i for i, _ in first + ahead])
        assert log.read_pending("s", "g", "c1", 10) == []
        assert [p for _, p in log.read_new("s", "g", "c1", 10)] == [b"d"]
        assert log.read_new("s", "g", "c1", 10) == []
    finally:
        log.close()
