"""Fixtures for telemetry tests: a real uvicorn server in a thread, writer tokens."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from flywheel.telemetry import disable_tracing
from tests.conftest import uvicorn_in_thread


@contextmanager
def running_server(app: Any) -> Iterator[str]:
    """Serve ``app`` with a real uvicorn on 127.0.0.1 in a thread; yields its base URL."""
    with uvicorn_in_thread(app) as address:
        yield f"http://{address}"


@pytest.fixture(autouse=True)
def _tracing_off() -> Iterator[None]:
    """Every test starts and ends with tracing off in this process."""
    disable_tracing()
    yield
    disable_tracing()
