"""The agent loop over the real API (in-process) with the scripted chat policy."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from flywheel.agent import (
    DEFAULT_RULES,
    Agent,
    ApiCaller,
    ChatTurn,
    ChurnSeed,
    PolicyChatModel,
    ToolCallRequest,
    build_agent,
    run_action,
    run_blocking,
    select_tools,
)
from flywheel.api import create_app
from flywheel.auth import Principal, Role, TokenStore
from flywheel.config import AgentConfig
from flywheel.project import Project
from flywheel.registry import Registry
from flywheel.serving.llm import ScriptedChatPolicy
from flywheel.telemetry import TraceStore, TracingSettings, configure_tracing
from tests.agent.conftest import AGENT_SYSTEMS

QUESTION = (
    "Which version of churn is in production, what was its AUC, and which features does it use?"
)


def _api(project: Project, token: str | None) -> ApiCaller:
    app = create_app(project, systems=AGENT_SYSTEMS)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    client = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 5000)),
        base_url="http://t",
        headers=headers,
    )
    return ApiCaller(client)


def _ask(agent: Agent, question: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        events = [e async for e in agent.run(question)]
        await agent.api.client.aclose()
        return events

    events = run_blocking(go())
    assert events[-1]["type"] == "answer"
    return events, events[-1]


def _agent(project: Project, token: str | None, role: Role, *, allow_writes: bool = False) -> Agent:
    chat = PolicyChatModel(ScriptedChatPolicy(DEFAULT_RULES), "flywheel-ops")
    principal = Principal("t", "t", role)
    return build_agent(
        chat,
        _api(project, token),
        principal,
        AgentConfig(),
        allow_writes=allow_writes,
        scripted=True,
    )


def _state(project: Project) -> tuple[int, int]:
    registry = Registry(project)
    return registry.stage_version("churn", "production"), len(registry.audit_log("churn"))


def test_churn_question_answers_with_seeded_facts_traced_and_read_only(
    seeded: tuple[Project, ChurnSeed],
) -> None:
    project, seed = seeded
    token = TokenStore(project.db).create("reader", "r")[1]
    before = _state(project)
    tracing = configure_tracing(TracingSettings(sample_rate=0.0, synchronous=True), project.db)
    agent = _agent(project, token, Role.reader)
    _events, answer = _ask(agent, QUESTION)
    assert tracing is not None
    tracing.shutdown()
    text = answer["answer"]
    assert f"churn version {seed.production_version} is in production" in text
    assert f"AUC {seed.production_auc}" in text
    for feature in seed.features:
        assert feature in text
    assert answer["stopped_by"] == "answer" and answer["steps"] == 4
    assert [e["tool"] for e in answer["evidence"]] == [
        "resolve_model",
        "get_run",
        "describe_feature_object",
    ]
    assert answer["evidence"][0]["result"]["version"] == seed.production_version
    # No write route was called, and nothing changed.
    assert {c.method for c in agent.api.calls} == {"GET"}
    assert _state(project) == before
    # The trace: invoke_agent -> chat x4 and execute_tool x3, GenAI attributes on each.
    _summary, spans = TraceStore(project.db).get_trace(answer["trace_id"])
    root = [s for s in spans if s.parent_span_id is None]
    assert [s.name for s in root] == ["invoke_agent flywheel"]
    assert root[0].attributes["gen_ai.operation.name"] == "invoke_agent"
    children = [s for s in spans if s.parent_span_id == root[0].span_id]
    chats = [s for s in children if s.attributes.get("gen_ai.operation.name") == "chat"]
    tools = [s for s in children if s.attributes.get("gen_ai.operation.name") == "execute_tool"]
    assert len(chats) == 4 and len(tools) == 3 and len(spans) == 8
    assert all(s.attributes["gen_ai.request.model"] == "flywheel-ops" for s in chats)
    assert all(s.attributes["gen_ai.usage.input_tokens"] > 0 for s in chats)
    assert [s.attributes["gen_ai.tool.name"] for s in tools] == [
        "resolve_model",
        "get_run",
        "describe_feature_object",
    ]
    assert tools[0].name == "execute_tool resolve_model"
    assert _summary.input_tokens == sum(s.attributes["gen_ai.usage.input_tokens"] for s in chats)


def test_a_refused_caller_gets_a_tool_error_and_an_answer_that_reveals_nothing(
    seeded: tuple[Project, ChurnSeed],
) -> None:
    project, seed = seeded
    revoked_info, revoked = TokenStore(project.db).create("reader", "gone")
    TokenStore(project.db).revoke(revoked_info.id)
    for token in (None, revoked):
        _events, answer = _ask(_agent(project, token, Role.reader), QUESTION)
        assert len(answer["evidence"]) == 1 and "answered 401" in answer["evidence"][0]["error"]
        text = answer["answer"]
        assert text.startswith("I could not answer that:")
        for secret in (str(seed.production_auc), seed.feature_service, seed.production_run_id):
            assert secret not in text
        assert f"version {seed.production_version}" not in text


def test_write_tools_need_allow_writes_a_writer_token_and_a_confirmation(
    seeded: tuple[Project, ChurnSeed],
) -> None:
    project, seed = seeded
    store = TokenStore(project.db)
    reader = store.create("reader", "r")[1]
    writer = store.create("writer", "w")[1]
    ask = f"Please promote churn version {seed.staging_version} to production"
    before = _state(project)
    # Without --allow-writes, or with a reader token: the tool is not even offered.
    for token, role, allow in ((writer, Role.writer, False), (reader, Role.reader, True)):
        agent = _agent(project, token, role, allow_writes=allow)
        assert "promote_model" not in agent.tools
        _e, answer = _ask(agent, ask)
        assert "not available" in answer["answer"] and not answer["evidence"]
    assert _state(project) == before
    # Writer + allow_writes: proposed, not run, until confirmed.
    agent = _agent(project, writer, Role.writer, allow_writes=True)
    _e, answer = _ask(agent, ask)
    assert answer["stopped_by"] == "confirmation"
    action = answer["pending_actions"][0]
    assert action == {
        "tool": "promote_model",
        "arguments": {
            "name": "churn",
            "version": seed.staging_version,
            "stage": "production",
            "reason": "",
        },
    }
    assert _state(project) == before
    # A reader confirming is refused by the API itself; the writer's confirmation runs it.
    tools = select_tools(allow_writes=True)
    with pytest.raises(Exception, match="403"):
        run_blocking(run_action(_api(project, reader), tools, action))
    assert _state(project) == before
    run_blocking(run_action(_api(project, writer), tools, action))
    assert Registry(project).stage_version("churn", "production") == seed.staging_version
    Registry(project).set_stage("churn", seed.production_version, "production", reason="reset")


class _Looping:
    """A chat model that keeps calling the same tool (to test the loop's guards)."""

    model = "looping"

    def __init__(self, arguments: str = '{"name": "churn"}') -> None:
        self.arguments = arguments
        self.n = 0

    async def complete(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]]
    ) -> ChatTurn:
        self.n += 1
        call = ToolCallRequest(f"c{self.n}", "get_model", self.arguments)
        return ChatTurn(None, [call], 1000, 10, self.model)


def test_loop_budgets_repeat_guard_and_tool_errors(seeded: tuple[Project, ChurnSeed]) -> None:
    project, _seed = seeded
    token = TokenStore(project.db).create("reader", "r")[1]
    agent = Agent(_Looping(), _api(project, token), select_tools(allow_writes=False), max_steps=3)
    _e, answer = _ask(agent, "loop")
    assert answer["stopped_by"] == "max_steps" and answer["steps"] == 3
    first, second, third = answer["evidence"]
    assert "result" in first
    assert "was just called with these arguments" in second["error"]
    assert "was just called with these arguments" in third["error"]
    assert sum(1 for c in agent.api.calls if c.path == "/registry/models/churn") == 1
    agent = Agent(
        _Looping(),
        _api(project, token),
        select_tools(allow_writes=False),
        max_steps=10,
        max_tokens=2500,
    )
    _e, answer = _ask(agent, "loop")
    assert answer["stopped_by"] == "max_tokens" and answer["steps"] == 3
    agent = Agent(
        _Looping('{"nam": 1}'), _api(project, token), select_tools(allow_writes=False), max_steps=1
    )
    _e, answer = _ask(agent, "loop")
    assert "get_model: name: Field required" in answer["evidence"][0]["error"]


def test_a_reader_cannot_see_what_only_admins_can_and_the_answer_reveals_nothing(
    seeded: tuple[Project, ChurnSeed],
) -> None:
    project, _seed = seeded
    store = TokenStore(project.db)
    store.create("admin", "ops-admin-7f3a")
    reader = store.create("reader", "plain-reader")[1]
    admin = store.create("admin", "root-admin")[1]
    question = "Which API tokens exist?"
    _e, refused = _ask(_agent(project, reader, Role.reader), question)
    (call,) = refused["evidence"]
    assert call["tool"] == "list_tokens" and "answered 403" in call["error"]
    assert refused["answer"].startswith("I could not answer that:")
    for secret in ("ops-admin-7f3a", "root-admin", '"role": "admin"'):
        assert secret not in refused["answer"] and secret not in call["error"]
    _e, allowed = _ask(_agent(project, admin, Role.admin), question)
    assert "ops-admin-7f3a" in allowed["answer"]
