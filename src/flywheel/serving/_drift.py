"""Drift detection: logged inputs and predictions against a reference distribution.

Per feature: numeric columns get the population stability index (PSI, 10 quantile bins of the
reference, 1e-4 floor per bin) and the two-sample Kolmogorov-Smirnov test; categorical columns
(strings, booleans) get a chi-square test of the category counts, with Cramér's V as the effect
size. A feature drifts when ``PSI >= psi_threshold``, or the test is significant
(``p < p_value``) *and* its effect is material (KS statistic or Cramér's V ``>= ks_threshold``):
with thousands of rows a p-value alone flags differences too small to matter.

Each feature also carries a histogram of the reference and the window over the same bins, for
plotting one over the other: numeric columns get ``HISTOGRAM_BINS`` equal-width bins spanning
both samples (from the lower 0.5% quantile of either to the upper 99.5%; values beyond fall in the
end bins), categorical ones the counts of their ``MAX_CATEGORIES`` most frequent categories (the
rest summed as ``(other)``).

The reference is, in this order: a Parquet file/folder given explicitly; the served version's
training dataset, as the registry recorded it (the version's ``config["training_dataset_files"]``,
which training writes at registration); otherwise the predictions logged for the endpoint before
the window.

Like is compared with like: the live side logs what the model received, so the reference goes
through the same transformation first — a version whose inputs fill missing values declares
them in ``config["missing_values"]`` (feature -> the value that stands for missing, e.g. the
recommender's ranker: -1.0, and 1000.0 for ranks) and the reference's missing values are filled
the same way. Missing values that remain (NaN, None) are their own bin on both sides (PSI, the
histograms, a ``(missing)`` category), never dropped from one side only.

A report is cached per (endpoint, window, reference) for ``cache_seconds(window)`` (window / 60,
between 5 s and 5 min) unless a prediction-log file was written meanwhile, and the reference
frame per (model, version): the dashboard's poll every 15 s no longer re-reads the training
dataset and every log file. The cache is the project's own (``DriftCache``, attached to the
``Project``), not a module-level one: two projects in one process share nothing.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.serving._errors import ServingError

log = logging.getLogger("flywheel.serving")
META_COLUMNS = {
    "request_id", "ts", "endpoint", "model", "version", "kind", "latency_ms", "row",
    "shadow_version", "disagreement",
}  # fmt: skip
MIN_ROWS = 30
HISTOGRAM_BINS = 20
MAX_CATEGORIES = 20
OTHER = "(other)"
MISSING_CATEGORY = "(missing)"


@dataclass(frozen=True)
class DriftThresholds:
    psi: float = 0.2
    effect: float = 0.1
    p_value: float = 0.01


@dataclass
class FeatureDrift:
    feature: str
    kind: str  # numeric | categorical
    psi: float | None
    ks_statistic: float | None
    chi2_statistic: float | None
    p_value: float
    effect: float
    drifted: bool
    histogram: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON form; ``histogram`` is ``{"kind": "numeric", "edges": [n + 1], "reference": [n],
        "current": [n]}`` or ``{"kind": "categorical", "categories": [n], "reference": [n],
        "current": [n]}`` (counts; the two samples share the bins)."""
        return {
            k: (None if isinstance(v, float) and not np.isfinite(v) else v)
            for k, v in self.__dict__.items()
        }


@dataclass
class DriftReport:
    endpoint: str
    window: str
    reference: str
    reference_rows: int
    current_rows: int
    features: list[FeatureDrift] = field(default_factory=list)

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def verdict(self) -> str:
        if self.current_rows < MIN_ROWS:
            return "insufficient_data"
        if self.reference_rows < MIN_ROWS:
            return "no_reference"
        return "drift" if self.drifted else "no_drift"

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "window": self.window,
            "reference": self.reference,
            "reference_rows": self.reference_rows,
            "current_rows": self.current_rows,
            "verdict": self.verdict,
            "drifted_features": self.drifted,
            "features": [f.to_dict() for f in self.features],
        }


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (quantile bins of the
    reference's finite values, plus one bin for missing values: NaN on either side)."""
    reference = np.asarray(reference, dtype=np.float64)
    current = np.asarray(current, dtype=np.float64)
    if reference.size == 0 or current.size == 0:
        return 0.0
    ref_ok, cur_ok = np.isfinite(reference), np.isfinite(current)
    ref, cur = reference[ref_ok], current[cur_ok]
    if ref.size:
        edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    else:
        edges = np.empty(0)
    ref_counts = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=edges.size + 1)
    cur_counts = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=edges.size + 1)
    ref_counts = np.append(ref_counts, reference.size - ref.size)  # the missing bin
    cur_counts = np.append(cur_counts, current.size - cur.size)
    p = np.maximum(ref_counts / reference.size, 1e-4)
    q = np.maximum(cur_counts / current.size, 1e-4)
    return float(np.sum((q - p) * np.log(q / p)))


def _is_categorical(values: np.ndarray) -> bool:
    if values.dtype.kind in "USb":
        return True
    if values.dtype.kind != "O":
        return False
    present = [v for v in values[:1000].tolist() if v is not None and v == v]
    return not all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)


def _categories(values: np.ndarray) -> np.ndarray:
    """Strings, with a missing value (None, NaN) as the category ``(missing)``."""
    out = np.asarray(
        [MISSING_CATEGORY if v is None or v != v else str(v) for v in values.tolist()],
        dtype=object,
    )
    return out.astype(str)


def numeric_histogram(
    reference: np.ndarray, current: np.ndarray, bins: int = HISTOGRAM_BINS
) -> dict[str, Any]:
    """Counts of both samples over the same equal-width bins (see the module docstring)."""
    ref = reference[np.isfinite(reference)]
    cur = current[np.isfinite(current)]
    both = [a for a in (ref, cur) if a.size]
    if not both:
        missing = [int(reference.size), int(current.size)]
        return {"kind": "numeric", "edges": [], "reference": [], "current": [], "missing": missing}
    lo = min(float(np.quantile(a, 0.005)) for a in both)
    hi = max(float(np.quantile(a, 0.995)) for a in both)
    if not hi > lo:  # one value (or nearly): a single bin around it
        lo, hi, bins = lo - 0.5, hi + 0.5, 1
    edges = np.linspace(lo, hi, bins + 1)

    def counts(values: np.ndarray) -> list[int]:
        index = np.clip(np.searchsorted(edges, values, side="right") - 1, 0, bins - 1)
        return np.bincount(index, minlength=bins).astype(int).tolist()

    return {
        "kind": "numeric",
        "edges": [float(e) for e in edges],
        "reference": counts(ref),
        "current": counts(cur),
        "missing": [int(reference.size - ref.size), int(current.size - cur.size)],
    }


def categorical_histogram(
    reference: np.ndarray, current: np.ndarray, top: int = MAX_CATEGORIES
) -> dict[str, Any]:
    """Counts per category for both samples: the ``top`` most frequent, the rest as ``(other)``."""
    ref_values, ref_counts = np.unique(reference.astype(str), return_counts=True)
    cur_values, cur_counts = np.unique(current.astype(str), return_counts=True)
    ref_map = dict(zip(ref_values.tolist(), ref_counts.tolist(), strict=True))
    cur_map = dict(zip(cur_values.tolist(), cur_counts.tolist(), strict=True))
    totals = {c: ref_map.get(c, 0) + cur_map.get(c, 0) for c in ref_map.keys() | cur_map.keys()}
    ranked = sorted(totals, key=lambda c: (-totals[c], c))
    kept, rest = sorted(ranked[:top]), ranked[top:]
    categories = list(kept)
    ref_counts_out = [int(ref_map.get(c, 0)) for c in kept]
    cur_counts_out = [int(cur_map.get(c, 0)) for c in kept]
    if rest:
        categories.append(OTHER)
        ref_counts_out.append(int(sum(ref_map.get(c, 0) for c in rest)))
        cur_counts_out.append(int(sum(cur_map.get(c, 0) for c in rest)))
    return {
        "kind": "categorical",
        "categories": categories,
        "reference": ref_counts_out,
        "current": cur_counts_out,
    }


def feature_drift(
    name: str, reference: np.ndarray, current: np.ndarray, thresholds: DriftThresholds
) -> FeatureDrift:
    """Score one feature (see the module docstring for the rules)."""
    from scipy import stats

    if _is_categorical(reference) or _is_categorical(current):
        ref = _categories(reference)
        cur = _categories(current)
        histogram = categorical_histogram(ref, cur)
        cats = sorted(set(ref.tolist()) | set(cur.tolist()))
        table = np.array(
            [[int(np.sum(ref == c)) for c in cats], [int(np.sum(cur == c)) for c in cats]]
        )
        if len(cats) < 2:
            return FeatureDrift(name, "categorical", None, None, 0.0, 1.0, 0.0, False, histogram)
        chi2, p, _, _ = stats.chi2_contingency(table)
        n = table.sum()
        cramers_v = float(np.sqrt(chi2 / (n * (min(table.shape) - 1)))) if n else 0.0
        drifted = bool(p < thresholds.p_value and cramers_v >= thresholds.effect)
        return FeatureDrift(
            name, "categorical", None, None, float(chi2), float(p), cramers_v, drifted, histogram
        )
    ref_all = reference.astype(np.float64)
    cur_all = current.astype(np.float64)
    score = psi(ref_all, cur_all)  # missing values are a bin of their own
    ref, cur = ref_all[np.isfinite(ref_all)], cur_all[np.isfinite(cur_all)]
    if ref.size >= 2 and cur.size >= 2:
        ks = stats.ks_2samp(ref, cur)
        statistic, p_value = float(ks.statistic), float(ks.pvalue)
    else:
        statistic, p_value = 0.0, 1.0
    drifted = bool(
        score >= thresholds.psi or (p_value < thresholds.p_value and statistic >= thresholds.effect)
    )
    histogram = numeric_histogram(ref_all, cur_all)
    return FeatureDrift(
        name, "numeric", score, statistic, None, p_value, statistic, drifted, histogram
    )


def compare(
    reference: Any, current: Any, thresholds: DriftThresholds, *, columns: list[str] | None = None
) -> list[FeatureDrift]:
    """Score every column the two pandas frames share (except logging metadata)."""
    shared = [
        c
        for c in (columns or list(current.columns))
        if c in reference.columns
        and c in current.columns
        and c not in META_COLUMNS
        and not c.startswith("shadow_pred_")
    ]
    results = []
    for col in shared:
        # Missing values stay: they are a bin of their own on both sides.
        ref = _values(reference[col])
        cur = _values(current[col])
        if ref.size < 2 or cur.size < 2:
            continue
        results.append(feature_drift(col, ref, cur, thresholds))
    return results


def _values(series: Any) -> np.ndarray:
    """A column as numpy: numbers as float64 with NaN for missing, anything else as objects."""
    import pandas as pd

    if pd.api.types.is_bool_dtype(series) or not pd.api.types.is_numeric_dtype(series):
        return np.asarray(series.astype(object).where(series.notna(), None).to_numpy())
    return np.asarray(series.to_numpy(dtype=np.float64, na_value=np.nan))


def same_transformation(reference: Any, missing_values: dict[str, Any] | None) -> Any:
    """The reference as the model saw it: each column's missing values filled with the value the
    version declares for it (``config["missing_values"]``), as its live inputs were."""
    if not missing_values:
        return reference
    fills = {c: v for c, v in missing_values.items() if c in reference.columns}
    return reference.fillna(fills) if fills else reference


def parse_window(text: str) -> timedelta:
    """``"30m"``, ``"1h"``, ``"7d"``, ``"90s"`` -> a timedelta."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    text = text.strip()
    try:
        value, unit = float(text[:-1]), text[-1]
        if unit not in units or value <= 0:
            raise ValueError
    except (ValueError, IndexError):
        raise ServingError(f"window {text!r} must look like 90s, 30m, 1h or 7d") from None
    return timedelta(**{units[unit]: value})


def _log_files(folder: Path, endpoint: str) -> list[Path]:
    path = folder / f"endpoint={endpoint}"
    return sorted(p for p in path.glob("*.parquet")) if path.is_dir() else []


def _read_logged(folder: Path, endpoint: str, start: datetime | None, end: datetime | None) -> Any:
    import pandas as pd
    import pyarrow.dataset as ds

    files = _log_files(folder, endpoint)
    if not files:
        return pd.DataFrame()
    table = ds.dataset([str(f) for f in files], format="parquet").to_table()
    frame = table.to_pandas()
    frame = frame[frame["kind"] == "primary"]
    ts = pd.to_datetime(frame["ts"], utc=True)
    if start is not None:
        frame = frame[ts >= start]
        ts = ts[ts >= start]
    if end is not None:
        frame = frame[ts < end]
    return frame


DRIFT_CACHE_KEY = "serving.drift_cache"
MAX_CACHED_REFERENCES = 16
MAX_CACHED_REPORTS = 256


class DriftCache:
    """One project's cached drift work: reference frames per (model, version) and reports per
    (endpoint, window, reference), each checked against the files it was read from.

    It lives on the project (``Project.attached(DRIFT_CACHE_KEY, ...)``), never in a module-level
    registry, so two projects in one process never see each other's entries.
    """

    def __init__(self) -> None:
        self._references: dict[tuple[str, int], tuple[tuple[Any, ...], Any, str]] = {}
        self._reports: dict[tuple[Any, ...], tuple[float, tuple[Any, ...], DriftReport]] = {}
        self._lock = threading.Lock()

    def reference(self, key: tuple[str, int], signature: tuple[Any, ...]) -> tuple[Any, str] | None:
        """The cached (frame, label) for ``key`` if it was read from files of ``signature``."""
        with self._lock:
            hit = self._references.get(key)
        if hit is None or hit[0] != signature:
            return None
        return hit[1], hit[2]

    def keep_reference(
        self, key: tuple[str, int], signature: tuple[Any, ...], frame: Any, label: str
    ) -> None:
        with self._lock:
            if len(self._references) >= MAX_CACHED_REFERENCES:
                self._references.clear()
            self._references[key] = (signature, frame, label)

    def report(self, key: tuple[Any, ...], signature: tuple[Any, ...]) -> DriftReport | None:
        """The cached report for ``key`` if still fresh and no log file changed since."""
        with self._lock:
            hit = self._reports.get(key)
        if hit is None or hit[0] <= time.monotonic() or hit[1] != signature:
            return None
        return hit[2]

    def keep_report(
        self,
        key: tuple[Any, ...],
        signature: tuple[Any, ...],
        report: DriftReport,
        fresh_for: float,
    ) -> None:
        with self._lock:
            if len(self._reports) >= MAX_CACHED_REPORTS:
                self._reports.clear()
            self._reports[key] = (time.monotonic() + fresh_for, signature, report)

    def __len__(self) -> int:
        with self._lock:
            return len(self._references) + len(self._reports)


def drift_cache(project: Any) -> DriftCache:
    """The project's drift cache (created on first use; a bare object gets an unshared one)."""
    attached = getattr(project, "attached", None)
    if attached is None:
        return DriftCache()
    cache: DriftCache = attached(DRIFT_CACHE_KEY, DriftCache)
    return cache


def cache_seconds(window: timedelta) -> float:
    """How long a report stays fresh: window / 60, between 5 s and 5 minutes."""
    return min(300.0, max(5.0, window.total_seconds() / 60))


def _files_signature(files: list[Path]) -> tuple[Any, ...]:
    out = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        out.append((str(f), st.st_size, st.st_mtime_ns))
    return tuple(out)


def _training_reference(
    project: Any, model: str, version: int, source: Any
) -> tuple[Any, str, dict[str, Any] | None] | None:
    """The version's training dataset, as the registry recorded it (no ``features`` import):
    ``config["training_dataset_files"]`` (written by training at registration), transformed
    like the live inputs (``config["missing_values"]``). Cached per version and files."""
    try:
        mv = source.resolve(f"models:/{model}/{version}")
    except Exception:
        return None
    config = dict(getattr(mv, "config", None) or {})
    files = [Path(str(f)) for f in config.get("training_dataset_files") or []]
    if not files:
        return None
    missing = config.get("missing_values")
    missing = missing if isinstance(missing, dict) else None
    name = getattr(mv, "training_dataset", None) or "of the version"
    key = (model, version)
    signature = _files_signature(files)
    cache = drift_cache(project)
    hit = cache.reference(key, signature)
    if hit is not None:
        return hit[0], hit[1], missing
    try:
        import pandas as pd

        frame = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    except Exception as exc:
        log.info(
            "training dataset %s of %s/%s not usable as reference: %s", name, model, version, exc
        )
        return None
    frame = same_transformation(frame, missing)
    label = f"training dataset {name!r}" if name != "of the version" else "training dataset"
    cache.keep_reference(key, signature, frame, label)
    return frame, label, missing


def drift_report(
    project: Any,
    endpoint: str,
    *,
    window: str = "1h",
    reference: str | Path | None = None,
    now: datetime | None = None,
    source: Any = None,
) -> DriftReport:
    """Compare the endpoint's logged predictions in ``window`` with the reference."""
    import pandas as pd

    from flywheel.serving._prediction_log import PREDICTIONS_FOLDER
    from flywheel.serving._runtime import RegistrySource

    cfg = project.config.serving
    thresholds = DriftThresholds(cfg.drift_psi_threshold, cfg.drift_ks_threshold, cfg.drift_p_value)
    folder = project.config.offline_store_path / PREDICTIONS_FOLDER
    span = parse_window(window)
    logged = _log_files(folder, endpoint)
    cache_key = (str(folder), endpoint, window, None if reference is None else str(reference))
    signature = _files_signature(logged)
    cache = drift_cache(project)
    if now is None:
        cached = cache.report(cache_key, signature)
        if cached is not None:
            return cached
    end = now or datetime.now(UTC)
    start = end - span
    current = _read_logged(folder, endpoint, start, end)
    if reference is not None:
        ref_path = Path(reference)
        if not ref_path.exists():
            raise ServingError(f"reference {str(reference)!r} does not exist")
        ref_frame, ref_label = pd.read_parquet(ref_path), f"file {str(reference)!r}"
    else:
        found = None
        if len(current):
            top = current.groupby(["model", "version"]).size().idxmax()
            found = _training_reference(
                project, str(top[0]), int(top[1]), source or RegistrySource(project)
            )
        if found is not None:
            ref_frame, ref_label, _ = found
        else:
            ref_frame = _read_logged(folder, endpoint, None, start)
            ref_label = f"predictions logged before {start.isoformat(timespec='seconds')}"
    report = DriftReport(endpoint, window, ref_label, len(ref_frame), len(current))
    if len(current) and len(ref_frame):
        report.features = compare(ref_frame, current, thresholds)
    if now is None:
        cache.keep_report(cache_key, signature, report, cache_seconds(span))
    return report


def alert(project: Any, report: DriftReport) -> bool:
    """Record a drift alert (event + log) and POST it to ``serving.drift_webhook``; True if sent."""
    from flywheel.serving._endpoints import EndpointStore

    if report.verdict != "drift":
        return False
    payload = report.to_dict()
    log.warning(
        "drift on endpoint %s: %s (reference: %s)",
        report.endpoint,
        ", ".join(report.drifted),
        report.reference,
    )
    EndpointStore(project.db).record_event(report.endpoint, "drift_alert", payload, actor="drift")
    url = project.config.serving.drift_webhook
    if not url:
        return False
    import httpx

    try:
        response = httpx.post(url, json={"event": "flywheel.drift", **payload}, timeout=5.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("drift webhook %s failed: %s", url, exc)
        return False
    return True


__all__ = [
    "DriftCache",
    "DriftReport",
    "DriftThresholds",
    "FeatureDrift",
    "alert",
    "cache_seconds",
    "categorical_histogram",
    "compare",
    "drift_cache",
    "drift_report",
    "feature_drift",
    "numeric_histogram",
    "parse_window",
    "psi",
    "same_transformation",
]
