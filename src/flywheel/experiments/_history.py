"""How an experiment evolved: a metric's comparison over time, and a bandit's allocation.

A/B tests: the span from the first exposure to the last exposure or metric event is cut into
``buckets`` equal intervals. At the end ``t`` of each, the analysis is redone with what was known
at ``t``: the units first exposed by ``t`` (by the variant of their first exposure, as in the
report) and, for each, its events between its first exposure and ``t``. Each point has the units
per variant, the per-variant means, and per treatment the difference with its (1 - alpha)
interval and fixed-horizon p-value (two-proportion z, Welch t, or delta-method z for ratios; no
CUPED) and the always-valid mSPRT p-value: the running minimum over the points so far, so it
never rises and may be read at every point without inflating false positives. Its last value can
differ from the report's ``sequential_p_value``, whose looks are at every 1% of units instead.

Bandits: the arm probabilities recorded at each state update (``experiment_bandit_history``; see
``Experiments._record_allocation``), with the pulls per arm at that version.

``since``/``until`` (Unix seconds) narrow the span the points are spread over (A/B) or the updates
kept (bandits); an A/B point is still the analysis of everything known at its time, so a
narrow range only puts more points where it is. No data in the range: no points.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.experiments._analysis import analysed_units
from flywheel.experiments._definition import Metric, MetricKind
from flywheel.experiments._errors import InvalidExperiment
from flywheel.experiments._stats import (
    MIXTURE_SCALE,
    difference_ztest,
    msprt_from_sums,
    msprt_pvalue,
    proportion_ztest,
    ratio_delta,
    welch_ttest,
)

if TYPE_CHECKING:
    from flywheel.experiments._client import ExperimentInfo
    from flywheel.experiments._store import ExperimentStore

MAX_BUCKETS = 500


@dataclass
class History:
    """The time series of one experiment; ``to_dict()`` is the JSON form."""

    experiment: str
    kind: str
    alpha: float
    metric: dict[str, Any] | None
    control: str
    points: list[dict[str, Any]] = field(default_factory=list)
    allocation: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "kind": self.kind,
            "alpha": self.alpha,
            "metric": self.metric,
            "control": self.control,
            "points": self.points,
            "allocation": self.allocation,
        }

    def render(self) -> list[Any]:
        """Rich renderables: the comparison over time, then the bandit's allocation."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        out: list[Any] = [Text(f"experiment {self.experiment} ({self.kind})", style="bold")]
        if self.metric is not None and self.points:
            treatments = [c["variant"] for c in self.points[-1]["comparisons"]]
            table = Table(
                "time",
                "units",
                *[f"{v}: diff [CI] / p / p (seq.)" for v in treatments],
                title=f"{self.metric['name']} ({self.metric['kind']} of {self.metric['event']})",
                box=box.SIMPLE_HEAD,
            )
            for p in self.points:
                cells = []
                for c in p["comparisons"]:
                    cells.append(
                        f"{_fmt(c['diff'], '+.3g')} [{_fmt(c['ci_low'], '.3g')}, "
                        f"{_fmt(c['ci_high'], '.3g')}] / {_fmt(c['p_value'], '.2g')} / "
                        f"{_fmt(c['sequential_p_value'], '.2g')}"
                    )
                table.add_row(p["at"][:19], str(p["units"]), *cells)
            out.append(table)
        if self.allocation is not None:
            arms = self.allocation["arms"]
            table = Table("time", "version", *arms, title="allocation", box=box.SIMPLE_HEAD)
            for p in self.allocation["points"]:
                table.add_row(  # updates come fast: milliseconds
                    p["at"][:23], str(p["version"]), *[f"{x:.1%}" for x in p["probabilities"]]
                )
            out.append(table)
        return out


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def _clean(value: Any) -> float | None:
    f = float(value)
    return f if np.isfinite(f) else None


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _pick_metric(info: ExperimentInfo, name: str | None) -> Metric | None:
    metrics = info.spec.all_metrics()
    if name is None:
        return metrics[0] if metrics else None
    for m in metrics:
        if m.name == name:
            return m
    raise InvalidExperiment(
        "metric", f"{name!r} is not one of {[m.name for m in metrics]}", info.name
    )


def build_history(
    store: ExperimentStore,
    info: ExperimentInfo,
    *,
    metric: str | None,
    buckets: int,
    since: float | None = None,
    until: float | None = None,
) -> History:
    """The ``History`` of ``info`` (see the module docstring)."""
    if isinstance(buckets, bool) or not isinstance(buckets, int) or not 1 <= buckets <= MAX_BUCKETS:
        raise InvalidExperiment("buckets", f"must be an integer in 1..{MAX_BUCKETS}", info.name)
    if since is not None and until is not None and until < since:
        raise InvalidExperiment("until", f"{until} is before since ({since})", info.name)
    lo = -math.inf if since is None else float(since)
    hi = math.inf if until is None else float(until)
    spec = info.spec
    chosen_metric = _pick_metric(info, metric)
    history = History(
        experiment=spec.name,
        kind=info.kind,
        alpha=spec.alpha,
        metric=None,
        control=spec.control_arm,
    )
    if spec.bandit is not None:
        with store.db.read() as conn:
            rows = store.bandit_history(conn, spec.name)
        history.allocation = {
            "arms": list(spec.arms),
            "contextual": spec.bandit.policy.contextual,
            "points": [
                {
                    "time": float(r.ts),
                    "at": _iso(float(r.ts)),
                    "version": int(r.version),
                    "probabilities": json.loads(r.probabilities),
                    "pulls": json.loads(r.pulls),
                }
                for r in rows
                if lo <= float(r.ts) <= hi
            ],
        }
        return history  # adaptive allocation: per-arm comparisons are not tests
    if chosen_metric is None:
        return history
    history.metric = {
        "name": chosen_metric.name,
        "kind": chosen_metric.kind.value,
        "event": chosen_metric.event
        if chosen_metric.kind is not MetricKind.ratio
        else f"{chosen_metric.event}/{chosen_metric.denominator}",
        "direction": chosen_metric.direction,
    }
    history.points = _metric_points(store, info, chosen_metric, buckets, (lo, hi))
    return history


def _metric_points(
    store: ExperimentStore,
    info: ExperimentInfo,
    m: Metric,
    buckets: int,
    span: tuple[float, float] = (-math.inf, math.inf),
) -> list[dict[str, Any]]:
    spec = info.spec
    events = [m.event] + ([m.denominator] if m.denominator else [])
    with store.db.read() as conn:
        exposure_rows = store.exposure_counts(conn, spec.name)
        event_rows = store.unit_events(conn, spec.name, sorted(set(events)))
    chosen, _, _ = analysed_units(spec, exposure_rows)
    if not chosen:
        return []
    first_ts = np.asarray([c[0] for c in chosen])
    arm = np.asarray([c[2] for c in chosen], dtype=np.int64)
    index = {c[1]: i for i, c in enumerate(chosen)}
    n = len(chosen)
    start = float(first_ts[0])
    end = max(float(first_ts[-1]), max((float(r.ts) for r in event_rows), default=start))
    start, end = max(start, span[0]), min(end, span[1])  # the range asked for, within the data
    if end < start:
        return []
    ends = start + (end - start) * np.arange(1, buckets + 1) / buckets if end > start else [end]
    # Running per-unit totals of the numerator and denominator events.
    num_sum, num_count = np.zeros(n), np.zeros(n)
    den_sum, den_count = np.zeros(n), np.zeros(n)
    ev_unit = np.asarray([index.get(r.unit_id, -1) for r in event_rows], dtype=np.int64)
    ev_ts = np.asarray([float(r.ts) for r in event_rows])
    ev_value = np.asarray([float(r.value) for r in event_rows])
    ev_is_num = np.asarray([r.event_type == m.event for r in event_rows], dtype=bool)
    ev_is_den = np.asarray([r.event_type == m.denominator for r in event_rows], dtype=bool)
    control = spec.arms.index(spec.control_arm)
    treatments = [i for i in range(len(spec.arms)) if i != control]
    looks: dict[int, list[tuple[float, float, float, float, float, float]]] = {
        t: [] for t in treatments
    }
    ratio_looks: dict[int, list[float]] = {t: [] for t in treatments}
    points: list[dict[str, Any]] = []
    done = 0
    for t_end in ends:
        upto = int(np.searchsorted(ev_ts, t_end, side="right"))
        batch = slice(done, upto)
        done = upto
        units, values = ev_unit[batch], ev_value[batch]
        # Only events at or after the unit's own first exposure count (already filtered by SQL),
        # and only from units the analysis kept.
        keep = units >= 0
        for mask, total, count in (
            (ev_is_num[batch] & keep, num_sum, num_count),
            (ev_is_den[batch] & keep, den_sum, den_count),
        ):
            np.add.at(total, units[mask], values[mask])
            np.add.at(count, units[mask], 1.0)
        exposed = int(np.searchsorted(first_ts, t_end, side="right"))
        y = _unit_values(m, num_sum[:exposed], num_count[:exposed])
        den = (
            (den_count if m.value == "count" else den_sum)[:exposed]
            if m.kind is MetricKind.ratio
            else None
        )
        a = arm[:exposed]
        per_variant = {}
        means = {}
        for i, name in enumerate(spec.arms):
            mask = a == i
            per_variant[name] = int(mask.sum())
            if m.kind is MetricKind.ratio and den is not None:
                means[name] = _clean(ratio_delta(y[mask], den[mask])[0]) if mask.any() else None
            else:
                means[name] = _clean(y[mask].mean()) if mask.any() else None
        comparisons = []
        for t in treatments:
            comparisons.append(
                _compare_at(m, y, den, a, control, t, spec.arms[t], spec.alpha, looks, ratio_looks)
            )
        points.append(
            {
                "time": float(t_end),
                "at": _iso(float(t_end)),
                "units": exposed,
                "variants": per_variant,
                "means": means,
                "comparisons": comparisons,
            }
        )
    _sequential(points, treatments, looks, ratio_looks, m)
    return points


def _unit_values(m: Metric, total: np.ndarray, count: np.ndarray) -> np.ndarray:
    if m.kind is MetricKind.proportion:
        return (count > 0).astype(float)
    return count.copy() if m.value == "count" else total.copy()


def _compare_at(
    m: Metric,
    y: np.ndarray,
    den: np.ndarray | None,
    a: np.ndarray,
    control: int,
    treatment: int,
    name: str,
    alpha: float,
    looks: dict[int, list[tuple[float, float, float, float, float, float]]],
    ratio_looks: dict[int, list[float]],
) -> dict[str, Any]:
    ma, mb = a == control, a == treatment
    na, nb = int(ma.sum()), int(mb.sum())
    ya, yb = y[ma], y[mb]
    looks[treatment].append(
        (float(ya.sum()), float((ya**2).sum()), na, float(yb.sum()), float((yb**2).sum()), nb)
    )
    out: dict[str, Any] = {"variant": name, "n": nb, "n_control": na}
    if na < 2 or nb < 2:
        ratio_looks[treatment].append(1.0)
        out.update(diff=None, ci_low=None, ci_high=None, p_value=None)
        return out
    if m.kind is MetricKind.ratio and den is not None:
        ra, va = ratio_delta(ya, den[ma])
        rb, vb = ratio_delta(yb, den[mb])
        result = difference_ztest(rb - ra, va + vb, alpha)
        sigma2 = max(va * na, vb * nb, 1e-300)
        ratio_looks[treatment].append(
            float(msprt_pvalue(rb - ra, va + vb, MIXTURE_SCALE**2 * sigma2))
        )
    elif m.kind is MetricKind.proportion:
        result = proportion_ztest(ya.sum(), na, yb.sum(), nb, alpha)
    else:
        result = welch_ttest(ya.mean(), ya.var(ddof=1), na, yb.mean(), yb.var(ddof=1), nb, alpha)
    out.update(
        diff=_clean(result.diff),
        ci_low=_clean(result.ci_low),
        ci_high=_clean(result.ci_high),
        p_value=_clean(result.p_value),
    )
    return out


def _sequential(
    points: list[dict[str, Any]],
    treatments: list[int],
    looks: dict[int, list[tuple[float, float, float, float, float, float]]],
    ratio_looks: dict[int, list[float]],
    m: Metric,
) -> None:
    """Fill ``sequential_p_value``: the always-valid p over the looks so far (running minimum)."""
    for k, t in enumerate(treatments):
        if m.kind is MetricKind.ratio:
            p = np.minimum.accumulate(np.asarray(ratio_looks[t], float))
        else:
            sums = np.asarray(looks[t], float)  # (looks, 6)
            p = msprt_from_sums(
                sums[:, 0], sums[:, 1], sums[:, 2], sums[:, 3], sums[:, 4], sums[:, 5]
            )
        for point, value in zip(points, p.tolist(), strict=True):
            point["comparisons"][k]["sequential_p_value"] = _clean(value)


__all__ = ["MAX_BUCKETS", "History", "build_history"]
