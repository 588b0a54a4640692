"""A live Flywheel server for the OpenAI conformance tests: real uvicorn on 127.0.0.1.

``llm_server(project)`` serves ``create_server_app(project)`` (what ``flywheel up`` serves) on a
free port in a thread. ``register_tiny`` registers the tiny model folder as an ``llm`` version.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flywheel.project import Project
from tests.conftest import uvicorn_in_thread

# The tools the tiny model was trained with (its corpus), so that "auto" has calls to make.
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
MODEL_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_model",
        "description": "Look up a registered model and its production version.",
        "parameters": {
            "type": "object",
            "properties": {"name": {"type": "string"}},
            "required": ["name"],
        },
    },
}


@contextmanager
def llm_server(project: Project) -> Iterator[str]:
    """Serve the project's full app; yields the base URL (``http://127.0.0.1:PORT``)."""
    from flywheel.api import create_server_app

    with uvicorn_in_thread(create_server_app(project), start_timeout=60) as address:
        yield f"http://{address}"


def register_tiny(
    project: Project, folder: Path, name: str, *, stage: str | None = "production", **kwargs: Any
) -> Any:
    from flywheel.registry import Registry

    registry = Registry(project)
    mv = registry.register_model(name, folder, flavor="llm", **kwargs)
    if stage is not None:
        registry.set_stage(name, mv.version, stage)
    return mv


def fast(project: Project) -> Project:
    """The project with a short reconcile interval (canaries advance within a test) and every
    prediction logged, flushed often."""
    cfg = project.config
    serving = cfg.serving.model_copy(
        update={
            "poll_interval_ms": 50,
            "prediction_log_sample_rate": 1.0,
            "prediction_log_flush_seconds": 0.2,
        }
    )
    project.config = cfg.model_copy(update={"serving": serving})
    return project
