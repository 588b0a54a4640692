"""Rolling-origin evaluation: the OR-T1 procedure repeated at several cut-offs.

Each cut-off ``c`` trains on lines before ``c`` and tests on ``[c, c + test_months)``. The
procedure is fixed and re-run whole at every cut-off: ``evaluate_offline`` carves its own
validation window from before ``c`` and chooses every hyper-parameter, blend weight and ranker
iteration there; nothing is chosen by looking at a test month. The report gives each cut-off's
table and the mean over cut-offs, both views.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from flywheel.recsys._evaluate import EvaluationReport, evaluate_offline
from flywheel.recsys._metrics import VIEWS, View
from flywheel.recsys._text import TextMethod

# Issue #13's example cut-offs: the last three full months of Online Retail before its end
# (2011-12-09), each followed by one month of test.
ROLLING_CUTOFFS: tuple[str, ...] = ("2011-09-09", "2011-10-09", "2011-11-09")
METRICS = ("recall", "ndcg")


@dataclass
class RollingReport:
    """Per cut-off ``EvaluationReport``s and their means (model -> view -> metric -> mean)."""

    cutoffs: list[str]
    reports: list[EvaluationReport] = field(default_factory=list)

    def names(self) -> list[str]:
        """Models present at every cut-off, in the first report's order."""
        if not self.reports:
            return []
        common = set.intersection(*({r.name for r in rep.rows} for rep in self.reports))
        return [r.name for r in self.reports[0].rows if r.name in common]

    def kind(self, name: str) -> str:
        return self.reports[0].row(name).kind

    def value(self, index: int, name: str, view: View, metric: str) -> float:
        m = self.reports[index].row(name).metrics.get(view)
        return float("nan") if m is None else float(getattr(m, metric))

    def mean(self, name: str, view: View, metric: str) -> float:
        vals = [self.value(i, name, view, metric) for i in range(len(self.reports))]
        return sum(vals) / len(vals)

    def best_baseline(self, view: View, metric: str, index: int | None = None) -> str:
        """The baseline with the best ``metric`` at cut-off ``index`` (None: on the mean)."""
        names = [n for n in self.names() if self.kind(n) == "baseline"]

        def key(n: str) -> float:
            return (
                self.mean(n, view, metric) if index is None else self.value(index, n, view, metric)
            )

        return max(names, key=key)

    def format_table(self, headline: str) -> str:
        """A markdown table: one row per model, R@20 / N@20 per cut-off and the mean, per view;
        ``headline`` first, then a row per view naming the best baseline and the margin."""
        names = self.names()
        order = [headline] + [n for n in names if n != headline] if headline in names else names
        cols = [f"{c}" for c in self.cutoffs] + ["mean"]
        head = "| model | kind | view | " + " | ".join(f"R@20 {c} | N@20 {c}" for c in cols) + " |"
        lines = [head, "|" + "---|" * (3 + 2 * len(cols))]
        for view in VIEWS:
            for n in order:
                cells = []
                for i in range(len(self.cutoffs)):
                    cells += [f"{self.value(i, n, view, m):.4f}" for m in METRICS]
                cells += [f"{self.mean(n, view, m):.4f}" for m in METRICS]
                bold = "**" if n == headline else ""
                lines.append(
                    f"| {bold}{n}{bold} | {self.kind(n)} | {view} | " + " | ".join(cells) + " |"
                )
        return "\n".join(lines)

    def verdict(self, headline: str) -> list[str]:
        """One line per view and metric: the headline against the best baseline, per cut-off
        and on the mean (relative margin), and whether issue #13's target holds."""
        out: list[str] = []
        for view in VIEWS:
            for m in METRICS:
                parts, every = [], True
                for i, c in enumerate(self.cutoffs):
                    b = self.best_baseline(view, m, i)
                    ours, theirs = self.value(i, headline, view, m), self.value(i, b, view, m)
                    every &= ours > theirs
                    parts.append(f"{c}: {ours:.4f} vs {b} {theirs:.4f} ({ours / theirs - 1:+.1%})")
                b = self.best_baseline(view, m)
                ours, theirs = self.mean(headline, view, m), self.mean(b, view, m)
                gain = ours / theirs - 1
                holds = every and gain >= 0.05
                out.append(
                    f"{headline} {view} {m}@20: " + "; ".join(parts) + f"; mean {ours:.4f} vs "
                    f"{b} {theirs:.4f} ({gain:+.1%}) -> target (every cut-off, mean >= +5%) "
                    + ("holds" if holds else "NOT met")
                )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "cutoffs": self.cutoffs,
            "reports": [r.to_dict() for r in self.reports],
            "mean": {
                n: {v: {m: self.mean(n, v, m) for m in METRICS} for v in VIEWS}
                for n in self.names()
            },
        }


def evaluate_rolling(
    lines: pd.DataFrame,
    cutoffs: Sequence[str] = ROLLING_CUTOFFS,
    *,
    test_months: int = 1,
    text_method: TextMethod = "auto",
    cache_dir: str | Path | None = None,
    ials: bool = True,
    ranker: bool = True,
    two_tower: bool = False,
    progress: Callable[[str], None] | None = None,
    **kwargs: Any,
) -> RollingReport:
    """``evaluate_offline`` at each cut-off (test: the following ``test_months``)."""
    if len(cutoffs) < 1:
        raise ValueError("cutoffs: at least one cut-off is needed")
    say = progress or (lambda _m: None)
    report = RollingReport([str(pd.Timestamp(c).date()) for c in cutoffs])
    for c in report.cutoffs:
        end = pd.Timestamp(c) + pd.DateOffset(months=test_months)
        report.reports.append(
            evaluate_offline(
                lines,
                train_end=c,
                test_end=end,
                text_method=text_method,
                cache_dir=cache_dir,
                ials=ials,
                ranker=ranker,
                two_tower=two_tower,
                progress=lambda m, c=c: say(f"{c}: {m}"),  # type: ignore[misc]
                **kwargs,
            )
        )
    return report
