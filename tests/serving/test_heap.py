"""A server process keeps its loaded models out of the garbage collector's full passes (#14).

A generation-2 collection walks every live object with the event loop stopped (250-570 ms in a
serving process on the 2-core machine, each one a run's p99). The app a server process runs
(``create_server_app``) freezes the heap once its production models are loaded, and again after
each later load; an app embedded in another process (tests, notebooks) leaves that heap alone.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator

import httpx
import pytest

from flywheel.api import create_server_app
from flywheel.project import Project
from flywheel.serving import server_for
from tests.serving.conftest import FakeModel, FakeSource, linear, running_server, serving_app

BODY = {"inputs": [{"name": "input", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}


@pytest.fixture
def unfrozen() -> Iterator[None]:
    """Start and end with nothing frozen (the test process must not keep frozen garbage)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


def _wait_ready(client: httpx.Client, address: str) -> None:
    deadline = time.monotonic() + 30
    while client.get(f"http://{address}/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline, "the server never became ready"
        time.sleep(0.02)


def test_a_server_process_freezes_its_models_once_loaded(
    project: Project, source: FakeSource, unfrozen: None
) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    source.add("m", 2, FakeModel(linear(2.0)))
    app = create_server_app(project, ["serving"])
    server = server_for(project, source)
    assert server.owns_process  # serving.gc_freeze defaults to true
    with running_server(app) as address, httpx.Client(timeout=30) as client:
        _wait_ready(client, address)
        frozen = gc.get_freeze_count()
        assert frozen > 0  # the production version was loaded, then the heap frozen
        r = client.post(f"http://{address}/v2/models/m/infer", json=BODY)
        assert r.status_code == 200
        # A version loaded later (on its first request) is frozen after its load.
        r = client.post(f"http://{address}/v2/models/m/versions/2/infer", json=BODY)
        assert r.status_code == 200 and r.json()["outputs"][0]["data"] == [20.0]
        assert gc.get_freeze_count() > frozen


def test_an_embedded_server_leaves_the_heap_alone(
    project: Project, source: FakeSource, unfrozen: None
) -> None:
    source.add("m", 1, FakeModel(linear(1.0)), stage="production")
    with running_server(serving_app(project, source)) as address, httpx.Client(timeout=30) as c:
        _wait_ready(c, address)
        assert c.post(f"http://{address}/v2/models/m/infer", json=BODY).status_code == 200
        assert gc.get_freeze_count() == 0


def test_gc_freeze_off_in_the_config(project: Project) -> None:
    cfg = project.config
    project.config = cfg.model_copy(
        update={"serving": cfg.serving.model_copy(update={"gc_freeze": False})}
    )
    create_server_app(project, ["serving"])
    assert server_for(project).owns_process is False
