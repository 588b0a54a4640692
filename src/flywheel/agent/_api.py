"""HTTP: ``POST /agent/ask`` (streamed NDJSON events), ``POST /agent/actions`` (a confirmed
write), ``GET /agent/tools`` (the tools and their JSON Schemas)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from flywheel.agent._loop import run_action
from flywheel.agent._service import build_agent, caller_client, chat_model, is_scripted_model
from flywheel.agent._tools import ApiCaller, ToolError, all_tools, select_tools
from flywheel.auth import Principal, require_reader, require_writer
from flywheel.project import Project, current_project

router = APIRouter(prefix="/agent", tags=["agent"])
MCP_KEY = "agent.mcp_http"


class _AsgiPassthrough(Response):
    """Hands the raw request to another ASGI app (the MCP transport) instead of a body."""

    def __init__(self, handler: Any) -> None:
        super().__init__()
        self.handler = handler

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.handler(scope, receive, send)


@router.api_route("/mcp", methods=["GET", "POST", "DELETE"], include_in_schema=False)
async def mcp_http(request: Request, project: Project = Depends(current_project)) -> Response:
    """MCP over streamable HTTP (stateless, JSON responses): the agent's read tools, each call
    made as this request's caller (its bearer token)."""
    from flywheel.agent._mcp import McpHttp

    holder: dict[str, McpHttp] = project.attached(MCP_KEY, dict)
    transport = holder.get("transport")
    if transport is None:
        from flywheel.errors import ServiceUnavailable

        raise ServiceUnavailable("the MCP transport is not running (start the app's lifespan)")
    return _AsgiPassthrough(transport.handle)


@contextlib.asynccontextmanager
async def mcp_service(project: Project) -> AsyncIterator[None]:
    """Run the MCP streamable-HTTP transport for the app's lifetime (``/agent/mcp``)."""
    from flywheel.agent._mcp import McpHttp

    transport = McpHttp()
    holder: dict[str, McpHttp] = project.attached(MCP_KEY, dict)
    async with transport.run():
        holder["transport"] = transport
        try:
            yield
        finally:
            holder.pop("transport", None)


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: Annotated[str, Field(min_length=1, max_length=4000)]
    # Strict: 0, 1, "true" or "yes" are a 422 naming the field, not silently a bool.
    allow_writes: StrictBool = False
    max_steps: Annotated[int | None, Field(ge=1, le=50)] = None


class ActionRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tool: Annotated[str, Field(min_length=1, max_length=100)]
    arguments: dict[str, Any] = {}


def _caller(request: Request) -> tuple[str | None, str]:
    host = request.client.host if request.client else "127.0.0.1"
    return request.headers.get("authorization"), host


@router.get("/tools")
def list_tools(
    include_writes: bool = False, _principal: Principal = Depends(require_reader)
) -> dict[str, Any]:
    """Every tool with its JSON Schema (write tools only with ``include_writes``)."""
    return {
        "tools": [
            {
                "name": t.name,
                "description": t.description,
                "write": t.write,
                "parameters": t.parameters,
            }
            for t in select_tools(allow_writes=include_writes)
        ]
    }


@router.post("/ask", response_class=StreamingResponse)
async def ask(
    body: AskRequest,
    request: Request,
    principal: Principal = Depends(require_reader),
    project: Project = Depends(current_project),
) -> StreamingResponse:
    """Answer a question with the platform's tools; streams one JSON event per line
    (``step``, ``tool_call``, then ``answer`` with the evidence, or ``error``)."""
    authorization, host = _caller(request)
    config = project.config.agent

    async def events() -> AsyncIterator[bytes]:
        http = caller_client(request.app, authorization, host)
        chat, chat_http = chat_model(config, request.app, authorization, host)
        try:
            api = ApiCaller(http)
            scripted = config.base_url is None and await is_scripted_model(api, config.model)
            agent = build_agent(
                chat,
                api,
                principal,
                config,
                allow_writes=body.allow_writes,
                scripted=scripted,
                max_steps=body.max_steps,
            )
            async for event in agent.run(body.question):
                if event["type"] == "answer":
                    event["api_calls"] = [
                        {"method": c.method, "path": c.path, "status": c.status} for c in api.calls
                    ]
                yield (json.dumps(event, default=str) + "\n").encode()
        except Exception as exc:  # the stream has started: report, don't drop the connection
            message = str(exc) or type(exc).__name__
            yield (json.dumps({"type": "error", "error": message}) + "\n").encode()
        finally:
            await http.aclose()
            if chat_http is not None:
                await chat_http.aclose()

    return StreamingResponse(events(), media_type="application/x-ndjson")


@router.post("/actions")
async def confirm_action(
    body: ActionRequest,
    request: Request,
    _principal: Principal = Depends(require_writer),
) -> dict[str, Any]:
    """Run one write action the agent proposed, after the user confirmed it (writer token)."""
    authorization, host = _caller(request)
    async with caller_client(request.app, authorization, host) as http:
        api = ApiCaller(http)
        try:
            result = await run_action(api, all_tools(), body.model_dump())
        except ToolError as exc:
            from flywheel.errors import FlywheelError

            error = FlywheelError(str(exc))
            error.status_code = exc.status if exc.status >= 400 else 400
            raise error from None
    return {"tool": body.tool, "arguments": body.arguments, "result": result}
