"""Time tiles: applying events in one batch or in any split gives the same state (so a
processor restarted mid-stream, with other batch boundaries, ends where a clean run ends)."""

from __future__ import annotations

import itertools

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flywheel.features._tiles import agg_specs, aggregate_at, apply_events, load_state
from tests.features.conftest import click_aggs_view

SPECS = agg_specs(click_aggs_view())
MIN = 60 * 1_000_000

event = st.tuples(
    st.integers(0, 30),  # event id (repeats are redeliveries)
    st.integers(0, 400),  # minute
    st.one_of(st.none(), st.integers(0, 5)),  # item_id
    st.one_of(st.none(), st.floats(0, 10, allow_nan=False).map(lambda x: round(x, 3))),
)


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    events=st.lists(event, min_size=1, max_size=40), cuts=st.lists(st.integers(0, 40), max_size=5)
)
def test_batch_boundaries_do_not_change_the_state(
    events: list[tuple[int, int, int | None, float | None]], cuts: list[int]
) -> None:
    first: dict[int, tuple[int, int | None, float | None]] = {}
    for i, m, item, amount in events:
        first.setdefault(i, (m, item, amount))  # a repeated id is a redelivery of the same event
    evs = [
        (f"e{i}", first[i][0] * MIN, {"user_id": 1, "item_id": first[i][1], "amount": first[i][2]})
        for i, _, _, _ in events
    ]
    lateness = 10 * MIN

    def run(parts: list[list[tuple[str, int, dict[str, object]]]]) -> tuple[bytes, list[int]]:
        payload = None
        totals = [0, 0]
        for part in parts:  # each batch: load the stored state, apply, store (as the processor)
            state = load_state(payload)
            applied, dups, late = apply_events(state, SPECS, part, lateness)
            # A redelivered event whose id was forgotten (older than the lateness mark) is
            # dropped as late instead of as a duplicate: either way it is not applied.
            totals = [totals[0] + len(applied), totals[1] + len(dups) + late]
            payload = orjson.dumps(state)
        return payload or b"", totals

    bounds = sorted({0, len(evs), *[min(c, len(evs)) for c in cuts]})
    split = [evs[a:b] for a, b in itertools.pairwise(bounds)]
    one_by_one = [[e] for e in evs]
    whole, whole_totals = run([evs])
    for parts in (split, one_by_one):
        got, totals = run(parts)
        assert got == whole and totals == whole_totals
    state = orjson.loads(whole)
    t = max(ts for _, ts, _ in evs)
    assert aggregate_at(state, SPECS, t) == aggregate_at(orjson.loads(run(one_by_one)[0]), SPECS, t)
