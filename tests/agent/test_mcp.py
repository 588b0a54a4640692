"""The MCP server over stdio, driven by the official ``mcp`` client SDK."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from mcp import ClientSession, StdioServerParameters, stdio_client

from flywheel.agent import ChurnSeed, all_tools
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

    listed, ok, bad, invalid = asyncio.run(asyncio.wait_for(session(), 120))
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
