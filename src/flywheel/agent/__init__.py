"""The platform agent: tools over Flywheel's own API, a bounded tool-calling loop, the MCP
server, and agent evaluation. A composer: it may use any system's public API; no system
imports it.

- ``all_tools()`` / ``select_tools(allow_writes=...)``: typed tools (JSON Schema from the
  signature) that call the HTTP API as the caller (``ApiCaller``).
- ``Agent``: ``run(question)`` yields events and ends with an answer and its evidence.
- ``router``: ``POST /agent/ask`` (streamed), ``POST /agent/actions``, ``GET /agent/tools``.

Errors: ``ToolError`` (a tool call refused or failed; the model gets its message).
"""

from flywheel.agent._api import router
from flywheel.agent._demo import DEFAULT_RULES, ChurnSeed, register_scripted_model, seed_churn
from flywheel.agent._eval import (
    EVAL_EXPERIMENT,
    CaseResult,
    EvalCase,
    EvalSuite,
    SuiteResult,
    load_suite,
    log_suite,
    run_blocking,
    run_suite,
    run_suite_blocking,
    score_case,
    trajectory_matches,
)
from flywheel.agent._loop import (
    SYSTEM_PROMPT,
    Agent,
    AgentAnswer,
    ChatModel,
    ChatTurn,
    Evidence,
    OpenAIChatModel,
    ToolCallRequest,
    run_action,
)
from flywheel.agent._mcp import build_mcp_server, serve_stdio
from flywheel.agent._service import PolicyChatModel, build_agent, caller_client, chat_model
from flywheel.agent._tools import (
    ApiCall,
    ApiCaller,
    Tool,
    ToolError,
    all_tools,
    select_tools,
    tool,
)

__all__ = [
    "DEFAULT_RULES",
    "EVAL_EXPERIMENT",
    "SYSTEM_PROMPT",
    "Agent",
    "AgentAnswer",
    "ApiCall",
    "ApiCaller",
    "CaseResult",
    "ChatModel",
    "ChatTurn",
    "ChurnSeed",
    "EvalCase",
    "EvalSuite",
    "Evidence",
    "OpenAIChatModel",
    "PolicyChatModel",
    "SuiteResult",
    "Tool",
    "ToolCallRequest",
    "ToolError",
    "all_tools",
    "build_agent",
    "build_mcp_server",
    "caller_client",
    "chat_model",
    "load_suite",
    "log_suite",
    "register_scripted_model",
    "router",
    "run_action",
    "run_blocking",
    "run_suite",
    "run_suite_blocking",
    "score_case",
    "seed_churn",
    "select_tools",
    "serve_stdio",
    "tool",
    "trajectory_matches",
]
