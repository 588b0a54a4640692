"""HTTP routes of the feature store."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from fastapi.testclient import TestClient

from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.features import FeatureService, FeatureStore
from flywheel.project import Project
from tests.features.conftest import (
    T0,
    click_aggs_view,
    user_entity,
    user_stats_view,
    write_user_stats,
)


def test_online_push_catalog_materialize_over_http(project: Project) -> None:
    write_user_stats(project.root, n_users=5, rows=50)
    store = FeatureStore(project)
    fv = user_stats_view(ttl=None)
    store.apply([user_entity(), fv, click_aggs_view(), FeatureService("svc", [fv])])
    _, token = TokenStore(project.db).create("writer", "t")
    auth = {"Authorization": f"Bearer {token}"}
    with TestClient(create_app(project, systems=["features"])) as client:
        r = client.post(
            "/features/materialize",
            json={
                "start": (T0 - timedelta(days=1)).isoformat(),
                "end": (T0 + timedelta(days=30)).isoformat(),
            },
            headers=auth,
        )
        assert r.status_code == 200, r.text
        assert "rows/s" in r.json()["summary"]
        r = client.post(
            "/features/online",
            json={
                "features": ["user_stats:clicks", "user_stats:country"],
                "entities": {"user_id": [0, 1, 77]},
            },
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["entities"] == {"user_id": [0, 1, 77]}
        assert body["features"] == ["clicks", "country"]
        assert body["status"]["clicks"] == ["present", "present", "missing"]
        assert body["values"]["clicks"][2] is None
        assert isinstance(body["event_time_us"]["clicks"][0], int)
        r = client.post(
            "/features/online", json={"feature_service": "svc", "entities": {"user_id": [0]}}
        )
        assert r.json()["features"] == ["clicks", "spend", "country"]

        now = datetime.now(UTC).isoformat()
        rows = [{"user_id": 1, "item_id": 2, "amount": 1.0, "ts": now}, {"user_id": "x", "ts": now}]
        r = client.post("/features/push/clicks", json={"rows": rows}, headers=auth)
        assert r.status_code == 422
        assert "row 1" in r.json()["error"] and "'user_id'" in r.json()["error"]
        assert client.post("/features/push/clicks", json={"rows": rows[:1]}).status_code == 401
        r = client.post("/features/push/clicks", json={"rows": rows[:1]}, headers=auth)
        assert r.status_code == 200 and r.json()["count"] == 1
        # The in-process stream service (as in `flywheel up`) applies it.
        for _ in range(200):
            r = client.post(
                "/features/online",
                json={"features": ["click_aggs:item_id_count_1h"], "entities": {"user_id": [1]}},
            )
            if r.json()["values"]["item_id_count_1h"] == [1]:
                break
            time.sleep(0.05)
        assert r.json()["values"]["item_id_count_1h"] == [1]
        # Acknowledged right after the write (and the archive): the lag drops to 0.
        for _ in range(100):
            if client.get("/features/streams/clicks/lag").json()["lag"] == 0:
                break
            time.sleep(0.02)
        assert client.get("/features/streams/clicks/lag").json()["lag"] == 0

        cat = client.get("/features/catalog").json()["objects"]
        assert {o["name"] for o in cat} >= {"user", "user_stats", "click_aggs", "clicks", "svc"}
        pages = [
            client.get("/features/catalog", params={"limit": 2, "offset": o}).json()
            for o in range(0, len(cat), 2)
        ]
        assert [o for p in pages for o in p["objects"]] == cat  # the same entries, in pages
        assert {len(p["objects"]) for p in pages[:-1]} == {2}
        assert {p["total"] for p in pages} == {len(cat)}
        bad = client.get("/features/catalog", params={"offset": -2})
        assert bad.status_code == 422 and "offset" in bad.json()["error"]
        d = client.get("/features/catalog/user_stats").json()
        assert d["versions"][0]["freshness"]["rows"] == 5
        assert client.get("/features/catalog/nope").status_code == 404
        r = client.post(
            "/features/online", json={"features": ["nope:x"], "entities": {"user_id": [1]}}
        )
        assert r.status_code == 404
        metrics = client.get("/metrics").text
        assert "flywheel_features_online_seconds" in metrics
        assert "flywheel_features_stream_events_total" in metrics


def test_materialize_refuses_numbers_where_date_times_are_declared(project: Project) -> None:
    _, token = TokenStore(project.db).create("writer", "t")
    auth = {"Authorization": f"Bearer {token}"}
    client = TestClient(create_app(project, systems=["features"]))
    for body, url in (
        ({"start": 0, "end": "2000-01-01T00:00:00Z"}, "/features/materialize"),
        ({"start": "0", "end": "2000-01-01T00:00:00Z"}, "/features/materialize"),
        ({"end": 0}, "/features/materialize-incremental"),
        ({"end": 1.5e9}, "/features/materialize-incremental"),
    ):
        r = client.post(url, json=body, headers=auth)
        assert r.status_code == 422, (body, r.text)
        assert "date-time" in r.json()["error"]
