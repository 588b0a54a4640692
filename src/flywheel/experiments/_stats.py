"""The statistics of experiment analysis, as pure vectorised functions of summary statistics.

Every function broadcasts over numpy arrays, so the same code analyses one experiment in a
report and a thousand simulated experiments in a test. Differences are always ``b - a``
(treatment minus control). References:

* two-proportion z-test (pooled standard error for the test, unpooled for the interval);
* Welch's t-test with the Welch-Satterthwaite degrees of freedom;
* ratio metrics (clicks / impressions) by the delta method over per-unit sums;
* CUPED (Deng, Xu, Kohavi, Walker 2013): ``y - theta (x - mean x)``, ``theta = cov(x, y) / var x``
  pooled over variants, which leaves the difference of means unbiased and divides its variance by
  ``1 / (1 - rho^2)``;
* mSPRT with a normal mixture (Johari, Pekelis, Walsh 2017; Robbins 1970): the likelihood ratio
  ``sqrt(V / (V + tau^2)) exp(d^2 tau^2 / (2 V (V + tau^2)))`` of a difference ``d`` with variance
  ``V``; ``min(1, 1 / Lambda)``, minimised over every look, is an always-valid p-value: the chance
  that it ever falls below alpha under the null is at most alpha, however often one peeks;
* sample-ratio mismatch: Pearson chi-square goodness of fit against the configured weights,
  flagged below ``SRM_THRESHOLD`` (0.001, the usual choice that keeps false alarms rare).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

SRM_THRESHOLD = 0.001
# mSPRT mixing scale: the prior on the true difference is N(0, (MIXTURE_SCALE * sigma)^2), i.e.
# effects of about a tenth of a standard deviation, the size online experiments usually detect.
MIXTURE_SCALE = 0.1

ArrayLike = npt.ArrayLike
Array = npt.NDArray[np.float64]


class Comparison(NamedTuple):
    """``b - a`` with its standard error, a two-sided (1 - alpha) interval and a p-value."""

    diff: Any
    se: Any
    ci_low: Any
    ci_high: Any
    statistic: Any
    p_value: Any


class CupedResult(NamedTuple):
    adjusted: Array
    theta: float
    variance_ratio: float  # var(adjusted) / var(original); 1 - rho^2


class SrmResult(NamedTuple):
    chi2: float
    p_value: float
    flagged: bool
    expected: list[float]


def _z(alpha: float) -> float:
    from scipy.special import ndtri

    return float(ndtri(1.0 - alpha / 2.0))


def _two_sided_normal_p(z: Any) -> Any:
    from scipy.special import ndtr

    return 2.0 * ndtr(-np.abs(z))


def mean_ci(mean: ArrayLike, var: ArrayLike, n: ArrayLike, alpha: float = 0.05) -> tuple[Any, Any]:
    """Normal-approximation interval of a mean from its sample variance and size."""
    m, v, size = np.asarray(mean, float), np.asarray(var, float), np.asarray(n, float)
    half = _z(alpha) * np.sqrt(v / np.maximum(size, 1.0))
    return m - half, m + half


def proportion_ztest(
    x_a: ArrayLike, n_a: ArrayLike, x_b: ArrayLike, n_b: ArrayLike, alpha: float = 0.05
) -> Comparison:
    """Two-proportion z-test of ``x_b / n_b - x_a / n_a``."""
    xa, na, xb, nb = (np.asarray(v, float) for v in (x_a, n_a, x_b, n_b))
    pa, pb = xa / np.maximum(na, 1.0), xb / np.maximum(nb, 1.0)
    diff = pb - pa
    pooled = (xa + xb) / np.maximum(na + nb, 1.0)
    se_test = np.sqrt(pooled * (1 - pooled) * (1 / np.maximum(na, 1.0) + 1 / np.maximum(nb, 1.0)))
    se = np.sqrt(pa * (1 - pa) / np.maximum(na, 1.0) + pb * (1 - pb) / np.maximum(nb, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se_test > 0, diff / se_test, 0.0)
    half = _z(alpha) * se
    return Comparison(diff, se, diff - half, diff + half, z, _two_sided_normal_p(z))


def welch_ttest(
    mean_a: ArrayLike,
    var_a: ArrayLike,
    n_a: ArrayLike,
    mean_b: ArrayLike,
    var_b: ArrayLike,
    n_b: ArrayLike,
    alpha: float = 0.05,
) -> Comparison:
    """Welch's unequal-variance t-test of ``mean_b - mean_a`` (sample variances, ddof=1)."""
    from scipy.special import stdtr, stdtrit

    ma, va, na, mb, vb, nb = (
        np.asarray(v, float) for v in (mean_a, var_a, n_a, mean_b, var_b, n_b)
    )
    qa, qb = va / np.maximum(na, 1.0), vb / np.maximum(nb, 1.0)
    se = np.sqrt(qa + qb)
    diff = mb - ma
    with np.errstate(divide="ignore", invalid="ignore"):
        df = (qa + qb) ** 2 / (qa**2 / np.maximum(na - 1, 1.0) + qb**2 / np.maximum(nb - 1, 1.0))
        df = np.where(np.isfinite(df) & (df > 0), df, 1.0)
        t = np.where(se > 0, diff / se, 0.0)
    p = 2.0 * stdtr(df, -np.abs(t))
    half = stdtrit(df, 1.0 - alpha / 2.0) * se
    return Comparison(diff, se, diff - half, diff + half, t, p)


def difference_ztest(diff: ArrayLike, var_diff: ArrayLike, alpha: float = 0.05) -> Comparison:
    """A z-test of a difference whose variance is known (delta method, CUPED-adjusted means)."""
    d, v = np.asarray(diff, float), np.asarray(var_diff, float)
    se = np.sqrt(np.maximum(v, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, d / se, 0.0)
    half = _z(alpha) * se
    return Comparison(d, se, d - half, d + half, z, _two_sided_normal_p(z))


def ratio_delta(numerator: ArrayLike, denominator: ArrayLike) -> tuple[float, float]:
    """The ratio ``sum(num) / sum(den)`` over units and the delta-method variance of it."""
    x, y = np.asarray(numerator, float), np.asarray(denominator, float)
    n = x.size
    if n < 2 or y.sum() <= 0:
        return float("nan"), float("nan")
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(ddof=1), y.var(ddof=1)
    cxy = np.cov(x, y, ddof=1)[0, 1]
    ratio = mx / my
    var = (vx / my**2 - 2 * mx * cxy / my**3 + mx**2 * vy / my**4) / n
    return float(ratio), float(max(var, 0.0))


def cuped(y: ArrayLike, x: ArrayLike) -> CupedResult:
    """CUPED-adjust outcomes ``y`` with the pre-period covariate ``x`` (same units, all variants).

    Returns the adjusted outcomes (same mean as ``y``), ``theta`` and the variance ratio
    ``var(adjusted) / var(y)``; with a constant covariate nothing changes (ratio 1).
    """
    yy, xx = np.asarray(y, float), np.asarray(x, float)
    if yy.size < 3 or np.var(xx) == 0 or np.var(yy) == 0:
        return CupedResult(yy.copy(), 0.0, 1.0)
    theta = float(np.cov(xx, yy, ddof=1)[0, 1] / np.var(xx, ddof=1))
    adjusted = yy - theta * (xx - xx.mean())
    return CupedResult(adjusted, theta, float(np.var(adjusted) / np.var(yy)))


def msprt_pvalue(diff: ArrayLike, var_diff: ArrayLike, tau2: ArrayLike) -> Any:
    """``min(1, 1 / Lambda)`` of the normal-mixture SPRT at one look (vectorised).

    Args:
        diff: the observed difference of means.
        var_diff: its variance (``var_a / n_a + var_b / n_b``).
        tau2: the mixing variance (see ``MIXTURE_SCALE``).
    """
    d, v, t2 = (np.asarray(a, float) for a in (diff, var_diff, tau2))
    with np.errstate(all="ignore"):
        log_lambda = 0.5 * np.log(v / (v + t2)) + d**2 * t2 / (2.0 * v * (v + t2))
        # A degenerate look (no variance at all) carries no evidence.
        log_lambda = np.where(np.isnan(log_lambda), 0.0, log_lambda)
        return np.minimum(1.0, np.exp(-log_lambda))


def always_valid_pvalues(diff: ArrayLike, var_diff: ArrayLike, tau2: ArrayLike) -> Any:
    """Always-valid p-values along the last axis (one entry per look): the running minimum."""
    return np.minimum.accumulate(msprt_pvalue(diff, var_diff, tau2), axis=-1)


def srm_test(
    observed: ArrayLike, weights: ArrayLike, threshold: float = SRM_THRESHOLD
) -> SrmResult:
    """Chi-square test that unit counts per variant match the configured weights."""
    from scipy.special import chdtrc

    obs = np.asarray(observed, float)
    w = np.asarray(weights, float)
    keep = w > 0
    total = obs.sum()
    expected = np.where(keep, w / w[keep].sum() * total, 0.0)
    if np.any(obs[~keep] > 0):  # units in a variant that should get none
        return SrmResult(float("inf"), 0.0, True, expected.tolist())
    if total <= 0 or keep.sum() < 2:
        return SrmResult(0.0, 1.0, False, expected.tolist())
    chi2 = float(((obs[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    p = float(chdtrc(keep.sum() - 1, chi2))
    return SrmResult(chi2, p, p < threshold, expected.tolist())


__all__ = [
    "MIXTURE_SCALE",
    "SRM_THRESHOLD",
    "Comparison",
    "CupedResult",
    "SrmResult",
    "always_valid_pvalues",
    "cuped",
    "difference_ztest",
    "mean_ci",
    "msprt_from_sums",
    "msprt_pvalue",
    "proportion_ztest",
    "ratio_delta",
    "srm_test",
    "welch_ttest",
]


def msprt_from_sums(
    sum_a: ArrayLike,
    sumsq_a: ArrayLike,
    n_a: ArrayLike,
    sum_b: ArrayLike,
    sumsq_b: ArrayLike,
    n_b: ArrayLike,
    mixture_scale: float = MIXTURE_SCALE,
) -> Any:
    """Always-valid p-values of ``mean_b - mean_a`` at a sequence of looks (last axis).

    Takes running sums, sums of squares and counts at each look; looks where a group has fewer
    than two units give 1. The mixing variance is ``(mixture_scale * pooled sd)^2`` at each look.
    """
    sa_, qa, na = (np.asarray(v, float) for v in (sum_a, sumsq_a, n_a))
    sb, qb, nb = (np.asarray(v, float) for v in (sum_b, sumsq_b, n_b))
    ok = (na >= 2) & (nb >= 2)
    na_, nb_ = np.maximum(na, 2.0), np.maximum(nb, 2.0)
    ma, mb = sa_ / na_, sb / nb_
    va = np.maximum(qa - na_ * ma**2, 0.0) / (na_ - 1)
    vb = np.maximum(qb - nb_ * mb**2, 0.0) / (nb_ - 1)
    var_diff = va / na_ + vb / nb_
    tau2 = mixture_scale**2 * (va + vb) / 2.0
    p = np.where(ok & (var_diff > 0), msprt_pvalue(mb - ma, var_diff, tau2), 1.0)
    return np.minimum.accumulate(p, axis=-1)
