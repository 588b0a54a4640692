"""Bucket allocation: which of the 10,000 buckets belong to which variant or experiment.

A stored experiment maps each unit to two buckets: ``hash_bucket(layer salt, unit)`` decides
whether the unit is in the experiment at all (experiments in one layer hold disjoint sets of
layer buckets, so they never share a unit), and ``hash_bucket(experiment salt, unit)`` decides its
variant. Allocations are stored as half-open bucket ranges and changed by ``reallocate``, which
keeps every bucket that can stay where it is: a change of weights moves exactly
``sum(max(0, new_i - old_i))`` buckets, the minimum any rule can move, whatever several weights
change at once. Traffic changes work the same way on the layer's buckets: raising an experiment's
traffic adds free buckets to it, lowering it releases only the surplus.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from flywheel.experiments._errors import ExperimentStateError, InvalidExperiment

BUCKETS = 10_000
UNASSIGNED = 255

Ranges = list[list[int]]  # [[start, end), ...], sorted, non-overlapping


def target_counts(weights: Sequence[float], total: int = BUCKETS) -> list[int]:
    """Split ``total`` buckets in proportion to ``weights`` (largest remainder, ties by order)."""
    weight_sum = float(sum(weights))
    if weight_sum <= 0 or any(w < 0 for w in weights):
        raise InvalidExperiment("weights", "must be >= 0 with at least one positive")
    exact = [w / weight_sum * total for w in weights]
    counts = [int(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def to_ranges(buckets: Iterable[int]) -> Ranges:
    """Compress bucket numbers into sorted half-open ranges."""
    out: Ranges = []
    for b in sorted(buckets):
        if out and out[-1][1] == b:
            out[-1][1] = b + 1
        else:
            out.append([b, b + 1])
    return out


def from_ranges(ranges: Ranges) -> list[int]:
    """Expand half-open ranges into bucket numbers."""
    return [b for start, end in ranges for b in range(start, end)]


def variant_table(allocation: dict[str, Ranges], arms: Sequence[str]) -> bytes:
    """A ``BUCKETS``-long lookup table: bucket -> index into ``arms`` (255 = nobody)."""
    table = bytearray([UNASSIGNED]) * BUCKETS
    for index, arm in enumerate(arms):
        for start, end in allocation.get(arm, []):
            table[start:end] = bytes([index]) * (end - start)
    return bytes(table)


def reallocate(
    previous: dict[str, Ranges] | None, weights: Sequence[tuple[str, float]]
) -> dict[str, Ranges]:
    """The variant allocation for ``weights`` that moves the fewest buckets from ``previous``.

    Variants keep their lowest buckets when they shrink; freed buckets (and unowned ones) go to
    the growing variants, lowest first. With ``previous=None`` variants get contiguous ranges in
    order. Variants missing from ``weights`` lose all their buckets.
    """
    names = [n for n, _ in weights]
    counts = target_counts([w for _, w in weights])
    owned: dict[str, list[int]] = {n: [] for n in names}
    free: list[int] = []
    if previous is None:
        start = 0
        for name, count in zip(names, counts, strict=True):
            owned[name] = list(range(start, start + count))
            start += count
        return {n: to_ranges(b) for n, b in owned.items()}
    seen = set()
    for name, ranges in previous.items():
        buckets = from_ranges(ranges)
        seen.update(buckets)
        if name in owned:
            owned[name] = sorted(buckets)
        else:
            free.extend(buckets)
    free.extend(b for b in range(BUCKETS) if b not in seen)
    for name, count in zip(names, counts, strict=True):
        if len(owned[name]) > count:
            free.extend(owned[name][count:])
            owned[name] = owned[name][:count]
    free.sort()
    position = 0
    for name, count in zip(names, counts, strict=True):
        need = count - len(owned[name])
        if need > 0:
            owned[name].extend(free[position : position + need])
            position += need
    return {n: to_ranges(b) for n, b in owned.items()}


def moved_buckets(before: dict[str, Ranges], after: dict[str, Ranges]) -> int:
    """How many buckets changed owner between two allocations."""
    owner_before = {b: n for n, r in before.items() for b in from_ranges(r)}
    owner_after = {b: n for n, r in after.items() for b in from_ranges(r)}
    return sum(1 for b in range(BUCKETS) if owner_before.get(b) != owner_after.get(b))


def resize_layer_share(
    layer: dict[str, Ranges], experiment: str, traffic: float, layer_name: str
) -> Ranges:
    """The layer buckets ``experiment`` holds after asking for ``traffic`` of the layer.

    ``layer`` maps every other running experiment of the layer to its buckets. Growing takes the
    lowest free buckets; shrinking keeps the lowest held ones. Raises ``ExperimentStateError``
    when the layer has too few free buckets.
    """
    wanted = max(1, round(traffic * BUCKETS))
    mine = sorted(from_ranges(layer.get(experiment, [])))
    if len(mine) >= wanted:
        return to_ranges(mine[:wanted])
    taken = {b for name, r in layer.items() if name != experiment for b in from_ranges(r)}
    held = set(mine)
    free = [b for b in range(BUCKETS) if b not in taken and b not in held]
    need = wanted - len(mine)
    if len(free) < need:
        available = (len(free) + len(mine)) / BUCKETS
        raise ExperimentStateError(
            f"layer {layer_name!r} has {available:.2%} of its traffic free for experiment "
            f"{experiment!r}, which asks for {traffic:.2%}; stop another experiment in the layer "
            "or lower the traffic"
        )
    return to_ranges(mine + free[:need])


__all__ = [
    "BUCKETS",
    "UNASSIGNED",
    "Ranges",
    "from_ranges",
    "moved_buckets",
    "reallocate",
    "resize_layer_share",
    "target_counts",
    "to_ranges",
    "variant_table",
]
