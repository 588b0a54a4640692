"""A real ``flywheel up`` server and a real headless Chromium (Debian's, driven by Playwright)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from flywheel.auth import TokenStore
from flywheel.project import Project
from tests.conftest import services_required
from tests.ui import _seed

CHROMIUM = "/usr/bin/chromium"
OUTPUT_DIR = Path(__file__).resolve().parents[2] / "test-output" / "ui"


@dataclass(frozen=True)
class Server:
    """A running ``flywheel up`` over a project filled with real data (see ``_seed``)."""

    url: str
    root: Path
    writer_token: str
    reader_token: str
    seeded: dict[str, Any]


def _cancel_job(url: str, token: str, job_id: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    httpx.post(f"{url}/training/jobs/{job_id}/cancel", headers=headers, timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = httpx.get(f"{url}/training/jobs/{job_id}", timeout=10).json().get("state")
        if state in ("cancelled", "succeeded", "failed"):
            return
        time.sleep(0.3)


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("ui-project")
    cli = [sys.executable, "-m", "flywheel.cli"]
    subprocess.run([*cli, "init", str(root)], check=True, capture_output=True)
    config = root / "flywheel.yaml"
    # Log every prediction, so that the drift report has rows to compare.
    config.write_text(config.read_text() + "\nserving:\n  prediction_log_sample_rate: 1.0\n")
    project = Project.open(config)
    try:
        tokens = TokenStore(project.db)
        writer = tokens.create("writer", "ui")[1]
        reader = tokens.create("reader", "ui-reader")[1]
    finally:
        project.close()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "FLYWHEEL_CONFIG"}
    proc = subprocess.Popen(
        [*cli, "up", "--port", str(port), "--log-level", "warning"],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    seeded: dict[str, Any] | None = None
    try:
        deadline = time.monotonic() + 240  # a busy 2-core machine starts it slowly
        while True:
            try:
                httpx.get(f"{url}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("flywheel up did not start") from None
                time.sleep(0.2)
        seeded = _seed.seed(root, url, writer)
        yield Server(url, root, writer, reader, seeded)
    finally:
        if seeded is not None:  # jobs outlive the server: cancel ours through the API
            _cancel_job(url, writer, seeded["job"])
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@pytest.fixture(scope="package")
def server_url(server: Server) -> str:
    return server.url


@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    """Chromium through Playwright's sync API, for this package only: while it lives, the main
    thread has a running event loop, so a later test's ``asyncio.run`` would fail."""
    if not Path(CHROMIUM).exists() or shutil.which("chromium") is None:
        message = f"{CHROMIUM} is not installed (apt-get install -y chromium)"
        if services_required():
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        yield b
        b.close()


@pytest.fixture
def output_dir() -> Path:
    OUTPUT_DIR.mkdir(parents=True, exist_ok=True)
    return OUTPUT_DIR
