"""Experiment reports: per-variant units, exposures and metrics, tests, CUPED, SRM, guardrails.

Units are analysed by the variant of their first exposure (units exposed to several variants, for
instance after a weight change, are left out and counted in a warning). A unit's metric value is
computed from its events at or after its first exposure; the same events in the
``pre_period_days`` before it are the CUPED covariate. Each treatment is compared with the
control by a fixed-horizon test (two-proportion z, Welch t, delta-method z for ratios; a z-test on
CUPED-adjusted values when a pre-period covariate exists) and by an always-valid mSPRT p-value
over looks at every 1% of units in exposure order, which stays valid however often the report
is read. Guardrails are checked with the always-valid p-value, since they are watched
continuously. Bandits allocate adaptively, so their report is descriptive (no tests, no SRM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np

from flywheel.experiments._definition import Metric, MetricKind
from flywheel.experiments._errors import AnalysisError
from flywheel.experiments._stats import (
    MIXTURE_SCALE,
    cuped,
    difference_ztest,
    mean_ci,
    msprt_from_sums,
    msprt_pvalue,
    proportion_ztest,
    ratio_delta,
    srm_test,
    welch_ttest,
)

if TYPE_CHECKING:
    from flywheel.experiments._bandits import BanditState, PreparedPolicy
    from flywheel.experiments._client import ExperimentInfo
    from flywheel.experiments._store import ExperimentStore

SEQUENTIAL_LOOKS = 100


@dataclass
class Report:
    """The analysis of one experiment; ``to_dict()`` is the JSON form, ``render()`` the table."""

    experiment: str
    kind: str
    status: str
    alpha: float
    units: int
    variants: list[dict[str, Any]]
    srm: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    bandit: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    generated_at: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment,
            "kind": self.kind,
            "status": self.status,
            "alpha": self.alpha,
            "units": self.units,
            "variants": self.variants,
            "srm": self.srm,
            "metrics": self.metrics,
            "bandit": self.bandit,
            "warnings": self.warnings,
            "generated_at": self.generated_at,
        }

    def render(self) -> list[Any]:
        """Rich renderables: a header, the variants table and one table per metric."""
        from rich import box
        from rich.table import Table
        from rich.text import Text

        out: list[Any] = [
            Text(
                f"experiment {self.experiment} ({self.kind}, {self.status}): {self.units} units",
                style="bold",
            )
        ]
        variants = Table(
            "variant", "units", "exposures", "expected share", "observed share", box=box.SIMPLE_HEAD
        )
        for v in self.variants:
            variants.add_row(
                v["name"],
                str(v["units"]),
                str(v["exposures"]),
                _fmt(v.get("expected_share"), ".1%"),
                _fmt(v.get("observed_share"), ".1%"),
            )
        out.append(variants)
        if self.srm is not None:
            flag = "SAMPLE RATIO MISMATCH" if self.srm["flagged"] else "ok"
            out.append(
                Text(
                    f"sample ratio: chi2={_fmt(self.srm['chi2'], '.2f')} "
                    f"p={_fmt(self.srm['p_value'], '.3g')} {flag}",
                    style="bold red" if self.srm["flagged"] else "",
                )
            )
        for m in self.metrics:
            if self.bandit is not None and m["name"] == "reward":
                continue  # the arms table below shows it
            table = Table(
                "variant",
                "n",
                "mean",
                "diff [95% CI]",
                "rel.",
                "p",
                "p (seq.)",
                title=f"{m['role']}: {m['name']} ({m['kind']} of {m['event']})",
                box=box.SIMPLE_HEAD,
                pad_edge=False,
            )
            comparisons = {c["variant"]: c for c in m["comparisons"]}
            notes = []
            for v in m["variants"]:
                c = comparisons.get(v["variant"])
                if c is not None:
                    if c.get("cuped_variance_ratio") is not None:
                        notes.append(
                            f"{v['variant']}: CUPED, variance x{c['cuped_variance_ratio']:.2f}"
                        )
                    if c["significant"]:
                        notes.append(f"{v['variant']}: significant at alpha={self.alpha}")
                    if c.get("breached"):
                        notes.append(f"{v['variant']}: GUARDRAIL BREACHED")
                diff = ""
                if c is not None:
                    diff = f"{_fmt(c['diff'], '+.3g')} [{_fmt(c['ci_low'], '.3g')}, "
                    diff += f"{_fmt(c['ci_high'], '.3g')}]"
                table.add_row(
                    v["variant"],
                    str(v["n"]),
                    _fmt(v["mean"], ".4g"),
                    diff,
                    _fmt(c and c["relative"], "+.1%"),
                    _fmt(c and c["p_value"], ".2g"),
                    _fmt(c and c["sequential_p_value"], ".2g"),
                )
            out.append(table)
            out.extend(Text(f"  {n}", style="bold" if "BREACHED" in n else "") for n in notes)
        if self.bandit is not None:
            arms = Table(
                "arm",
                "rewarded pulls",
                "mean reward [CI]",
                "propensity now",
                title=f"bandit: {self.bandit['policy']}",
                box=box.SIMPLE_HEAD,
            )
            for a in self.bandit["arms"]:
                arms.add_row(
                    a["arm"],
                    str(int(a["pulls"])),
                    _interval(a["mean"], a["ci_low"], a["ci_high"]),
                    _fmt(a["propensity"], ".1%"),
                )
            out.append(arms)
        for w in self.warnings:
            out.append(Text(f"warning: {w}", style="yellow"))
        return out


def _fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return format(value, spec)


def _interval(mean: Any, low: Any, high: Any) -> str:
    return f"{_fmt(mean, '.4g')} [{_fmt(low, '.4g')}, {_fmt(high, '.4g')}]"


def _clean(value: Any) -> Any:
    """numpy scalars -> float; NaN/inf -> None (valid JSON)."""
    f = float(value)
    return f if np.isfinite(f) else None


@dataclass
class _UnitData:
    units: list[str]
    variant: np.ndarray  # index into arms
    exposures: np.ndarray
    first_ts: np.ndarray
    post_sum: dict[str, np.ndarray]
    post_count: dict[str, np.ndarray]
    pre_sum: dict[str, np.ndarray]
    pre_count: dict[str, np.ndarray]


def _load(
    store: ExperimentStore, info: ExperimentInfo, pre_window: float
) -> tuple[_UnitData, int, int]:
    spec = info.spec
    event_types = sorted(
        {m.event for m in spec.all_metrics()}
        | {m.denominator for m in spec.all_metrics() if m.denominator}
    )
    with store.db.read() as conn:
        exposure_rows = store.exposure_counts(conn, spec.name)
        event_rows = (
            store.unit_event_sums(conn, spec.name, event_types, pre_window) if event_types else []
        )
    chosen, crossed, seen = analysed_units(spec, exposure_rows)
    units = [c[1] for c in chosen]
    index = {u: i for i, u in enumerate(units)}
    n = len(units)
    sums = {
        k: {t: np.zeros(n) for t in event_types}
        for k in ("post_sum", "post_count", "pre_sum", "pre_count")
    }
    for r in event_rows:
        i = index.get(r.unit_id)
        if i is None:
            continue
        for key in sums:
            sums[key][r.event_type][i] = float(getattr(r, key) or 0.0)
    data = _UnitData(
        units=units,
        variant=np.asarray([c[2] for c in chosen], dtype=np.int64),
        exposures=np.asarray([c[3] for c in chosen], dtype=np.int64),
        first_ts=np.asarray([c[0] for c in chosen]),
        **sums,
    )
    return data, crossed, seen


def analysed_units(
    spec: Any, exposure_rows: list[Any]
) -> tuple[list[tuple[float, str, int, int]], int, int]:
    """The units an analysis uses, by first exposure: ``(first_ts, unit, arm index, exposures)``
    sorted by time; plus the units left out for seeing several variants, and all units seen."""
    arm_index = {a: i for i, a in enumerate(spec.arms)}
    per_unit: dict[str, list[Any]] = {}
    for r in exposure_rows:
        per_unit.setdefault(r.unit_id, []).append(r)
    crossed = 0
    chosen: list[tuple[float, str, int, int]] = []
    for unit, rows in per_unit.items():
        if spec.bandit is None and len({r.variant for r in rows}) > 1:
            crossed += 1
            continue
        first = min(rows, key=lambda r: r.first_ts)
        if first.variant not in arm_index:
            continue
        chosen.append(
            (
                float(first.first_ts),
                unit,
                arm_index[first.variant],
                sum(int(r.exposures) for r in rows),
            )
        )
    chosen.sort()
    return chosen, crossed, len(per_unit)


def _values(m: Metric, data: _UnitData, pre: bool, which: str = "event") -> np.ndarray:
    event = m.event if which == "event" else (m.denominator or m.event)
    total = (data.pre_sum if pre else data.post_sum)[event]
    count = (data.pre_count if pre else data.post_count)[event]
    if m.kind is MetricKind.proportion:
        return (count > 0).astype(float)
    return count if m.value == "count" else total


def _analyse_metric(
    m: Metric,
    role: str,
    data: _UnitData,
    arms: tuple[str, ...],
    control: int,
    alpha: float,
    compare: bool,
) -> dict[str, Any]:
    y = _values(m, data, pre=False)
    x = _values(m, data, pre=True)
    den = _values(m, data, pre=False, which="denominator") if m.kind is MetricKind.ratio else None
    per_variant = []
    for i, arm in enumerate(arms):
        mask = data.variant == i
        n = int(mask.sum())
        if m.kind is MetricKind.ratio:
            assert den is not None
            mean, var = ratio_delta(y[mask], den[mask])
            half = 1.959963984540054 * np.sqrt(var) if np.isfinite(var) else float("nan")
            low, high = mean - half, mean + half
        else:
            mean = float(y[mask].mean()) if n else float("nan")
            var = float(y[mask].var(ddof=1)) if n > 1 else float("nan")
            low, high = mean_ci(mean, var, n, alpha)
        per_variant.append(
            {
                "variant": arm,
                "n": n,
                "mean": _clean(mean),
                "ci_low": _clean(low),
                "ci_high": _clean(high),
            }
        )
    comparisons = []
    if compare:
        for i, arm in enumerate(arms):
            if i == control:
                continue
            comparisons.append(_compare(m, role, data, y, x, den, control, i, arm, arms, alpha))
        _holm(comparisons, alpha)
    return {
        "name": m.name,
        "role": role,
        "kind": m.kind.value,
        "event": m.event if m.kind is not MetricKind.ratio else f"{m.event}/{m.denominator}",
        "direction": m.direction,
        "variants": per_variant,
        "comparisons": comparisons,
    }


def _compare(
    m: Metric,
    role: str,
    data: _UnitData,
    y: np.ndarray,
    x: np.ndarray,
    den: np.ndarray | None,
    a: int,
    b: int,
    arm: str,
    arms: tuple[str, ...],
    alpha: float,
) -> dict[str, Any]:
    ma, mb = data.variant == a, data.variant == b
    na, nb = int(ma.sum()), int(mb.sum())
    out: dict[str, Any] = {"variant": arm, "control": arms[a], "cuped_variance_ratio": None}
    if na < 2 or nb < 2:
        out.update(
            diff=None,
            relative=None,
            ci_low=None,
            ci_high=None,
            p_value=None,
            sequential_p_value=None,
            test="not enough units",
            significant=False,
            breached=False,
        )
        return out
    if m.kind is MetricKind.ratio:
        assert den is not None
        ra, va = ratio_delta(y[ma], den[ma])
        rb, vb = ratio_delta(y[mb], den[mb])
        result = difference_ztest(rb - ra, va + vb, alpha)
        sigma2 = max(va * na, vb * nb, 1e-300)
        seq = float(msprt_pvalue(rb - ra, va + vb, MIXTURE_SCALE**2 * sigma2))
        base, test = ra, "delta-method z"
    else:
        both = ma | mb
        adjusted = None
        if np.var(x[both]) > 0:
            c = cuped(y[both], x[both])
            if c.variance_ratio < 1.0:
                adjusted = np.empty_like(y)
                adjusted[both] = c.adjusted
                out["cuped_variance_ratio"] = c.variance_ratio
        if adjusted is not None:
            ya, yb = adjusted[ma], adjusted[mb]
            result = difference_ztest(
                yb.mean() - ya.mean(), ya.var(ddof=1) / na + yb.var(ddof=1) / nb, alpha
            )
            test = "z (CUPED)"
        elif m.kind is MetricKind.proportion:
            result = proportion_ztest(y[ma].sum(), na, y[mb].sum(), nb, alpha)
            test = "two-proportion z"
        else:
            result = welch_ttest(
                y[ma].mean(), y[ma].var(ddof=1), na, y[mb].mean(), y[mb].var(ddof=1), nb, alpha
            )
            test = "Welch t"
        seq = _sequential(y, data.variant, a, b)
        base = float(y[ma].mean())
    diff = float(result.diff)
    relative = diff / base if base else float("nan")
    p = float(result.p_value)
    harm = -diff if m.direction == "increase" else diff
    breached = (
        role == "guardrail"
        and harm > 0
        and seq < alpha
        and (not np.isfinite(relative) or abs(relative) > m.tolerance)
    )
    out.update(
        diff=_clean(diff),
        relative=_clean(relative),
        ci_low=_clean(result.ci_low),
        ci_high=_clean(result.ci_high),
        p_value=_clean(p),
        sequential_p_value=_clean(seq),
        test=test,
        significant=bool(p < alpha),
        breached=bool(breached),
    )
    return out


def _holm(comparisons: list[dict[str, Any]], alpha: float) -> None:
    """Holm-adjusted p-values over the treatments of one metric; ``significant`` uses them, so
    testing several treatments against one control keeps the family-wise error at ``alpha``."""
    tested = sorted(
        (c for c in comparisons if c["p_value"] is not None), key=lambda c: c["p_value"]
    )
    k = len(tested)
    running = 0.0
    for rank, c in enumerate(tested):
        running = max(running, min(1.0, (k - rank) * c["p_value"]))
        c["p_value_adjusted"] = running
        c["significant"] = bool(running < alpha)
    for c in comparisons:
        c.setdefault("p_value_adjusted", None)


def _sequential(y: np.ndarray, variant: np.ndarray, a: int, b: int) -> float:
    """The always-valid p-value over looks at every 1% of units (in exposure order)."""
    keep = (variant == a) | (variant == b)
    yy, is_b = y[keep], variant[keep] == b
    n = yy.size
    looks = np.unique(np.linspace(0, n, SEQUENTIAL_LOOKS + 1).astype(int)[1:] - 1)
    ya, yb = np.where(is_b, 0.0, yy), np.where(is_b, yy, 0.0)
    cum = [np.cumsum(v)[looks] for v in (ya, ya**2, ~is_b, yb, yb**2, is_b)]
    p = msprt_from_sums(cum[0], cum[1], cum[2], cum[3], cum[4], cum[5])
    return float(p[-1]) if p.size else 1.0


def build_report(
    store: ExperimentStore,
    info: ExperimentInfo,
    *,
    pre_period_days: float,
    bandit_state: BanditState | None = None,
    policy: PreparedPolicy | None = None,
) -> Report:
    """Analyse ``info`` from its stored exposures and events (a bandit's with its current
    ``bandit_state`` and ``policy``)."""
    spec = info.spec
    data, crossed, seen = _load(store, info, pre_period_days * 86_400.0)
    arms = spec.arms
    control = arms.index(spec.control_arm)
    warnings: list[str] = []
    if crossed:
        warnings.append(
            f"{crossed} of {seen} units saw more than one variant and are left out of the analysis"
        )
    counts = np.bincount(data.variant, minlength=len(arms)) if data.units else np.zeros(len(arms))
    exposures = (
        np.bincount(data.variant, weights=data.exposures, minlength=len(arms))
        if data.units
        else np.zeros(len(arms))
    )
    total = int(counts.sum())
    variants = []
    for i, arm in enumerate(arms):
        variants.append(
            {
                "name": arm,
                "units": int(counts[i]),
                "exposures": int(exposures[i]),
                "expected_share": None if spec.is_bandit else info.shares[arm],
                "observed_share": _clean(counts[i] / total) if total else None,
            }
        )
    srm = None
    if not spec.is_bandit:
        result = srm_test(counts, [info.shares[a] for a in arms])
        srm = {
            "chi2": _clean(result.chi2),
            "p_value": result.p_value,
            "flagged": result.flagged,
            "threshold": 0.001,
        }
        if result.flagged:
            warnings.append(
                "sample ratio mismatch: unit counts do not match the configured weights "
                f"(p={result.p_value:.2g}); do not trust the metrics until the cause is found"
            )
        if info.updated_at > (info.started_at or info.created_at):
            warnings.append("the definition changed after the start; SRM uses the current weights")
    metrics = []
    roles = [
        ("primary" if i == 0 else "secondary", m)
        for i, m in enumerate(spec.all_metrics()[: len(spec.all_metrics()) - len(spec.guardrails)])
    ]
    roles += [("guardrail", m) for m in spec.guardrails]
    for role, m in roles:
        metrics.append(
            _analyse_metric(m, role, data, arms, control, spec.alpha, compare=not spec.is_bandit)
        )
    for metric in metrics:
        for c in metric["comparisons"]:
            if c.get("breached"):
                warnings.append(f"guardrail {metric['name']} breached by {c['variant']}")
    bandit = None
    if spec.bandit is not None:
        if bandit_state is None or policy is None:
            raise AnalysisError(f"bandit {spec.name!r}: the report needs its state and policy")
        state = bandit_state
        propensity: list[float | None]
        if spec.bandit.policy.contextual:
            propensity = [None] * len(arms)
            warnings.append("a contextual bandit's propensities depend on the context")
        else:
            propensity = [float(p) for p in policy.probabilities()]
        rows = []
        for i, arm in enumerate(arms):
            n = float(state.pulls[i])
            mean = state.reward_sum[i] / n if n else float("nan")
            var = (state.reward_sq[i] - n * mean**2) / (n - 1) if n > 1 else float("nan")
            low, high = mean_ci(mean, max(var, 0.0) if np.isfinite(var) else var, n, spec.alpha)
            rows.append(
                {
                    "arm": arm,
                    "pulls": n,
                    "mean": _clean(mean),
                    "ci_low": _clean(low),
                    "ci_high": _clean(high),
                    "propensity": propensity[i],
                }
            )
        bandit = {
            "policy": spec.bandit.policy.value,
            "version": state.version,
            "arms": rows,
            "min_exploration": spec.bandit.min_exploration,
        }
        warnings.append("bandits allocate adaptively: per-arm means are descriptive, not tests")
    return Report(
        experiment=spec.name,
        kind=info.kind,
        status=info.status.value,
        alpha=spec.alpha,
        units=total,
        variants=variants,
        srm=srm,
        metrics=metrics,
        bandit=bandit,
        warnings=warnings,
        generated_at=datetime.now(UTC).isoformat(),
    )


__all__ = ["Report", "analysed_units", "build_report"]
