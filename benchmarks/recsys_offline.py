"""Offline recommendation quality on protocol OR-T1 (UCI Online Retail), in one run.

Run with ``make bench-recsys`` (or ``.venv/bin/python benchmarks/recsys_offline.py``).

Prints:

1. the OR-T1 table of ``flywheel recs evaluate`` — each candidate generator alone, their union,
   the hybrid blend and the baselines, both views, every hyper-parameter chosen on validation;
2. the reproduction check: our baselines with BASELINES.md's exact settings (MostPop,
   RepeatFreq, ItemKNN, EASE λ=500, iALS f=64) next to the reference figures published in
   BASELINES.md (the "peer"), with the difference;
3. how far the hybrid is from the issue's target (best baseline + 5 % relative, both views);
4. the synthetic generator's speed at scale (``RECSYS_BENCH_SCALE`` users = items, default
   1,000,000; 0 skips it).

Options (environment): ``RECSYS_BENCH_DATA`` (file or folder; default as the CLI),
``RECSYS_BENCH_TEXT`` (auto | minilm | tfidf; default auto), ``RECSYS_BENCH_TWO_TOWER`` (1:
add the two-tower generator, trained in-process, ~5 min more; default 1).
Data attribution: Chen, D. (2015). Online Retail [Dataset]. UCI Machine Learning Repository.
https://doi.org/10.24432/C5BW33 (CC BY 4.0).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import time
from importlib import metadata

from flywheel.recsys import (
    EASE,
    IALS,
    VIEWS,
    ItemKNN,
    MostPopular,
    Recommender,
    RepeatFrequency,
    SyntheticConfig,
    build_split,
    clean_transactions,
    evaluate_offline,
    evaluate_view,
    generate_transactions,
    load_transactions,
)
from flywheel.recsys._data import default_cache_root

# BASELINES.md (numpy 2.4.6, scipy 1.17.1, implicit 0.7.3): R, N, HR @20 for all, new-only.
REFERENCE = {
    "MostPop": (0.0607, 0.0876, 0.6385, 0.0373, 0.0397, 0.3675),
    "RepeatFreq": (0.2559, 0.3351, 0.9075, 0.0373, 0.0397, 0.3675),
    "ItemKNN-cosine": (0.1273, 0.1744, 0.7188, 0.0709, 0.0716, 0.4654),
    "EASE λ=500": (0.1950, 0.2595, 0.8343, 0.1062, 0.1048, 0.6076),
    "iALS f=64": (0.2098, 0.2766, 0.8601, 0.0935, 0.0960, 0.5750),
}
TARGET = 1.05  # the full pipeline must beat the best baseline by >= 5 % relative


def _versions() -> str:
    names = ("numpy", "scipy", "pandas", "implicit", "scikit-learn", "sentence-transformers")
    return ", ".join(f"{n} {metadata.version(n)}" for n in names)


def _machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def main() -> int:
    data = os.environ.get("RECSYS_BENCH_DATA") or None
    text = os.environ.get("RECSYS_BENCH_TEXT", "auto")
    scale = int(os.environ.get("RECSYS_BENCH_SCALE", "1000000"))
    two_tower = os.environ.get("RECSYS_BENCH_TWO_TOWER", "1") == "1"
    print(f"# recsys offline benchmark — {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine: {_machine()}; {_versions()}")
    loaded = load_transactions(data)
    print(f"data: {loaded.source.description}")
    lines = clean_transactions(loaded.frame)

    t0 = time.perf_counter()
    report = evaluate_offline(
        lines,
        source=loaded.source,
        text_method=text,  # type: ignore[arg-type]
        cache_dir=default_cache_root() / "embeddings",
        two_tower=two_tower,
        progress=lambda m: print(f"  [{time.perf_counter() - t0:6.1f} s] {m}", flush=True),
    )
    s = report.stats
    print()
    print(
        f"## OR-T1 (train < {report.train_end}, test < {report.test_end}; validation "
        f"{report.validation['train_end']} -> {report.validation['test_end']}; "
        f"{s['train_users']:,} users x {s['train_items']:,} items, {s['test_users']:,} test "
        f"users; text embeddings: {report.text_method}; {report.seconds:.0f} s)"
    )
    print()
    print(report.format_table())
    print()
    print(report.format_notes())

    if loaded.source.is_real:
        print()
        print("## Reproduction of BASELINES.md (same settings; reference = published figures)")
        print()
        split = build_split(lines)
        models: list[Recommender] = [
            MostPopular(),
            RepeatFrequency(),
            ItemKNN(),
            EASE(500),
            IALS(),
        ]
        print("| model | metric | ours | BASELINES.md | ratio |")
        print("|---|---|---|---|---|")
        worst = 0.0
        for model in models:
            model.fit(split.train)
            got: list[float] = []
            for view in VIEWS:
                m = evaluate_view(model.score, split, view)
                got += [m.recall, m.ndcg, m.hit_rate]
            ref = REFERENCE[model.name]
            labels = [f"{x}@20 {v}" for v in VIEWS for x in ("R", "N", "HR")]
            for label, ours, theirs in zip(labels, got, ref, strict=True):
                worst = max(worst, abs(ours - theirs))
                print(
                    f"| {model.name} | {label} | {ours:.4f} | {theirs:.4f} | {ours / theirs:.3f} |"
                )
        print(f"\nlargest absolute difference: {worst:.4f}")

    print()
    print("## The pipelines vs the target (best baseline x 1.05, both views)")
    print()
    print("| pipeline | view | best baseline | R@20 target | R@20 | N@20 target | N@20 |")
    print("|---|---|---|---|---|---|---|")
    for name in ("ranked (LightGBM)", "hybrid"):
        try:
            row = report.row(name)
        except KeyError:
            continue
        if not row.metrics:
            continue
        for view in VIEWS:
            best_r = max(
                (r for r in report.rows if r.kind == "baseline" and view in r.metrics),
                key=lambda r: r.metrics[view].recall,
            )
            best_n = report.best_baseline(view)
            h = row.metrics[view]
            tr, tn = best_r.metrics[view].recall * TARGET, best_n.metrics[view].ndcg * TARGET
            print(
                f"| {name} | {view} | {best_n.name} | {tr:.4f} | {h.recall:.4f} "
                f"({h.recall / tr:.1%}) | {tn:.4f} | {h.ndcg:.4f} ({h.ndcg / tn:.1%}) |"
            )

    if scale > 0:
        print()
        print(f"## Synthetic generator at scale ({scale:,} users x {scale:,} items)")
        cfg = SyntheticConfig(n_users=scale, n_items=scale, invoices_per_user=2, basket_size=5)
        t1 = time.perf_counter()
        frame = generate_transactions(cfg)
        took = time.perf_counter() - t1
        mem = frame.memory_usage(deep=True).sum() / 2**20
        print(
            f"\n{len(frame):,} invoice lines, {frame['CustomerID'].nunique():,} users, "
            f"{frame['StockCode'].nunique():,} distinct items in {took:.1f} s "
            f"({len(frame) / took / 1e6:.2f} M lines/s), {mem:,.0f} MiB"
        )
        del frame
    return 0


if __name__ == "__main__":
    sys.exit(main())
