"""Write data/user_stats.parquet (10 days of daily stats for 1,000 users, seeded) and
clicks.json (three clicks from the last few minutes, to push to the `clicks` stream)."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

rng = np.random.default_rng(0)
days = [datetime(2026, 11, 16, tzinfo=UTC) + timedelta(days=d) for d in range(10)]
rows = []
for day in days:
    for user_id in range(1000):
        if rng.random() < 0.7:
            rows.append(
                {
                    "user_id": user_id,
                    "event_timestamp": day,
                    "orders_7d": int(rng.poisson(2)),
                    "spend_7d": float(np.round(rng.gamma(2.0, 30.0), 2)),
                    "country": str(rng.choice(["de", "fr", "nl"])),
                    "taste": rng.normal(size=4).astype("float32").tolist(),
                }
            )
out = Path(__file__).parent / "data" / "user_stats.parquet"
out.parent.mkdir(exist_ok=True)
pd.DataFrame(rows).to_parquet(out, index=False)
print(f"wrote {len(rows):,} rows to {out}")

now = datetime.now(UTC).replace(microsecond=0)
clicks = [
    {
        "click_id": "c1",
        "user_id": 7,
        "item_id": 101,
        "price": 19.9,
        "ts": now - timedelta(minutes=6),
    },
    {
        "click_id": "c2",
        "user_id": 7,
        "item_id": 102,
        "price": 5.0,
        "ts": now - timedelta(minutes=1),
    },
    {"click_id": "c3", "user_id": 8, "item_id": 101, "price": 19.9, "ts": now},
]
(Path(__file__).parent / "clicks.json").write_text(json.dumps(clicks, default=str, indent=1))
print("wrote clicks.json")
