"""The MCP server over stdio, driven by the official ``mcp`` client SDK."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters, stdio_client

from flywheel.agent import ChurnSeed, all_tools, run_blocking
from flywheel.auth import TokenStore
from flywheel.project import Project
from flywheel.registry import Registry


def test_mcp_stdio_lists_the_tools_and_calls_one(seeded: tuple[Project, ChurnSeed]) -> None:
    project, seed = seeded
    token = TokenStore(project.db).create("reader", "mcp")[1]
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "flywheel.cli", "mcp", "--config", str(project.root / "flywheel.yaml")],
        env={**os.environ, "FLYWHEEL_TOKEN": token},
    )

    async def session() -> tuple[list[object], object, object, object]:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            listed = (await s.list_tools()).tools
            ok = await s.call_tool("resolve_model", {"uri": "models:/churn@production"})
            bad = await s.call_tool("get_model", {"name": "no-such-model"})
            invalid = await s.call_tool("get_model", {})
            return listed, ok, bad, invalid

    listed, ok, bad, invalid = run_blocking(asyncio.wait_for(session(), 120))
    reads = sorted(t.name for t in all_tools() if not t.write)
    assert sorted(t.name for t in listed) == reads  # type: ignore[attr-defined]
    by_name = {t.name: t for t in listed}  # type: ignore[attr-defined]
    assert by_name["get_model_version"].input_schema["required"] == ["name", "version"]
    assert not ok.is_error  # type: ignore[attr-defined]
    version = json.loads(ok.content[0].text)  # type: ignore[attr-defined]
    assert version["version"] == seed.production_version
    assert version == Registry(project).resolve("models:/churn@production").to_dict()
    assert bad.is_error and "404" in bad.content[0].text  # type: ignore[attr-defined]
    assert invalid.is_error and "name: Field required" in invalid.content[0].text  # type: ignore[attr-defined]


def test_mcp_streamable_http_under_the_app_calls_as_the_requests_caller(
    seeded: tuple[Project, ChurnSeed],
) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    from flywheel.api import create_app
    from tests.agent.conftest import AGENT_SYSTEMS
    from tests.telemetry.conftest import running_server

    project, seed = seeded
    token = TokenStore(project.db).create("reader", "mcp-http")[1]

    async def session(url: str, auth: str | None) -> tuple[list[object], object]:
        headers = {"Authorization": f"Bearer {auth}"} if auth else {}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=60) as http,
            streamable_http_client(f"{url}/agent/mcp", http_client=http) as (read, write),
            ClientSession(read, write) as s,
        ):
            await s.initialize()
            listed = (await s.list_tools()).tools
            result = await s.call_tool("resolve_model", {"uri": "models:/churn@production"})
            return listed, result

    with running_server(create_app(project, systems=AGENT_SYSTEMS)) as url:
        listed, ok = run_blocking(asyncio.wait_for(session(url, token), 120))
        _listed, refused = run_blocking(asyncio.wait_for(session(url, None), 120))
    assert len(listed) == len([t for t in all_tools() if not t.write])
    assert json.loads(ok.content[0].text)["version"] == seed.production_version  # type: ignore[attr-defined]
    # auth.required: without a token the tool call is the API's 401, nothing of the model.
    assert refused.is_error and "401" in refused.content[0].text  # type: ignore[attr-defined]
    assert str(seed.production_version) not in json.loads(refused.content[0].text)["error"]  # type: ignore[attr-defined]
