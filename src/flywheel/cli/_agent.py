"""`flywheel ask ...` and `flywheel mcp`: the platform agent from the terminal.

- ``flywheel ask "QUESTION"``: asks a running server (``POST /agent/ask``) and prints the tool
  calls as they happen, then the answer with its evidence.
- ``flywheel ask eval SUITE.yaml``: an evaluation suite (see ``flywheel.agent`` ``_eval``).
- ``flywheel ask init-model``: registers the scripted chat model and puts it in production.
- ``flywheel mcp``: the same tools as an MCP server over stdio.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from flywheel.cli._client import DEFAULT_URL, TOKEN_ENV_VAR
from flywheel.cli._context import ConfigOption, open_project
from flywheel.cli._output import console, err_console
from flywheel.errors import FlywheelError, ServiceUnavailable

SUBCOMMANDS = ("eval", "init-model")


def _stream_ask(url: str, question: str, allow_writes: bool, timeout: float) -> dict[str, Any]:
    import os

    import httpx

    token = os.environ.get(TOKEN_ENV_VAR)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answer: dict[str, Any] | None = None
    try:
        with (
            httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout) as http,
            http.stream(
                "POST",
                "/agent/ask",
                json={"question": question, "allow_writes": allow_writes},
            ) as response,
        ):
            if response.status_code >= 400:
                response.read()
                try:
                    message = response.json().get("error", response.text)
                except ValueError:
                    message = response.text
                raise FlywheelError(f"server answered {response.status_code}: {message}")
            for line in response.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event["type"] == "tool_call":
                    status = "error" if "error" in event else "ok"
                    err_console.print(
                        f"[dim]step {event['step']}: {event['tool']}"
                        f"({json.dumps(event['arguments'])}) -> {status}[/]"
                    )
                elif event["type"] == "error":
                    raise FlywheelError(f"the agent failed: {event['error']}")
                elif event["type"] == "answer":
                    answer = event
    except httpx.TransportError as exc:
        raise ServiceUnavailable(
            f"cannot reach {url} ({type(exc).__name__}); is `flywheel up` running?"
        ) from None
    if answer is None:
        raise FlywheelError("the server closed the stream before an answer")
    return answer


def _confirm_actions(url: str, actions: list[dict[str, Any]]) -> None:
    from flywheel.cli._client import ApiClient

    for action in actions:
        described = f"{action['tool']}({json.dumps(action['arguments'])})"
        if not typer.confirm(f"Run {described}?", default=False):
            console.print(f"skipped {described}")
            continue
        with ApiClient(url) as client:
            result = client.post("/agent/actions", json=action)
        console.print(f"done: {described} -> {json.dumps(result['result'])[:300]}")


def ask(
    words: Annotated[
        list[str],
        typer.Argument(
            help="The question; or `eval SUITE.yaml`; or `init-model`.", metavar="QUESTION"
        ),
    ],
    url: Annotated[str, typer.Option("--url", help="The server to ask.")] = DEFAULT_URL,
    allow_writes: Annotated[
        bool,
        typer.Option(
            "--allow-writes",
            help="Offer write tools (needs a writer token); each change is confirmed here first.",
        ),
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the answer event as JSON.")
    ] = False,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the answer.")] = 300,
    out: Annotated[
        Path | None, typer.Option(help="eval: write the per-question results here (JSON).")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Ask the platform agent a question (it answers from Flywheel's own API, with evidence).

    `flywheel ask eval SUITE.yaml` runs an evaluation suite and logs it as a tracking run;
    `flywheel ask init-model` registers the scripted chat model (flavor scripted-chat).
    """
    if words and words[0] == "eval":
        if len(words) != 2:
            raise typer.BadParameter("usage: flywheel ask eval SUITE.yaml")
        run_suite_cli(Path(words[1]), url=url, config=config, out=out, as_json=as_json)
        return
    if words and words[0] == "init-model":
        from flywheel.agent import register_scripted_model

        project = open_project(config)
        mv = register_scripted_model(project, project.config.agent.model)
        console.print(
            f"registered {mv.name} version {mv.version} (flavor scripted-chat: a deterministic "
            "rules file, NOT a language model) and set it to production"
        )
        return
    question = " ".join(words).strip()
    if not question:
        raise typer.BadParameter('ask a question, e.g. flywheel ask "Which models are registered?"')
    answer = _stream_ask(url, question, allow_writes, timeout)
    if as_json:
        print(json.dumps(answer, indent=2))
    else:
        label = " [yellow](scripted model, not an LLM)[/]" if answer.get("scripted") else ""
        console.print(f"[bold]{answer['model']}[/]{label}:")
        console.print(answer["answer"], markup=False)
        if answer["evidence"]:
            console.print("[dim]evidence:[/]")
            for e in answer["evidence"]:
                shown = json.dumps(e.get("result", e.get("error")), default=str)
                console.print(
                    f"[dim]  {e['tool']}({json.dumps(e['arguments'])}) -> {shown[:200]}[/]",
                    markup=True,
                    highlight=False,
                )
        usage = answer["usage"]
        console.print(
            f"[dim]{answer['steps']} steps, {usage['input_tokens']}+{usage['output_tokens']} "
            f"tokens, trace {answer.get('trace_id') or '-'}[/]"
        )
    if answer.get("pending_actions"):
        if allow_writes:
            _confirm_actions(url, answer["pending_actions"])
        else:
            console.print("changes were proposed; rerun with --allow-writes to confirm them")


def mcp(
    url: Annotated[
        str | None,
        typer.Option("--url", help="Serve the tools of this server (token: $FLYWHEEL_TOKEN)."),
    ] = None,
    allow_writes: Annotated[
        bool, typer.Option("--allow-writes", help="Also list write tools (each needs confirm).")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Serve the agent's tools over MCP (stdio), for Claude Desktop, IDEs and other agents.

    Without --url the tools read the local project in-process (as a loopback reader).
    """
    import asyncio
    import os

    import httpx

    from flywheel.agent import serve_stdio

    token = os.environ.get(TOKEN_ENV_VAR)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if url:
        base = url.rstrip("/")

        def factory(_ctx: object) -> httpx.AsyncClient:
            return httpx.AsyncClient(base_url=base, headers=headers, timeout=60)

    else:
        from flywheel.api import create_app

        app = create_app(
            open_project(config),
            systems=[
                "features",
                "tracking",
                "registry",
                "serving",
                "experiments",
                "training",
                "telemetry",
            ],
        )

        def factory(_ctx: object) -> httpx.AsyncClient:
            return httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app, client=("127.0.0.1", 50000)),
                base_url="http://flywheel.internal",
                headers=headers,
                timeout=60,
            )

    asyncio.run(serve_stdio(factory, allow_writes=allow_writes))


def register(app: typer.Typer) -> None:
    """Add ``ask`` and ``mcp`` to the root command."""
    app.command("ask")(ask)
    app.command("mcp")(mcp)


def run_suite_cli(
    path: Path, *, url: str, config: Path | None, out: Path | None, as_json: bool
) -> None:
    """``flywheel ask eval SUITE.yaml``: ask the server, score, log the run, print a table."""
    import asyncio

    from rich.table import Table

    from flywheel.agent import EVAL_EXPERIMENT, load_suite, log_suite, run_suite

    suite = load_suite(path)

    async def ask(question: str) -> dict[str, Any]:
        return await asyncio.to_thread(_stream_ask, url, question, False, 300.0)

    result = asyncio.run(run_suite(suite, ask))
    log_suite(open_project(config), result)
    if out is not None:
        out.write_text(json.dumps(result.to_dict(), indent=2), encoding="utf-8")
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    table = Table("question", "facts", "trajectory", "steps", "passed")
    for c in result.cases:
        traj = "-" if c.trajectory_ok is None else ("ok" if c.trajectory_ok else "MISMATCH")
        table.add_row(
            c.question[:60],
            f"{len(c.facts_found)}/{len(c.facts_found) + len(c.facts_missing)}",
            traj,
            str(c.steps),
            "yes" if c.passed else "[red]no[/]",
        )
    console.print(table)
    metrics = ", ".join(f"{k}={v:.3g}" for k, v in result.metrics().items())
    console.print(f"run {result.run_id} in experiment {EVAL_EXPERIMENT}: {metrics}")
