"""`flywheel llm ...`: the tiny local chat model, a terminal chat, a quick load run.

``init-tiny NAME`` builds and trains the small local model (seconds to minutes on a CPU),
records the training as a run, registers the folder as an ``llm`` version (lineage: run ->
version) and moves it to production. ``chat MODEL`` and ``bench`` talk to a running server's
OpenAI-compatible ``/v1`` with the official ``openai`` client (token from ``$FLYWHEEL_TOKEN``).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from flywheel.cli._context import DEFAULT_URL, ConfigOption, open_project
from flywheel.cli._output import console
from flywheel.errors import FlywheelError

app = typer.Typer(
    help="LLMs: the tiny local chat model, chat in the terminal, a quick load run.",
    no_args_is_help=True,
)
UrlOption = Annotated[str, typer.Option("--url", help="Server (token from $FLYWHEEL_TOKEN).")]


def _client(url: str, *, async_: bool = False) -> Any:
    import openai

    kwargs: dict[str, Any] = {
        "base_url": url.rstrip("/") + "/v1",
        "api_key": os.environ.get("FLYWHEEL_TOKEN") or "unused",
        "max_retries": 0,
    }
    return openai.AsyncOpenAI(**kwargs) if async_ else openai.OpenAI(**kwargs)


def _api_error(exc: Exception, url: str) -> FlywheelError:
    import openai

    if isinstance(exc, openai.APIConnectionError):
        return FlywheelError(f"no server answers at {url}; start one with `flywheel serve`")
    if isinstance(exc, openai.APIStatusError):
        return FlywheelError(f"the server answered {exc.status_code}: {exc.message}")
    return FlywheelError(str(exc))


@app.command("init-tiny")
def init_tiny(
    name: Annotated[str, typer.Argument(help="Model name to register.")] = "tiny-chat",
    seed: Annotated[int, typer.Option(help="Seed: the same seed builds the same bytes.")] = 0,
    stage: Annotated[str, typer.Option(help="Stage to move the version to.")] = "production",
    steps: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Training steps (default: the builder's; fewer is faster and answers worse).",
        ),
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Build, train and register the tiny local chat model, and set it to production."""
    from flywheel.registry import Registry
    from flywheel.serving.llm import build_tiny_model
    from flywheel.tracking import Tracker

    Registry.check_name(name)
    project = open_project(config)
    registry = Registry(project)
    tracker = Tracker(project)
    with tempfile.TemporaryDirectory(prefix="flywheel-tiny-") as tmp:
        params: dict[str, Any] = {"seed": seed, "model": name}
        if steps is not None:
            params["steps"] = steps
        run = tracker.start_run("llm-init-tiny", params=params)
        start = time.perf_counter()
        try:
            with console.status(f"building and training the tiny chat model (seed {seed})..."):
                kwargs = {} if steps is None else {"steps": steps}
                folder = build_tiny_model(Path(tmp) / "model", seed=seed, **kwargs)
            shape = json.loads((folder / "config.json").read_text())
            run.log_params(
                {
                    k: shape[k]
                    for k in (
                        "num_hidden_layers",
                        "hidden_size",
                        "vocab_size",
                        "max_position_embeddings",
                    )
                    if k in shape
                }
            )
            run.log_metric("build_seconds", time.perf_counter() - start)
            with console.status("registering (verified: loaded back and run)..."):
                mv = registry.register_model(
                    name,
                    folder,
                    flavor="llm",
                    run=run,
                    description=f"tiny local chat model (seed {seed})",
                    tags={"built_by": "flywheel llm init-tiny"},
                )
        except BaseException:
            run.end("failed")
            raise
        run.end()
    registry.set_stage(name, mv.version, stage, reason="flywheel llm init-tiny")
    console.print(
        f"registered [bold]{name}[/] v{mv.version} (flavor llm, run {run.id}) and set it to "
        f"{stage}; try: flywheel serve  then  flywheel llm chat {name}"
    )


@app.command("chat")
def chat(
    model: Annotated[str, typer.Argument(help="Model, name@stage, or endpoint.")],
    message: Annotated[
        str | None, typer.Option("--message", "-m", help="One message, then exit.")
    ] = None,
    system: Annotated[str | None, typer.Option(help="System prompt.")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Tokens per answer.")] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 0.7,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible answers.")] = None,
    url: UrlOption = DEFAULT_URL,
) -> None:
    """Chat with a model in the terminal; answers stream as they are generated."""
    client = _client(url)
    history: list[dict[str, Any]] = []
    if system:
        history.append({"role": "system", "content": system})
    interactive = message is None
    while True:
        if interactive:
            try:
                text = input("you> ")
            except (EOFError, KeyboardInterrupt):
                print()
                return
            if text.strip() in ("/exit", "/quit"):
                return
            if not text.strip():
                continue
        else:
            text = message or ""
        history.append({"role": "user", "content": text})
        answer: list[str] = []
        try:
            stream = client.chat.completions.create(
                model=model,
                messages=history,
                stream=True,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=seed,
            )
            if interactive:
                sys.stdout.write("model> ")
            for chunk in stream:
                for choice in chunk.choices:
                    piece = choice.delta.content or ""
                    for call in choice.delta.tool_calls or []:
                        fn = call.function
                        piece += (
                            f"[tool call {fn.name if fn else ''}({fn.arguments if fn else ''})]"
                        )
                    answer.append(piece)
                    sys.stdout.write(piece)
                    sys.stdout.flush()
        except Exception as exc:
            raise _api_error(exc, url) from None
        sys.stdout.write("\n")
        history.append({"role": "assistant", "content": "".join(answer)})
        if not interactive:
            return


async def _bench(
    url: str, model: str, requests: int, concurrency: int, max_tokens: int, prompt: str
) -> dict[str, Any]:
    client = _client(url, async_=True)
    ttfts: list[float] = []
    latencies: list[float] = []
    tokens: list[int] = []
    errors: list[str] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)

    async def worker() -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            start = time.perf_counter()
            first: float | None = None
            try:
                stream = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": f"{prompt} ({i})"}],
                    stream=True,
                    stream_options={"include_usage": True},
                    max_tokens=max_tokens,
                    temperature=0.0,
                )
                used = 0
                async for chunk in stream:
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - start
                    if chunk.usage is not None:
                        used = chunk.usage.completion_tokens
                latencies.append(time.perf_counter() - start)
                ttfts.append(first if first is not None else latencies[-1])
                tokens.append(used)
            except Exception as exc:
                errors.append(type(exc).__name__)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    return {"ttft": ttfts, "latency": latencies, "tokens": tokens, "errors": errors, "wall": wall}


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@app.command("bench")
def bench(
    model: Annotated[str, typer.Argument(help="Model, name@stage, or endpoint.")],
    requests: Annotated[int, typer.Option(min=1, max=10_000, help="Requests in all.")] = 32,
    concurrency: Annotated[int, typer.Option(min=1, max=256, help="In flight at once.")] = 8,
    max_tokens: Annotated[int, typer.Option(min=1, max=4096)] = 32,
    prompt: Annotated[str, typer.Option(help="User message (a counter is appended).")] = (
        "What does the model registry keep?"
    ),
    url: UrlOption = DEFAULT_URL,
) -> None:
    """A quick load run against a server's /v1 (streamed chat, greedy): tokens/s, TTFT, latency."""
    try:
        result = asyncio.run(_bench(url, model, requests, concurrency, max_tokens, prompt))
    except Exception as exc:
        raise _api_error(exc, url) from None
    if result["errors"] and not result["latency"]:
        raise _api_error(RuntimeError(f"every request failed: {result['errors'][0]}"), url)
    from rich.table import Table

    total = sum(result["tokens"])
    table = Table(title=f"{model} at {url}: {requests} requests, concurrency {concurrency}")
    for col in (
        "ok",
        "errors",
        "output tok/s",
        "TTFT p50 ms",
        "TTFT p99 ms",
        "latency p50 ms",
        "latency p99 ms",
        "mean tokens",
    ):
        table.add_column(col, justify="right")
    table.add_row(
        str(len(result["latency"])),
        str(len(result["errors"])),
        f"{total / result['wall']:.1f}",
        f"{1000 * _pct(result['ttft'], 0.5):.1f}",
        f"{1000 * _pct(result['ttft'], 0.99):.1f}",
        f"{1000 * _pct(result['latency'], 0.5):.1f}",
        f"{1000 * _pct(result['latency'], 0.99):.1f}",
        f"{statistics.mean(result['tokens']) if result['tokens'] else 0:.1f}",
    )
    console.print(table)
    load = os.getloadavg()
    console.print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


__all__ = ["app"]
