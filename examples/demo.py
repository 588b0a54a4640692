"""`make demo`: the platform end to end on the embedded defaults (no Redis or Postgres needed).

Today it does what exists: create a project, start `flywheel up`, and show what it serves. As
systems land, each adds its step here. Pass --no-serve to stop the server at the end instead of
leaving it running.
"""

from __future__ import annotations

import argparse
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
console = Console(highlight=False)


def flywheel(*args: str, cwd: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "flywheel.cli", *args], cwd=cwd, capture_output=True, text=True
    )
    if done.returncode != 0:
        console.print(done.stderr.strip())
        raise SystemExit(done.returncode)
    return done.stdout


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dir", type=Path, default=ROOT / ".demo" / "shop")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--no-serve", action="store_true", help="stop the server at the end")
    args = parser.parse_args()

    console.rule("[bold]Flywheel demo")
    console.print(f"1. project: {args.dir}")
    console.print("   " + flywheel("init", str(args.dir), "--project", "shop", cwd=ROOT).strip())
    token = flywheel("tokens", "create", "--role", "writer", "--name", "demo", "-q", cwd=args.dir)
    console.print(f"2. writer token created: {token.strip()[:16]}...")

    port = args.port if port_is_free(args.port) else 0
    if port == 0:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    console.print(f"3. starting `flywheel up` on {base}")
    server = subprocess.Popen(
        [sys.executable, "-m", "flywheel.cli", "up", "--port", str(port), "--log-level", "warning"],
        cwd=args.dir,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = httpx.get(f"{base}/healthz", timeout=2)
                break
            except httpx.TransportError:
                if server.poll() is not None or time.monotonic() > deadline:
                    console.print("[red]the server did not start[/]")
                    return 1
                time.sleep(0.2)
        body = health.json()
        table = Table("store", "ok", "detail", title=f"/healthz: {body['status']}")
        for name, store in body["stores"].items():
            table.add_row(name, "yes" if store["ok"] else "[red]no[/]", store["detail"])
        console.print(table)
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        families = [f.name for f in text_string_to_metric_families(metrics)]
        ours = sorted(f for f in families if f.startswith("flywheel_") and "_created" not in f)
        console.print(f"4. /metrics: {len(families)} metric families, ours: {', '.join(ours)}")
        docs = httpx.get(f"{base}/openapi.json", timeout=5).json()
        console.print(f"5. /docs: {len(docs['paths'])} routes documented")
        if args.no_serve:
            return 0
        console.print(f"\n[bold green]Flywheel is running:[/] {base}/docs  (Ctrl-C to stop)")
        signal.signal(signal.SIGTERM, lambda *_: server.terminate())
        server.wait()
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            server.wait(30)


if __name__ == "__main__":
    sys.exit(main())
