"""The agent's tools as an MCP server (official ``mcp`` SDK): ``flywheel mcp`` over stdio, and
streamable HTTP at ``/mcp`` under ``flywheel up``.

Same tools, same JSON Schemas, same calls as the agent: each tool calls Flywheel's HTTP API as
the MCP client's caller (stdio: ``$FLYWHEEL_TOKEN`` against ``--url``, or the local project
in-process; HTTP: the request's own bearer token). Write tools are listed only with
``--allow-writes``, and each needs ``"confirm": true`` in its arguments: without it the call
returns what it would do and changes nothing.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import httpx

from flywheel.agent._tools import ApiCaller, Tool, ToolError, select_tools

SERVER_NAME = "flywheel"


def _schema(tool: Tool) -> dict[str, Any]:
    schema = tool.parameters
    if tool.write:
        schema = json.loads(json.dumps(schema))
        schema.setdefault("properties", {})["confirm"] = {
            "type": "boolean",
            "default": False,
            "description": "true to make the change; without it nothing is changed",
        }
    return schema


ClientFactory = Callable[[Any], httpx.AsyncClient]


def build_mcp_server(client_factory: ClientFactory, *, allow_writes: bool = False) -> Any:
    """An ``mcp`` low-level ``Server`` whose tools call the API through ``client_factory(ctx)``
    (``ctx``: the MCP request context; over HTTP ``ctx.request`` is the HTTP request)."""
    import mcp_types as types
    from mcp.server.lowlevel.server import Server

    import flywheel

    tools = {t.name: t for t in select_tools(allow_writes=allow_writes)}

    async def list_tools(_ctx: Any, _params: Any) -> Any:
        return types.ListToolsResult(
            tools=[
                types.Tool(name=t.name, description=t.description, input_schema=_schema(t))
                for t in tools.values()
            ]
        )

    async def call_tool(ctx: Any, params: Any) -> Any:
        arguments = dict(params.arguments or {})
        tool = tools.get(params.name)
        if tool is None:
            return _result({"error": f"no tool named {params.name!r}"}, error=True)
        confirmed = bool(arguments.pop("confirm", False)) if tool.write else False
        try:
            if tool.write and not confirmed:
                return _result(
                    {
                        "status": "needs_confirmation",
                        "action": {"tool": tool.name, "arguments": tool.validate(arguments)},
                        "hint": "call again with confirm: true to make this change",
                    }
                )
            async with client_factory(ctx) as client:
                result = await tool.call(ApiCaller(client), arguments)
        except ToolError as exc:
            return _result({"error": str(exc)}, error=True)
        return _result(result)

    return Server(
        SERVER_NAME,
        version=flywheel.__version__,
        instructions="Read-only tools over a Flywheel ML platform (models, runs, features, "
        "endpoints, experiments, jobs, traces).",
        on_list_tools=list_tools,
        on_call_tool=call_tool,
    )


def _result(value: Any, *, error: bool = False) -> Any:
    import mcp_types as types

    text = json.dumps(value, default=str)
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content=value if isinstance(value, dict) else {"result": value},
        is_error=error,
    )


async def serve_stdio(client_factory: ClientFactory, *, allow_writes: bool = False) -> None:
    """Serve the tools over this process's stdin/stdout until the client closes."""
    from mcp.server.stdio import stdio_server

    server = build_mcp_server(client_factory, allow_writes=allow_writes)
    async with stdio_server() as (read, write):
        await server.run(read, write, server.create_initialization_options())


# -- streamable HTTP under `flywheel up` -------------------------------------------------------


def _caller_of(ctx: Any) -> httpx.AsyncClient:
    """A client on the Flywheel app in-process, as the MCP HTTP request's caller (its bearer
    token and address), so the API applies that caller's role to every tool call."""
    request = getattr(ctx, "request", None)
    if request is None:
        raise ToolError("MCP over HTTP: the request context is missing", 500)
    app = request.scope["app"]
    host = request.client.host if request.client else "127.0.0.1"
    auth = request.headers.get("authorization")
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(host, 50000)),
        base_url="http://flywheel.internal",
        headers={"Authorization": auth} if auth else {},
        timeout=120,
    )


class McpHttp:
    """The MCP streamable-HTTP transport of one app: a stateless session manager whose tool
    calls run as each HTTP request's caller. ``run()`` must be active while it serves."""

    def __init__(self, *, allow_writes: bool = False) -> None:
        from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
        from mcp.server.transport_security import TransportSecuritySettings

        self.server = build_mcp_server(_caller_of, allow_writes=allow_writes)
        self.manager = StreamableHTTPSessionManager(
            app=self.server,
            stateless=True,
            json_response=True,
            security_settings=TransportSecuritySettings(
                enable_dns_rebinding_protection=True,
                allowed_hosts=["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost"],
                allowed_origins=["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"],
            ),
        )

    def run(self) -> Any:
        return self.manager.run()

    async def handle(self, scope: Any, receive: Any, send: Any) -> None:
        await self.manager.asgi_app(scope, receive, send)
