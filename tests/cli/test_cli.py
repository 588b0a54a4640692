from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import free_port

FLYWHEEL = [sys.executable, "-m", "flywheel.cli"]


def run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **env}
    full_env.pop("FLYWHEEL_CONFIG", None) if "FLYWHEEL_CONFIG" not in env else None
    return subprocess.run(
        [*FLYWHEEL, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=120
    )


def test_version_and_help(tmp_path: Path) -> None:
    r = run(["version"], tmp_path)
    assert r.returncode == 0
    assert r.stdout.startswith("flywheel ")
    r = run(["--help"], tmp_path)
    for group in ("features", "runs", "models", "jobs", "serve", "experiments", "recs", "tokens"):
        assert group in r.stdout


def test_init_writes_a_commented_config_and_schema(tmp_path: Path) -> None:
    r = run(["init", "shop"], tmp_path)
    assert r.returncode == 0, r.stderr
    text = (tmp_path / "shop" / "flywheel.yaml").read_text()
    assert text.startswith("# flywheel.yaml")
    assert "project: shop" in text
    assert (tmp_path / "shop" / ".flywheel" / "metadata.db").exists()
    r = run(["db", "status"], tmp_path / "shop")
    assert "up to date" in r.stdout
    # Running it again keeps the file.
    r = run(["init", "shop"], tmp_path)
    assert "keeping it" in r.stdout


def test_bad_config_is_one_line_without_traceback(tmp_path: Path) -> None:
    (tmp_path / "flywheel.yaml").write_text("metadata: mysql://x\n")
    r = run(["tokens", "list"], tmp_path)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: ")
    assert "flywheel.yaml: metadata: scheme 'mysql' is not supported" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout


def test_tokens_cli(tmp_path: Path) -> None:
    run(["init"], tmp_path)
    r = run(["tokens", "create", "--role", "writer", "--name", "ci", "-q"], tmp_path)
    assert r.returncode == 0
    token = r.stdout.strip()
    assert token.startswith("fw_")
    listed = run(["tokens", "list"], tmp_path).stdout
    assert "ci" in listed and "writer" in listed and token not in listed
    bad = run(["tokens", "create", "--role", "root"], tmp_path)
    assert bad.returncode == 1
    assert bad.stderr == "error: role 'root' is not one of: reader, writer, admin\n"
    token_id = token.split("_")[1]
    assert run(["tokens", "revoke", token_id], tmp_path).returncode == 0
    again = run(["tokens", "revoke", token_id], tmp_path)
    assert again.returncode == 1 and "already revoked" in again.stderr


@pytest.mark.integration
def test_init_then_up_serves_health_metrics_and_docs(tmp_path: Path) -> None:
    assert run(["init", "proj"], tmp_path).returncode == 0
    port = free_port()
    proc = subprocess.Popen(
        [*FLYWHEEL, "up", "--port", str(port), "--log-level", "warning"],
        cwd=tmp_path / "proj",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stdout.read() if proc.stdout else "no output")  # noqa: B904
                time.sleep(0.2)
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        metrics = httpx.get(f"{base}/metrics", timeout=5)
        names = {f.name for f in text_string_to_metric_families(metrics.text)}
        assert "flywheel_http_requests" in names
        docs = httpx.get(f"{base}/docs", timeout=5)
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)


@pytest.mark.integration
@pytest.mark.slow
def test_features_serve_with_two_workers_runs_the_one_app_factory(tmp_path: Path) -> None:
    """`flywheel features serve --workers 2`: two processes from `api.create_app_from_env`,
    mounting only the feature routes."""
    assert run(["init", "proj"], tmp_path).returncode == 0
    port = free_port()
    proc = subprocess.Popen(
        [*FLYWHEEL, "features", "serve", "--port", str(port), "--workers", "2"],
        cwd=tmp_path / "proj",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(proc.stdout.read() if proc.stdout else "no output")  # noqa: B904
                time.sleep(0.3)
        assert health.status_code == 200
        assert httpx.get(f"{base}/features/catalog", timeout=5).status_code == 200
        assert httpx.get(f"{base}/serving/endpoints", timeout=5).status_code == 404
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)
