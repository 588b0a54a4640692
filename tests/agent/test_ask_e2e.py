"""`flywheel ask` end to end: CLI -> POST /agent/ask -> scripted model behind /v1 -> tools ->
the same API, on a live server with auth required, traced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flywheel.agent import ChurnSeed, register_scripted_model
from flywheel.api import create_app
from flywheel.auth import TokenStore
from flywheel.project import Project
from flywheel.registry import Registry
from flywheel.telemetry import (
    TraceStore,
    TracingSettings,
    active_tracing,
    build_query,
    configure_tracing,
)
from tests.agent.conftest import AGENT_SYSTEMS
from tests.agent.test_agent import QUESTION
from tests.telemetry.conftest import running_server


@pytest.fixture(scope="module")
def live(seeded: tuple[Project, ChurnSeed]) -> Iterator[tuple[str, Project, ChurnSeed]]:
    project, seed = seeded
    register_scripted_model(project, project.config.agent.model)
    app = create_app(project, systems=[*AGENT_SYSTEMS, "serving", "llm"])
    with running_server(app) as url:
        yield url, project, seed


def _ask(url: str, token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_TOKEN"}
    if token:
        env["FLYWHEEL_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "flywheel.cli", "ask", *args, "--url", url],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def test_flywheel_ask_churn_question_end_to_end(live: tuple[str, Project, ChurnSeed]) -> None:
    url, project, seed = live
    # The server's tracing, as `flywheel up` configures it (the autouse fixture reset it).
    tracing = configure_tracing(TracingSettings.from_config(project.config.telemetry), project.db)
    reader = TokenStore(project.db).create("reader", "asker")[1]
    registry = Registry(project)
    before = (registry.stage_version("churn", "production"), len(registry.audit_log()))
    out = _ask(url, reader, QUESTION, "--json")
    assert out.returncode == 0, out.stderr
    answer: dict[str, Any] = json.loads(out.stdout)
    text = answer["answer"]
    assert answer["scripted"] is True and answer["model"]
    assert f"churn version {seed.production_version} is in production" in text
    assert f"AUC {seed.production_auc}" in text
    assert all(f in text for f in seed.features)
    # No write endpoint was called (the tools' own log, and the registry state).
    assert answer["api_calls"] and {c["method"] for c in answer["api_calls"]} == {"GET"}
    assert (registry.stage_version("churn", "production"), len(registry.audit_log())) == before
    # Its trace: invoke_agent -> chat / execute_tool spans with GenAI attributes.
    assert tracing is not None and tracing is active_tracing() and tracing.flush()
    _summary, spans = TraceStore(project.db).get_trace(answer["trace_id"])
    by_op: dict[str, list[Any]] = {}
    for s in spans:
        by_op.setdefault(s.attributes.get("gen_ai.operation.name", ""), []).append(s)
    (root,) = by_op["invoke_agent"]
    assert root.parent_span_id is None
    clients = [s for s in by_op["chat"] if s.kind == 3]
    assert len(clients) == 4 and all(s.parent_span_id == root.span_id for s in clients)
    assert all(s.attributes["gen_ai.usage.input_tokens"] > 0 for s in clients)
    tools = by_op["execute_tool"]
    assert [s.attributes["gen_ai.tool.name"] for s in tools] == [
        "resolve_model",
        "get_run",
        "describe_feature_object",
    ]
    # The human-readable form says it is a scripted model.
    plain = _ask(url, reader, QUESTION)
    assert plain.returncode == 0, plain.stderr
    assert "scripted model, not an LLM" in plain.stdout
    assert f"AUC {seed.production_auc}" in plain.stdout


def test_ask_without_a_token_is_refused_and_reveals_nothing(
    live: tuple[str, Project, ChurnSeed],
) -> None:
    url, _project, seed = live
    out = _ask(url, None, QUESTION)
    assert out.returncode == 1
    assert out.stderr.startswith("error: server answered 401")
    assert str(seed.production_auc) not in out.stdout + out.stderr


def test_http_ask_streams_events_and_write_needs_confirmation(
    live: tuple[str, Project, ChurnSeed],
) -> None:
    url, project, seed = live
    store = TokenStore(project.db)
    reader, writer = store.create("reader", "r")[1], store.create("writer", "w")[1]
    ask = f"Please promote churn version {seed.staging_version} to production"
    registry = Registry(project)
    for token, allow in ((writer, False), (reader, True)):
        r = httpx.post(
            f"{url}/agent/ask",
            json={"question": ask, "allow_writes": allow},
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        events = [json.loads(line) for line in r.text.splitlines()]
        assert events[0]["type"] == "step" and events[-1]["type"] == "answer"
        assert "not available" in events[-1]["answer"]
    assert registry.stage_version("churn", "production") == seed.production_version
    r = httpx.post(
        f"{url}/agent/ask",
        json={"question": ask, "allow_writes": True},
        headers={"Authorization": f"Bearer {writer}"},
        timeout=120,
    )
    answer = [json.loads(line) for line in r.text.splitlines()][-1]
    (action,) = answer["pending_actions"]
    assert registry.stage_version("churn", "production") == seed.production_version
    denied = httpx.post(
        f"{url}/agent/actions", json=action, headers={"Authorization": f"Bearer {reader}"}
    )
    assert denied.status_code == 403
    done = httpx.post(
        f"{url}/agent/actions", json=action, headers={"Authorization": f"Bearer {writer}"}
    )
    assert done.status_code == 200, done.text
    assert registry.stage_version("churn", "production") == seed.staging_version
    registry.set_stage("churn", seed.production_version, "production", reason="reset")


def test_each_model_inference_is_a_span(live: tuple[str, Project, ChurnSeed]) -> None:
    url, project, seed = live
    tracing = configure_tracing(
        TracingSettings(sample_rate=1.0, synchronous=True, service_name="serving"), project.db
    )
    reader = TokenStore(project.db).create("reader", "infer")[1]
    body = {"inputs": [{"name": "input", "shape": [2, 3], "datatype": "FP64",
                        "data": [10, 2, 0, 300, 5, 4]}]}  # fmt: skip
    r = httpx.post(
        f"{url}/v2/models/churn/infer", json=body, headers={"Authorization": f"Bearer {reader}"}
    )
    assert r.status_code == 200, r.text
    assert tracing is not None
    tracing.shutdown()
    found = TraceStore(project.db).search(build_query(name="predict churn", service="serving"))
    assert len(found) == 1
    _summary, spans = TraceStore(project.db).get_trace(found[0].trace_id)
    (predict,) = [s for s in spans if s.name == "predict churn"]
    assert predict.attributes["flywheel.model.version"] == seed.production_version
    assert predict.attributes["flywheel.rows"] == 2
    assert predict.attributes["flywheel.model.flavor"] == "sklearn"
